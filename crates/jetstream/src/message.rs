//! The payload of one JetStream message: one commit group of one stream's records,
//! published by one node. Decoding checks everything and never panics on arbitrary
//! bytes (a message could come from another version of Sluice, or another program
//! publishing on Sluice's subjects).
//!
//! Format (version 1), little-endian:
//!
//! ```text
//! magic        [u8; 4]  "SLJS"
//! version      u8       1
//! flags        u8       bit 0: every record is encrypted (opaque to this crate:
//!                       Sluice's server seals and opens them); other bits 0
//! reserved     u16      0
//! n_records    u32
//! then n_records times:
//!   arrival_ms u64      when the record was accepted (Unix ms)
//!   len        u32
//!   data       [u8; len]
//! ```
//!
//! A record's sequence number is the message's stream sequence times
//! [`RECORDS_PER_MESSAGE`] plus its index in the message: increasing within a
//! stream, not dense, and it locates the record.

/// The multiplier between a message's stream sequence and its records' sequence numbers.
pub const RECORDS_PER_MESSAGE: u64 = 1 << 20;

const MAGIC: &[u8; 4] = b"SLJS";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 12;
/// Bytes a record adds besides its data.
pub const RECORD_OVERHEAD_BYTES: usize = 12;

/// The sequence number of record `index` of message `message_seq`.
pub fn record_seq(message_seq: u64, index: usize) -> u64 {
    message_seq * RECORDS_PER_MESSAGE + index as u64
}

/// The message holding record `seq`.
pub fn message_seq(record_seq: u64) -> u64 {
    record_seq / RECORDS_PER_MESSAGE
}

const FLAG_ENCRYPTED: u8 = 1;

/// Encodes records with their arrival times; `encrypted`: they are all sealed.
pub fn encode<'a>(records: impl Iterator<Item = (&'a [u8], u64)>, encrypted: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, if encrypted { FLAG_ENCRYPTED } else { 0 }, 0, 0]);
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut n = 0u32;
    for (data, arrival_ms) in records {
        out.extend_from_slice(&arrival_ms.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        n += 1;
    }
    out[start + 8..start + 12].copy_from_slice(&n.to_le_bytes());
}

/// One record read from a message: its arrival and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// When it was accepted (Unix ms).
    pub arrival_ms: u64,
    /// Its bytes.
    pub data: &'a [u8],
    /// Whether they are sealed (the message's flag).
    pub encrypted: bool,
}

/// Decodes a message; `Err` with a reason when it is not one Sluice wrote.
pub fn decode(payload: &[u8]) -> Result<Vec<Decoded<'_>>, String> {
    if payload.len() < HEADER_BYTES || &payload[..4] != MAGIC {
        return Err("not a Sluice record message".into());
    }
    if payload[4] != VERSION {
        return Err(format!("record message version {} is not {VERSION}", payload[4]));
    }
    if payload[5] & !FLAG_ENCRYPTED != 0 {
        return Err(format!("record message flags {:#x} are not understood", payload[5]));
    }
    let encrypted = payload[5] & FLAG_ENCRYPTED != 0;
    let n = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")) as usize;
    if n as u64 >= RECORDS_PER_MESSAGE {
        return Err(format!("{n} records in one message"));
    }
    let mut records = Vec::with_capacity(n.min(payload.len() / RECORD_OVERHEAD_BYTES));
    let mut at = HEADER_BYTES;
    for _ in 0..n {
        let header = payload.get(at..at + RECORD_OVERHEAD_BYTES).ok_or("record message is truncated")?;
        let arrival_ms = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        at += RECORD_OVERHEAD_BYTES;
        let data = payload.get(at..at.saturating_add(len)).ok_or("record message is truncated")?;
        at += len;
        records.push(Decoded { arrival_ms, data, encrypted });
    }
    if at != payload.len() {
        return Err("record message has trailing bytes".into());
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let records: Vec<(Vec<u8>, u64)> = vec![(b"one".to_vec(), 1), (Vec::new(), 2), (vec![7; 1000], 3)];
        let mut out = Vec::new();
        encode(records.iter().map(|(d, t)| (d.as_slice(), *t)), false, &mut out);
        let decoded = decode(&out).unwrap();
        assert_eq!(decoded.len(), 3);
        for ((data, arrival_ms), got) in records.iter().zip(&decoded) {
            assert_eq!((got.data, got.arrival_ms), (data.as_slice(), *arrival_ms));
        }
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut sealed = Vec::new();
        encode(records.iter().map(|(d, t)| (d.as_slice(), *t)), true, &mut sealed);
        assert!(decode(&sealed).unwrap().iter().all(|r| r.encrypted));
        assert!(decoded.iter().all(|r| !r.encrypted));
        let mut unknown_flag = out.clone();
        unknown_flag[5] = 2;
        assert!(decode(&unknown_flag).is_err());
        let mut other_version = out.clone();
        other_version[4] = 2;
        assert!(decode(&other_version).unwrap_err().contains("version 2"));
        assert!(decode(b"anything else at all").is_err());
    }

    #[test]
    fn sequence_numbers_locate_records() {
        assert_eq!(record_seq(7, 3), 7 * RECORDS_PER_MESSAGE + 3);
        assert_eq!(message_seq(record_seq(7, 3)), 7);
        assert!(record_seq(8, 0) > record_seq(7, RECORDS_PER_MESSAGE as usize - 1));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut framed = b"SLJS\x01\x00\x00\x00".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&bytes);
            let _ = decode(&framed);
        }
    }
}
