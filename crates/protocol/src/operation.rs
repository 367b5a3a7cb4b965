//! The edge parser: `X-Amz-Target` plus body in, a closed [`Operation`] out. All
//! validation against the model happens here, so handlers receive only well-formed,
//! in-range input and never see headers or raw JSON.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::destination::{Destination, DestinationKind, DestinationUpdate};
use crate::dto::*;
use crate::error::{ApiError, ErrorCode};
use crate::limits::{BATCH_BYTES_MAX, RECORD_BYTES_MAX};
use crate::model::{self, Violation};

/// `X-Amz-Target` is this prefix, a dot, and the operation name.
pub const TARGET_PREFIX: &str = "Firehose_20150804";

/// Every operation, with its typed input.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Operation {
    CreateDeliveryStream(CreateDeliveryStreamInput),
    DeleteDeliveryStream(DeleteDeliveryStreamInput),
    DescribeDeliveryStream(DescribeDeliveryStreamInput),
    ListDeliveryStreams(ListDeliveryStreamsInput),
    ListTagsForDeliveryStream(ListTagsForDeliveryStreamInput),
    PutRecord(PutRecordInput),
    PutRecordBatch(PutRecordBatchInput),
    StartDeliveryStreamEncryption(StartDeliveryStreamEncryptionInput),
    StopDeliveryStreamEncryption(StopDeliveryStreamEncryptionInput),
    TagDeliveryStream(TagDeliveryStreamInput),
    UntagDeliveryStream(UntagDeliveryStreamInput),
    UpdateDestination(UpdateDestinationInput),
}

/// The name of every operation.
pub const OPERATION_NAMES: [&str; 12] = [
    "CreateDeliveryStream",
    "DeleteDeliveryStream",
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "ListTagsForDeliveryStream",
    "PutRecord",
    "PutRecordBatch",
    "StartDeliveryStreamEncryption",
    "StopDeliveryStreamEncryption",
    "TagDeliveryStream",
    "UntagDeliveryStream",
    "UpdateDestination",
];

/// How a server departs from Firehose's validation, by configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Accept `http://` endpoint URLs (Firehose accepts only `https://`); for
    /// local development.
    pub allow_http_endpoints: bool,
}

impl Operation {
    /// The stream the operation is about (all but ListDeliveryStreams).
    pub fn stream_name(&self) -> Option<&str> {
        match self {
            Operation::CreateDeliveryStream(i) => Some(&i.name),
            Operation::DeleteDeliveryStream(i) => Some(&i.name),
            Operation::DescribeDeliveryStream(i) => Some(&i.name),
            Operation::ListDeliveryStreams(_) => None,
            Operation::ListTagsForDeliveryStream(i) => Some(&i.name),
            Operation::PutRecord(i) => Some(&i.name),
            Operation::PutRecordBatch(i) => Some(&i.name),
            Operation::StartDeliveryStreamEncryption(i) => Some(&i.name),
            Operation::StopDeliveryStreamEncryption(i) => Some(&i.name),
            Operation::TagDeliveryStream(i) => Some(&i.name),
            Operation::UntagDeliveryStream(i) => Some(&i.name),
            Operation::UpdateDestination(i) => Some(&i.name),
        }
    }

