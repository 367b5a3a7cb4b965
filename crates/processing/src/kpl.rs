//! The Kinesis Producer Library's aggregated record format:
//! `magic 0xF3 0x89 0x9A 0xC2 | protobuf AggregatedRecord | MD5 of the protobuf`.
//! A record without the magic is an ordinary record; one with the magic whose
//! checksum or protobuf is wrong is a corrupt aggregate, a processing failure.

use md5::{Digest, Md5};
use prost::Message;

const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const MD5_BYTES: usize = 16;

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// One user record of an aggregate, with its partition key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The partition key the producer gave it.
    pub partition_key: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// The user records of an aggregate; `Ok(None)` when `data` is not one.
pub(crate) fn deaggregate(data: &[u8]) -> Result<Option<Vec<Vec<u8>>>, String> {
    Ok(user_records(data)?.map(|records| records.into_iter().map(|r| r.data).collect()))
}

/// The user records of an aggregate with their partition keys; `Ok(None)` when
/// `data` is not one, `Err` for an aggregate whose checksum or protobuf is wrong.
pub fn user_records(data: &[u8]) -> Result<Option<Vec<UserRecord>>, String> {
    if !data.starts_with(&MAGIC) {
        return Ok(None);
    }
    if data.len() < MAGIC.len() + MD5_BYTES {
        return Err("A KPL aggregated record is shorter than its magic and checksum.".into());
    }
    let (protobuf, checksum) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - MD5_BYTES);
    if Md5::digest(protobuf).as_slice() != checksum {
        return Err("A KPL aggregated record's MD5 checksum does not match its contents.".into());
    }
    let aggregate = AggregatedRecord::decode(protobuf)
        .map_err(|e| format!("A KPL aggregated record's protobuf cannot be decoded: {e}"))?;
    let mut records = Vec::with_capacity(aggregate.records.len());
    for record in aggregate.records {
        let Some(key) = aggregate.partition_key_table.get(record.partition_key_index as usize) else {
            return Err("A KPL aggregated record refers to a partition key it does not hold.".into());
        };
        records.push(UserRecord { partition_key: key.clone(), data: record.data });
    }
    Ok(Some(records))
}

#[cfg(test)]
pub(crate) fn aggregate(records: &[&[u8]]) -> Vec<u8> {
    let aggregate = AggregatedRecord {
        partition_key_table: vec!["pk".into()],
        explicit_hash_key_table: Vec::new(),
        records: records
            .iter()
            .map(|data| Record {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data: data.to_vec(),
                tags: Vec::new(),
            })
            .collect(),
    };
    let protobuf = aggregate.encode_to_vec();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&protobuf);
    out.extend_from_slice(&Md5::digest(&protobuf));
    out
}
