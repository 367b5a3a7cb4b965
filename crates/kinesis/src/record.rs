//! How a Kinesis record is kept in Sluice's log between its read from the data
//! stream and its delivery: the record's bytes behind a header with what Firehose
//! keeps of it (shard, sequence number, subsequence number of a KPL user record,
//! partition key, `ApproximateArrivalTimestamp`). The log itself stays opaque to
//! this: the reader appends encoded records, delivery decodes them.
//!
//! Format, version 1 (all integers big-endian):
//!
//! ```text
//! magic "SKR" | version 1 (u8) | arrival ms (u64) | subsequence (u32) | flags (u8)
//! | shard id length (u8) | shard id | sequence number length (u8) | sequence number (ASCII digits)
//! | partition key length (u16) | partition key | data ...
//! ```
//!
//! Flag bit 0: the last user record of its Kinesis record (set on every record that
//! is not a KPL aggregate's).
//!
//! Positions: the sequence number of each shard's last Kinesis record the log holds
//! *whole* (every user record of it). Only a record's last user record moves a
//! position, so if the log ever held the first user records of an aggregate
//! without the rest, the aggregate is read again (some user records twice) rather
//! than its rest skipped. Kinesis sequence numbers are decimal strings of up to 128
//! digits, compared as numbers.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 3] = b"SKR";
const FORMAT_VERSION: u8 = 1;
const HEADER_FIXED_BYTES: usize = 3 + 1 + 8 + 4 + 1;
const FLAG_LAST_OF_RECORD: u8 = 1;

/// A Kinesis record (or one user record of a KPL aggregate), as kept in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its sequence number (shared by the user records of one aggregate).
    pub sequence_number: String,
    /// Its index within a KPL aggregate, 0 otherwise.
    pub subsequence_number: u32,
    /// Whether it is the last user record of its Kinesis record (always, for a
    /// record that is not an aggregate).
    pub last_of_record: bool,
    /// Its partition key.
    pub partition_key: String,
    /// `ApproximateArrivalTimestamp`, Unix milliseconds.
    pub arrival_ms: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// A log record that is not a Kinesis record of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Kinesis source record: {0}")]
pub struct Malformed(&'static str);

/// The header of an encoded record, borrowed, and where its data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Shard id.
    pub shard_id: &'a str,
    /// Sequence number.
    pub sequence_number: &'a str,
    /// Subsequence number.
    pub subsequence_number: u32,
    /// The last user record of its Kinesis record.
    pub last_of_record: bool,
    /// Partition key.
    pub partition_key: &'a str,
    /// Arrival, Unix milliseconds.
    pub arrival_ms: u64,
    /// Offset of the data in the encoded record.
    pub data_offset: usize,
}

impl SourceRecord {
    /// The log record. Shard ids and sequence numbers longer than 255 bytes, and
    /// partition keys over 65535, do not exist in Kinesis (256 and 128 are its
    /// limits) and are cut.
    pub fn encode(&self) -> Vec<u8> {
        let shard = &self.shard_id.as_bytes()[..self.shard_id.len().min(255)];
        let sequence = &self.sequence_number.as_bytes()[..self.sequence_number.len().min(255)];
        let key = &self.partition_key.as_bytes()[..self.partition_key.len().min(u16::MAX as usize)];
        let mut out =
            Vec::with_capacity(HEADER_FIXED_BYTES + 4 + shard.len() + sequence.len() + key.len() + self.data.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.arrival_ms.to_be_bytes());
        out.extend_from_slice(&self.subsequence_number.to_be_bytes());
        out.push(if self.last_of_record { FLAG_LAST_OF_RECORD } else { 0 });
        out.push(shard.len() as u8);
        out.extend_from_slice(shard);
        out.push(sequence.len() as u8);
        out.extend_from_slice(sequence);
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes a whole record.
    pub fn decode(bytes: &[u8]) -> Result<SourceRecord, Malformed> {
        let header = Header::parse(bytes)?;
        Ok(SourceRecord {
            shard_id: header.shard_id.to_string(),
            sequence_number: header.sequence_number.to_string(),
            subsequence_number: header.subsequence_number,
            last_of_record: header.last_of_record,
            partition_key: header.partition_key.to_string(),
            arrival_ms: header.arrival_ms,
            data: bytes[header.data_offset..].to_vec(),
        })
    }
}

impl<'a> Header<'a> {
    /// Reads the header of an encoded record.
    pub fn parse(bytes: &'a [u8]) -> Result<Header<'a>, Malformed> {
        if bytes.len() < HEADER_FIXED_BYTES || &bytes[..3] != MAGIC {
            return Err(Malformed("no magic"));
        }
        if bytes[3] != FORMAT_VERSION {
            return Err(Malformed("unknown format version"));
        }
        let arrival_ms = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
        let subsequence_number = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let last_of_record = bytes[16] & FLAG_LAST_OF_RECORD != 0;
        let mut at = HEADER_FIXED_BYTES;
        let mut take = |n: usize| -> Result<&'a [u8], Malformed> {
            let part = bytes.get(at..at + n).ok_or(Malformed("truncated"))?;
            at += n;
            Ok(part)
        };
        let n = take(1)?[0] as usize;
        let shard_id = std::str::from_utf8(take(n)?).map_err(|_| Malformed("shard id"))?;
        let n = take(1)?[0] as usize;
        let sequence_number = std::str::from_utf8(take(n)?).map_err(|_| Malformed("sequence number"))?;
        let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let partition_key = std::str::from_utf8(take(n)?).map_err(|_| Malformed("partition key"))?;
        Ok(Header {
            shard_id,
            sequence_number,
            subsequence_number,
            last_of_record,
            partition_key,
            arrival_ms,
            data_offset: at,
        })
    }
}

/// Compares two Kinesis sequence numbers (decimal strings) as numbers.
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// How far the log holds each shard: the sequence number of its last record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Positions(pub BTreeMap<String, String>);

impl Positions {
    /// Moves `shard`'s position to `sequence_number` if that is later.
    pub fn advance(&mut self, shard: &str, sequence_number: &str) {
        match self.0.get_mut(shard) {
            Some(known) if compare_sequence_numbers(sequence_number, known) != Ordering::Greater => {}
            Some(known) => *known = sequence_number.to_string(),
            None => {
                self.0.insert(shard.to_string(), sequence_number.to_string());
            }
        }
    }