    /// The operation's name as in `X-Amz-Target` and metric names.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::CreateDeliveryStream(_) => "CreateDeliveryStream",
            Operation::DeleteDeliveryStream(_) => "DeleteDeliveryStream",
            Operation::DescribeDeliveryStream(_) => "DescribeDeliveryStream",
            Operation::ListDeliveryStreams(_) => "ListDeliveryStreams",
            Operation::ListTagsForDeliveryStream(_) => "ListTagsForDeliveryStream",
            Operation::PutRecord(_) => "PutRecord",
            Operation::PutRecordBatch(_) => "PutRecordBatch",
            Operation::StartDeliveryStreamEncryption(_) => "StartDeliveryStreamEncryption",
            Operation::StopDeliveryStreamEncryption(_) => "StopDeliveryStreamEncryption",
            Operation::TagDeliveryStream(_) => "TagDeliveryStream",
            Operation::UntagDeliveryStream(_) => "UntagDeliveryStream",
            Operation::UpdateDestination(_) => "UpdateDestination",
        }
    }

    /// Parses and validates a request. `target` is the `X-Amz-Target` header.
    pub fn parse(target: Option<&str>, body: &[u8]) -> Result<Operation, ApiError> {
        Operation::parse_with(target, body, &ParseOptions::default())
    }

    /// [`Operation::parse`] with the server's options.
    pub fn parse_with(target: Option<&str>, body: &[u8], options: &ParseOptions) -> Result<Operation, ApiError> {
        let unknown = || {
            ApiError::new(ErrorCode::UnknownOperationException, format!("Unknown operation {}", target.unwrap_or("")))
        };
        let name =
            target.and_then(|t| t.strip_prefix(TARGET_PREFIX)).and_then(|t| t.strip_prefix('.')).ok_or_else(unknown)?;
        // The two hot operations are decoded straight into their types; the rest go
        // through the generic model validator first.
        match name {
            "PutRecord" => return parse_put_record(body).map(Operation::PutRecord),
            "PutRecordBatch" => return parse_put_record_batch(body).map(Operation::PutRecordBatch),
            _ => {}
        }
        let parse: fn(Map<String, Value>) -> Result<Operation, ApiError> = match name {
            "CreateDeliveryStream" => parse_create,
            "DeleteDeliveryStream" => |v| typed(v).map(Operation::DeleteDeliveryStream),
            "DescribeDeliveryStream" => |v| typed(v).map(Operation::DescribeDeliveryStream),
            "ListDeliveryStreams" => |v| typed(v).map(Operation::ListDeliveryStreams),
            "ListTagsForDeliveryStream" => |v| typed(v).map(Operation::ListTagsForDeliveryStream),
            "StartDeliveryStreamEncryption" => |v| typed(v).map(Operation::StartDeliveryStreamEncryption),
            "StopDeliveryStreamEncryption" => |v| typed(v).map(Operation::StopDeliveryStreamEncryption),
            "TagDeliveryStream" => |v| typed(v).map(Operation::TagDeliveryStream),
            "UntagDeliveryStream" => |v| typed(v).map(Operation::UntagDeliveryStream),
            "UpdateDestination" => parse_update,
            _ => return Err(unknown()),
        };
        let value = json_body(body)?;
        model::validate_input(name, &value, options)?;
        match value {
            Value::Object(map) => parse(map),
            _ => Err(serialization("The request body must be a JSON object.")),
        }
    }
}

fn serialization(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::SerializationException, message)
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    // An empty body is an empty input, as the SDKs send for ListDeliveryStreams.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| serialization(format!("Malformed JSON: {e}")))
}

/// Converts a validated object into its typed input. Validation has already checked
/// every type, so this fails only if the types here drift from the model.
fn typed<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(map)).map_err(|e| serialization(e.to_string()))
}

