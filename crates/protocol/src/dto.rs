//! Typed inputs and outputs of the twelve operations. Inputs are produced only by
//! [`crate::Operation::parse`], after validation; outputs serialise to exactly the
//! member names of the model.

use serde::{Deserialize, Serialize};

use crate::destination::{Destination, DestinationDescription, DestinationKind, DestinationUpdate};

/// A tag as in the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    /// The key.
    pub key: String,
    /// The value (Firehose returns it even when empty... only when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `DeliveryStreamEncryptionConfigurationInput`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptionInput {
    /// `AWS_OWNED_CMK` or `CUSTOMER_MANAGED_CMK`.
    pub key_type: String,
    /// The KMS key ARN, for `CUSTOMER_MANAGED_CMK` only.
    #[serde(rename = "KeyARN")]
    pub key_arn: Option<String>,
}

/// CreateDeliveryStream.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateDeliveryStreamInput {
    /// The name.
    pub name: String,
    /// `DeliveryStreamType`, `DirectPut` when absent.
    pub stream_type: String,
    /// `DirectPutSourceConfiguration.ThroughputHintInMBs`, informational.
    pub throughput_hint_mbs: Option<i64>,
    /// Source configurations present (other than DirectPut), by member name.
    pub other_sources: Vec<&'static str>,
    /// `KinesisStreamSourceConfiguration`, if given.
    pub kinesis_source: Option<KinesisStreamSource>,
    /// Server-side encryption requested at creation.
    pub encryption: Option<EncryptionInput>,
    /// Every destination configuration given (the API allows exactly one).
    pub destinations: Vec<Destination>,
    /// Tags.
    pub tags: Vec<Tag>,
}

/// `KinesisStreamSourceConfiguration`: the Kinesis data stream a
/// `KinesisStreamAsSource` delivery stream reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KinesisStreamSource {
    /// `KinesisStreamARN`.
    #[serde(rename = "KinesisStreamARN")]
    pub stream_arn: String,
    /// `RoleARN` (kept and described; Sluice signs with its configured credentials).
    #[serde(rename = "RoleARN")]
    pub role_arn: String,
}

impl KinesisStreamSource {
    /// The data stream's name, the last part of its ARN (`...:stream/NAME`).
    pub fn stream_name(&self) -> &str {
        self.stream_arn.rsplit_once(":stream/").map_or(self.stream_arn.as_str(), |(_, name)| name)
    }

    /// The data stream's region, from its ARN.
    pub fn region(&self) -> Option<&str> {
        self.stream_arn.split(':').nth(3).filter(|r| !r.is_empty())
    }
}

/// DeleteDeliveryStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteDeliveryStreamInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
    /// Accepted and ignored: Sluice holds no KMS grants to retire.
    pub allow_force_delete: Option<bool>,
}

/// DescribeDeliveryStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeDeliveryStreamInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
    /// Destinations per page (a stream has one).
    pub limit: Option<i64>,
    /// Destinations after this one.
    pub exclusive_start_destination_id: Option<String>,
}

/// ListDeliveryStreams.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListDeliveryStreamsInput {
    /// Page size, default 10.
    pub limit: Option<i64>,
    /// Filter by type.
    pub delivery_stream_type: Option<String>,
    /// Names after this one.
    pub exclusive_start_delivery_stream_name: Option<String>,
}

/// ListTagsForDeliveryStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsForDeliveryStreamInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
    /// Tags after this key.
    pub exclusive_start_tag_key: Option<String>,
    /// Page size, default 50.
    pub limit: Option<i64>,
}

/// PutRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecordInput {
    /// The stream.
    pub name: String,
    /// The decoded record.
    pub data: Vec<u8>,
}

/// PutRecordBatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecordBatchInput {
    /// The stream.
    pub name: String,
    /// The decoded records, in order.
    pub records: Vec<Vec<u8>>,
}