    /// Notes a record the log holds: the position of its shard moves once the
    /// log holds its Kinesis record whole.
    pub fn note(&mut self, header: &Header<'_>) {
        if header.last_of_record {
            self.advance(header.shard_id, header.sequence_number);
        }
    }

    /// The later position of every shard of both.
    pub fn merge(&mut self, other: &Positions) {
        for (shard, sequence_number) in &other.0 {
            self.advance(shard, sequence_number);
        }
    }

    /// Whether no shard has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A shard's position.
    pub fn get(&self, shard: &str) -> Option<&str> {
        self.0.get(shard).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> SourceRecord {
        SourceRecord {
            shard_id: "shardId-000000000001".into(),
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
            subsequence_number: 3,
            last_of_record: false,
            partition_key: "user-17".into(),
            arrival_ms: 1_700_000_000_123,
            data: b"{\"a\":1}".to_vec(),
        }
    }

    #[test]
    fn a_record_round_trips_and_its_header_reads_alone() {
        let encoded = record().encode();
        assert_eq!(SourceRecord::decode(&encoded).unwrap(), record());
        let header = Header::parse(&encoded).unwrap();
        assert_eq!(header.shard_id, "shardId-000000000001");
        assert_eq!(&encoded[header.data_offset..], b"{\"a\":1}");
    }

    #[test]
    fn other_bytes_are_refused() {
        assert!(SourceRecord::decode(b"{\"a\":1}").is_err());
        let mut encoded = record().encode();
        encoded[3] = 2;
        assert_eq!(SourceRecord::decode(&encoded), Err(Malformed("unknown format version")));
        let encoded = record().encode();
        assert_eq!(SourceRecord::decode(&encoded[..20]), Err(Malformed("truncated")));
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(compare_sequence_numbers("9", "10"), Ordering::Less);
        assert_eq!(compare_sequence_numbers("0010", "10"), Ordering::Equal);
        assert_eq!(
            compare_sequence_numbers(
                "495903382714902566085596925383615710959215759891365888981",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn only_the_last_user_record_of_an_aggregate_moves_a_position() {
        let mut positions = Positions::default();
        let first = record().encode();
        positions.note(&Header::parse(&first).unwrap());
        assert!(positions.is_empty(), "the rest of the aggregate may be missing");
        let last = SourceRecord { last_of_record: true, ..record() }.encode();
        positions.note(&Header::parse(&last).unwrap());
        assert_eq!(positions.get("shardId-000000000001"), Some(record().sequence_number.as_str()));
    }

    #[test]
    fn positions_only_move_forward() {
        let mut positions = Positions::default();
        positions.advance("a", "100");
        positions.advance("a", "99");
        positions.advance("b", "5");
        let mut other = Positions::default();
        other.advance("a", "1000");
        other.advance("b", "4");
        positions.merge(&other);
        assert_eq!(positions.get("a"), Some("1000"));
        assert_eq!(positions.get("b"), Some("5"));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SourceRecord::decode(&bytes);
        }

        #[test]
        fn any_record_round_trips(shard in "[a-zA-Z0-9-]{1,64}", seq in "[0-9]{1,128}", key in ".{0,64}", sub: u32, last: bool, arrival: u64, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let record = SourceRecord { shard_id: shard, sequence_number: seq, subsequence_number: sub, last_of_record: last, partition_key: key, arrival_ms: arrival, data };
            prop_assert_eq!(SourceRecord::decode(&record.encode()).unwrap(), record);
        }

        #[test]
        fn the_order_is_the_numbers_order(a: u64, b: u64) {
            prop_assert_eq!(compare_sequence_numbers(&a.to_string(), &b.to_string()), a.cmp(&b));
        }
    }
}