fn parse_create(mut map: Map<String, Value>) -> Result<Operation, ApiError> {
    let name = take_string(&mut map, "DeliveryStreamName");
    let stream_type = map.get("DeliveryStreamType").and_then(Value::as_str).unwrap_or("DirectPut").to_string();
    let throughput_hint_mbs =
        map.get("DirectPutSourceConfiguration").and_then(|c| c.get("ThroughputHintInMBs")).and_then(Value::as_i64);
    let other_sources = ["KinesisStreamSourceConfiguration", "MSKSourceConfiguration", "DatabaseSourceConfiguration"]
        .into_iter()
        .filter(|s| map.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    let kinesis_source = match map.remove("KinesisStreamSourceConfiguration") {
        Some(Value::Null) | None => None,
        Some(config) => Some(from_value(config)?),
    };
    let encryption = map.remove("DeliveryStreamEncryptionConfigurationInput").map(from_value).transpose()?;
    let tags = map.remove("Tags").map(from_value).transpose()?.unwrap_or_default();
    let destinations = DestinationKind::ALL
        .into_iter()
        .filter_map(|kind| match map.remove(&kind.config_member()) {
            Some(Value::Object(config)) => Some(Destination { kind, config }),
            _ => None,
        })
        .collect();
    Ok(Operation::CreateDeliveryStream(CreateDeliveryStreamInput {
        name,
        stream_type,
        throughput_hint_mbs,
        other_sources,
        kinesis_source,
        encryption,
        destinations,
        tags,
    }))
}

fn parse_update(mut map: Map<String, Value>) -> Result<Operation, ApiError> {
    let updates = DestinationKind::ALL
        .into_iter()
        .filter_map(|kind| match map.remove(&kind.update_member()) {
            Some(Value::Object(update)) => Some(DestinationUpdate { kind, update }),
            _ => None,
        })
        .collect();
    Ok(Operation::UpdateDestination(UpdateDestinationInput {
        name: take_string(&mut map, "DeliveryStreamName"),
        current_version_id: take_string(&mut map, "CurrentDeliveryStreamVersionId"),
        destination_id: take_string(&mut map, "DestinationId"),
        updates,
    }))
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> String {
    match map.remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| serialization(e.to_string()))
}

/// The wire form of a put request, decoded without the generic validator.
#[derive(Deserialize)]
struct RawPut<'a> {
    #[serde(rename = "DeliveryStreamName", borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "Record")]
    record: Option<RawRecord<'a>>,
    #[serde(rename = "Records", borrow)]
    records: Option<Vec<Option<RawRecord<'a>>>>,
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(rename = "Data", borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
}

fn parse_raw_put(body: &[u8]) -> Result<RawPut<'_>, ApiError> {
    serde_json::from_slice(body).map_err(|e| serialization(format!("Malformed JSON: {e}")))
}

/// Base64 (standard alphabet, padded) to bytes. SIMD: decoding was a fifth of the
/// server's CPU time on PutRecordBatch with the portable decoder.
fn decode_data(data: &str, path: &str) -> Result<Vec<u8>, ApiError> {
    base64_simd::STANDARD
        .decode_to_vec(data.as_bytes())
        .map_err(|_| serialization(format!("Invalid base64 at '{path}'.")))
}

fn check_name(name: &Option<std::borrow::Cow<'_, str>>, violations: &mut Vec<Violation>) -> String {
    match name {
        Some(name) => {
            model::check_stream_name(name, "deliveryStreamName", violations);
            name.to_string()
        }
        None => {
            violations.push(Violation::not_null("deliveryStreamName"));
            String::new()
        }
    }
}

fn parse_put_record(body: &[u8]) -> Result<PutRecordInput, ApiError> {
    let raw = parse_raw_put(body)?;
    let mut violations = Vec::new();
    let name = check_name(&raw.name, &mut violations);
    let data = match raw.record.map(|r| r.data) {
        None => {
            violations.push(Violation::not_null("record"));
            Vec::new()
        }
        Some(None) => {
            violations.push(Violation::not_null("record.data"));
            Vec::new()
        }
        Some(Some(data)) => {
            let data = decode_data(&data, "record.data")?;
            if data.len() > RECORD_BYTES_MAX {
                violations.push(Violation::length_max(model::blob_value(data.len()), "record.data", RECORD_BYTES_MAX));
            }
            data
        }
    };
    Violation::into_result(violations)?;
    Ok(PutRecordInput { name, data })
}

