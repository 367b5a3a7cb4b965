//! A small client for the four Kinesis Data Streams calls the source needs
//! (DescribeStream, GetShardIterator, GetRecords; ListShards is not used because
//! not every implementation has it), over the AWS JSON 1.1 protocol with SigV4.
//! Calls name the stream by `StreamName`, which every implementation accepts
//! (kinesalite refuses calls that carry only `StreamARN`).

use serde::Deserialize;
use serde_json::{json, Value};

pub use sluice_aws_call::PLACEHOLDER_KEY;

/// Where and how to call Kinesis: the endpoint (e.g.
/// `https://kinesis.us-east-1.amazonaws.com`), the signing region, the key
/// (`None`: [`PLACEHOLDER_KEY`], which kinesalite and LocalStack take and AWS
/// refuses) and how long one call may take.
pub type ClientConfig = sluice_aws_call::JsonApiConfig;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KinesisError {
    /// `ProvisionedThroughputExceededException` or `LimitExceededException`: slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// `ExpiredIteratorException`: get a new iterator.
    #[error("the shard iterator expired: {0}")]
    ExpiredIterator(String),
    /// `ResourceNotFoundException`: the stream (or shard) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other error the service answered with.
    #[error("{kind} (HTTP {status}): {message}")]
    Service {
        /// Its `__type`.
        kind: String,
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The service could not be reached or answered something unreadable.
    #[error("cannot call Kinesis: {0}")]
    Network(String),
}

/// A shard, as DescribeStream lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Shard {
    /// Its id.
    pub shard_id: String,
    /// The shard it was split from, or one of the two it was merged from.
    #[serde(default)]
    pub parent_shard_id: Option<String>,
    /// The other shard it was merged from.
    #[serde(default)]
    pub adjacent_parent_shard_id: Option<String>,
}

impl Shard {
    /// Its parents.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id.iter().chain(self.adjacent_parent_shard_id.iter()).map(String::as_str)
    }
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Just after this sequence number.
    After(String),
    /// At the first record that arrived at or after this time (Unix ms).
    AtTimestamp(u64),
}

/// A record, as GetRecords returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub sequence_number: String,
    /// Partition key.
    pub partition_key: String,
    /// `ApproximateArrivalTimestamp`, Unix ms.
    pub arrival_ms: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What GetRecords returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The records, in order.
    pub records: Vec<Record>,
    /// Where to read next; `None` once a closed shard is read to its end.
    pub next_iterator: Option<String>,
    /// How far behind the shard's tip the read is.
    pub millis_behind_latest: u64,
}

/// A Kinesis API client.
#[derive(Clone)]
pub struct Client {
    api: sluice_aws_call::JsonApi,
}

impl Client {
    /// A client for `config`.
    pub fn new(config: ClientConfig) -> Result<Client, KinesisError> {
        let api = sluice_aws_call::JsonApi::new(config, "kinesis", "Kinesis_20131202").map_err(KinesisError::from)?;
        Ok(Client { api })
    }

    /// Every shard of the stream, closed ones included (DescribeStream, paged).
    pub async fn shards(&self, stream_name: &str) -> Result<Vec<Shard>, KinesisError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Description {
            shards: Vec<Shard>,
            #[serde(default)]
            has_more_shards: bool,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Output {
            stream_description: Description,
        }
        let mut shards: Vec<Shard> = Vec::new();
        loop {
            let mut input = json!({"StreamName": stream_name});
            if let Some(last) = shards.last() {
                input["ExclusiveStartShardId"] = json!(last.shard_id);
            }
            let output: Output = parse(self.call("DescribeStream", &input).await?)?;
            let more = output.stream_description.has_more_shards && !output.stream_description.shards.is_empty();
            shards.extend(output.stream_description.shards);
            if !more {
                return Ok(shards);
            }
        }
    }

    /// A shard iterator.
    pub async fn shard_iterator(
        &self,
        stream_name: &str,
        shard_id: &str,
        start: &Start,
    ) -> Result<String, KinesisError> {
        let mut input = json!({"StreamName": stream_name, "ShardId": shard_id});
        match start {
            Start::After(sequence_number) => {
                input["ShardIteratorType"] = json!("AFTER_SEQUENCE_NUMBER");
                input["StartingSequenceNumber"] = json!(sequence_number);
            }
            Start::AtTimestamp(ms) => {
                input["ShardIteratorType"] = json!("AT_TIMESTAMP");
                input["Timestamp"] = json!(*ms as f64 / 1000.0);
            }
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Output {
            shard_iterator: String,
        }
        let output: Output = parse(self.call("GetShardIterator", &input).await?)?;
        Ok(output.shard_iterator)
    }

    /// Up to `limit` records from `iterator`.
    pub async fn records(&self, iterator: &str, limit: u32) -> Result<Records, KinesisError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct WireRecord {
            sequence_number: String,
            #[serde(default)]
            partition_key: String,
            #[serde(default)]
            approximate_arrival_timestamp: f64,
            data: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Output {
            records: Vec<WireRecord>,
            next_shard_iterator: Option<String>,
            #[serde(default)]
            millis_behind_latest: u64,
        }
        let input = json!({"ShardIterator": iterator, "Limit": limit});
        let output: Output = parse(self.call("GetRecords", &input).await?)?;
        let mut records = Vec::with_capacity(output.records.len());
        for record in output.records {
            let data = base64_simd::STANDARD
                .decode_to_vec(record.data.as_bytes())
                .map_err(|e| KinesisError::Network(format!("a record's Data is not base64: {e}")))?;
            records.push(Record {
                sequence_number: record.sequence_number,
                partition_key: record.partition_key,
                arrival_ms: (record.approximate_arrival_timestamp * 1000.0).round().max(0.0) as u64,
                data,
            });
        }
        Ok(Records {
            records,
            next_iterator: output.next_shard_iterator,
            millis_behind_latest: output.millis_behind_latest,
        })
    }

    async fn call(&self, operation: &str, input: &Value) -> Result<Value, KinesisError> {
        self.api.call(operation, input).await.map_err(KinesisError::from)
    }
}

impl From<sluice_aws_call::CallError> for KinesisError {
    fn from(error: sluice_aws_call::CallError) -> KinesisError {
        match error {
            sluice_aws_call::CallError::Network(message) => KinesisError::Network(message),
            sluice_aws_call::CallError::Service { kind, status, message } => match kind.as_str() {
                "ProvisionedThroughputExceededException" | "LimitExceededException" => KinesisError::Throttled(message),
                "ExpiredIteratorException" => KinesisError::ExpiredIterator(message),
                "ResourceNotFoundException" => KinesisError::NotFound(message),
                _ => KinesisError::Service { kind, status, message },
            },
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, KinesisError> {
    serde_json::from_value(value).map_err(|e| KinesisError::Network(format!("unexpected response: {e}")))
}