/// StartDeliveryStreamEncryption.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartDeliveryStreamEncryptionInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
    /// The key to use; `AWS_OWNED_CMK` when absent.
    #[serde(rename = "DeliveryStreamEncryptionConfigurationInput")]
    pub encryption: Option<EncryptionInput>,
}

/// StopDeliveryStreamEncryption.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StopDeliveryStreamEncryptionInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
}

/// TagDeliveryStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagDeliveryStreamInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
    /// Tags to add or overwrite.
    pub tags: Vec<Tag>,
}

/// UntagDeliveryStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagDeliveryStreamInput {
    /// The name.
    #[serde(rename = "DeliveryStreamName")]
    pub name: String,
    /// Keys to remove; unknown keys are ignored.
    pub tag_keys: Vec<String>,
}

/// UpdateDestination.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateDestinationInput {
    /// The name.
    pub name: String,
    /// Must equal the stream's current `VersionId`.
    pub current_version_id: String,
    /// Must name the stream's destination.
    pub destination_id: String,
    /// Every update member given (exactly one is allowed).
    pub updates: Vec<DestinationUpdate>,
}

/// CreateDeliveryStream's answer.
#[derive(Debug, Serialize)]
pub struct CreateDeliveryStreamOutput {
    /// The new stream's ARN.
    #[serde(rename = "DeliveryStreamARN")]
    pub arn: String,
}

/// DescribeDeliveryStream's answer.
#[derive(Debug, Serialize)]
pub struct DescribeDeliveryStreamOutput {
    /// The description.
    #[serde(rename = "DeliveryStreamDescription")]
    pub description: DeliveryStreamDescription,
}

/// `DeliveryStreamDescription`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeliveryStreamDescription {
    /// Name.
    pub delivery_stream_name: String,
    /// ARN.
    #[serde(rename = "DeliveryStreamARN")]
    pub delivery_stream_arn: String,
    /// Status.
    pub delivery_stream_status: String,
    /// Encryption state; absent for a Kinesis-sourced stream, as AWS shows it (the
    /// data stream's own encryption applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_stream_encryption_configuration: Option<EncryptionDescription>,
    /// Type.
    pub delivery_stream_type: String,
    /// Version.
    pub version_id: String,
    /// Creation time, epoch seconds.
    pub create_timestamp: f64,
    /// Last update time, epoch seconds; absent until the first update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_timestamp: Option<f64>,
    /// Source description, present when a source configuration was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    /// The destination.
    pub destinations: Vec<DestinationDescription>,
    /// Always false: a stream has one destination.
    pub has_more_destinations: bool,
}

/// `DeliveryStreamEncryptionConfiguration`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptionDescription {
    /// Only for `CUSTOMER_MANAGED_CMK`.
    #[serde(rename = "KeyARN", skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// Absent when encryption was never enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// ENABLED, ENABLING, DISABLED, ...
    pub status: String,
}

/// ListDeliveryStreams' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListDeliveryStreamsOutput {
    /// Names, alphabetical.
    pub delivery_stream_names: Vec<String>,
    /// Whether another page exists.
    pub has_more_delivery_streams: bool,
}

/// ListTagsForDeliveryStream's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsForDeliveryStreamOutput {
    /// The tags, by key.
    pub tags: Vec<Tag>,
    /// Whether another page exists.
    pub has_more_tags: bool,
}

/// PutRecord's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordOutput {
    /// Opaque and stable.
    pub record_id: String,
    /// Whether the record was stored encrypted.
    pub encrypted: bool,
}

/// PutRecordBatch's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordBatchOutput {
    /// Entries with an error.
    pub failed_put_count: usize,
    /// Whether the records were stored encrypted.
    pub encrypted: bool,
    /// One per record, in order.
    pub request_responses: Vec<PutRecordBatchEntry>,
}

/// One record's result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordBatchEntry {
    /// Set on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// The `{}` answer of operations with no output.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// A kind a destination member can name, for errors.
pub fn destination_member(kind: DestinationKind) -> String {
    format!("{}DestinationConfiguration", kind.name())
}