fn parse_put_record_batch(body: &[u8]) -> Result<PutRecordBatchInput, ApiError> {
    let raw = parse_raw_put(body)?;
    let mut violations = Vec::new();
    let name = check_name(&raw.name, &mut violations);
    let mut records = Vec::new();
    match raw.records {
        None => violations.push(Violation::not_null("records")),
        Some(list) => {
            let shown = || format!("Value '[{} records]'", list.len());
            if list.len() > crate::limits::BATCH_RECORDS_MAX {
                violations.push(Violation::length_max(shown(), "records", crate::limits::BATCH_RECORDS_MAX));
            } else if list.is_empty() {
                violations.push(Violation::length_min(shown(), "records", 1));
            }
            records.reserve(list.len());
            for (i, record) in list.iter().enumerate() {
                let path = format!("records.{}.member", i + 1);
                match record.as_ref().map(|r| &r.data) {
                    None => violations.push(Violation::not_null(&path)),
                    Some(None) => violations.push(Violation::not_null(&format!("{path}.data"))),
                    Some(Some(data)) => {
                        let data = decode_data(data, &format!("{path}.data"))?;
                        if data.len() > RECORD_BYTES_MAX {
                            let value = model::blob_value(data.len());
                            violations.push(Violation::length_max(value, &format!("{path}.data"), RECORD_BYTES_MAX));
                        }
                        records.push(data);
                    }
                }
            }
        }
    }
    Violation::into_result(violations)?;
    let n_bytes: usize = records.iter().map(Vec::len).sum();
    if n_bytes > BATCH_BYTES_MAX {
        return Err(ApiError::new(ErrorCode::InvalidArgumentException, "Records size exceeds 4 MB limit"));
    }
    Ok(PutRecordBatchInput { name, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(op: &str) -> String {
        format!("{TARGET_PREFIX}.{op}")
    }

    #[test]
    fn unknown_and_missing_targets() {
        for t in [None, Some("Firehose_20150804.Nope"), Some("Kinesis_20131202.PutRecord"), Some("Firehose_20150804")] {
            assert_eq!(Operation::parse(t, b"{}").unwrap_err().code, ErrorCode::UnknownOperationException, "{t:?}");
        }
    }

    #[test]
    fn put_record_decodes_and_validates() {
        let op =
            Operation::parse(Some(&target("PutRecord")), br#"{"DeliveryStreamName":"s","Record":{"Data":"aGk="}}"#);
        assert_eq!(op.unwrap(), Operation::PutRecord(PutRecordInput { name: "s".into(), data: b"hi".to_vec() }));
        let bad64 =
            Operation::parse(Some(&target("PutRecord")), br#"{"DeliveryStreamName":"s","Record":{"Data":"!!"}}"#);
        assert_eq!(bad64.unwrap_err().code, ErrorCode::SerializationException);
        let no_record = Operation::parse(Some(&target("PutRecord")), br#"{"DeliveryStreamName":"s"}"#).unwrap_err();
        assert_eq!(
            no_record.message,
            "1 validation error detected: Value null at 'record' failed to satisfy constraint: Member must not be null"
        );
        let big = base64_simd::STANDARD.encode_to_string(vec![0u8; RECORD_BYTES_MAX + 1]);
        let body = format!(r#"{{"DeliveryStreamName":"s","Record":{{"Data":"{big}"}}}}"#);
        let e = Operation::parse(Some(&target("PutRecord")), body.as_bytes()).unwrap_err();
        assert_eq!(e.message, "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=1024001 cap=1024001]' at 'record.data' failed to satisfy constraint: Member must have length less than or equal to 1024000");
        let empty = Operation::parse(Some(&target("PutRecord")), br#"{"DeliveryStreamName":"s","Record":{"Data":""}}"#);
        assert!(empty.is_ok(), "empty records are allowed");
    }

    #[test]
    fn put_record_batch_limits() {
        let e = Operation::parse(Some(&target("PutRecordBatch")), br#"{"DeliveryStreamName":"s","Records":[]}"#)
            .unwrap_err();
        assert_eq!(e.message, "1 validation error detected: Value '[0 records]' at 'records' failed to satisfy constraint: Member must have length greater than or equal to 1");
        let one_mb = base64_simd::STANDARD.encode_to_string(vec![1u8; 1_000_000]);
        let records: Vec<String> = (0..5).map(|_| format!(r#"{{"Data":"{one_mb}"}}"#)).collect();
        let body = format!(r#"{{"DeliveryStreamName":"s","Records":[{}]}}"#, records.join(","));
        let e = Operation::parse(Some(&target("PutRecordBatch")), body.as_bytes()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::InvalidArgumentException, "Records size exceeds 4 MB limit")
        );
        let e = Operation::parse(Some(&target("PutRecordBatch")), br#"{"DeliveryStreamName":"a b","Records":[{}]}"#)
            .unwrap_err();
        assert!(
            e.message.starts_with("2 validation errors detected: Value 'a b' at 'deliveryStreamName'"),
            "{}",
            e.message
        );
        assert!(e
            .message
            .ends_with("Value null at 'records.1.member.data' failed to satisfy constraint: Member must not be null"));
    }

    #[test]
    fn malformed_json_is_a_serialization_error() {
        for body in [&b"{"[..], b"[1]", b"{\"DeliveryStreamName\": 3}"] {
            for op in ["PutRecord", "DescribeDeliveryStream"] {
                let e = Operation::parse(Some(&target(op)), body).unwrap_err();
                assert_eq!(e.code, ErrorCode::SerializationException, "{op} {body:?}");
            }
        }
    }

    #[test]
    fn create_collects_destinations() {
        let body = br#"{"DeliveryStreamName":"s","ExtendedS3DestinationConfiguration":{"RoleARN":"arn:aws:iam::000000000000:role/r","BucketARN":"arn:aws:s3:::b"},"Tags":[{"Key":"k","Value":"v"}]}"#;
        let Operation::CreateDeliveryStream(input) =
            Operation::parse(Some(&target("CreateDeliveryStream")), body).unwrap()
        else {
            panic!("wrong operation")
        };
        assert_eq!(input.stream_type, "DirectPut");
        assert_eq!(input.destinations.len(), 1);
        assert_eq!(input.destinations[0].kind, DestinationKind::ExtendedS3);
        assert_eq!(input.tags, vec![Tag { key: "k".into(), value: Some("v".into()) }]);
    }
}

#[cfg(test)]
mod never_panics {
    use proptest::prelude::*;

    use super::*;

    /// Every operation, and one that does not exist.
    fn operations() -> Vec<&'static str> {
        OPERATION_NAMES.iter().copied().chain(["Nope"]).collect()
    }

    /// JSON values of any shape, with the member names the model uses, so the
    /// validator is exercised deep inside real shapes and not only at the top.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let names = prop::sample::select(vec![
            "DeliveryStreamName",
            "Record",
            "Records",
            "Data",
            "Tags",
            "Key",
            "Value",
            "Limit",
            "BucketARN",
            "RoleARN",
            "ExtendedS3DestinationConfiguration",
            "BufferingHints",
            "SizeInMBs",
            "Prefix",
            "ProcessingConfiguration",
            "Processors",
            "Parameters",
            "DeliveryStreamEncryptionConfigurationInput",
            "KeyType",
            "TagKeys",
            "HttpEndpointDestinationConfiguration",
            "EndpointConfiguration",
            "Url",
            "S3Configuration",
        ]);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "[a-zA-Z0-9+/=:!{}.-]{0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(names.clone(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn parsing_arbitrary_json_never_panics(op in prop::sample::select(operations()), body in json()) {
            let target = format!("{TARGET_PREFIX}.{op}");
            let _ = Operation::parse(Some(&target), body.to_string().as_bytes());
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(op in prop::sample::select(operations()), body in prop::collection::vec(any::<u8>(), 0..256)) {
            let target = format!("{TARGET_PREFIX}.{op}");
            let _ = Operation::parse(Some(&target), &body);
        }
    }
}
