//! The botocore service model of Firehose (documentation stripped) and a validator
//! that walks a JSON request against it, the way AWS's front end does: type errors
//! are `SerializationException`; broken constraints are one `ValidationException`
//! listing every violation in AWS's words.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::operation::ParseOptions;

/// botocore 1.43.11, `data/firehose/2015-08-04/service-2.json`, documentation removed.
const MODEL_JSON: &str = include_str!("../model/firehose-2015-08-04.json");

#[derive(Deserialize)]
struct ModelFile {
    operations: HashMap<String, OperationModel>,
    shapes: HashMap<String, Shape>,
}

#[derive(Deserialize)]
struct OperationModel {
    input: Option<ShapeRef>,
}

#[derive(Deserialize, Clone)]
struct ShapeRef {
    shape: String,
}

#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    members: serde_json::Map<String, Value>,
    #[serde(default)]
    required: Vec<String>,
    member: Option<ShapeRef>,
    key: Option<ShapeRef>,
    value: Option<ShapeRef>,
    min: Option<f64>,
    max: Option<f64>,
    pattern: Option<String>,
    #[serde(rename = "enum")]
    enum_values: Option<Vec<String>>,
    #[serde(default)]
    sensitive: bool,
}

struct Model {
    file: ModelFile,
    patterns: HashMap<String, fancy_regex::Regex>,
}

static MODEL: LazyLock<Model> = LazyLock::new(|| Model::load(false));
/// The model with `HttpEndpointUrl` relaxed to `https?://.*`, for a server
/// configured to deliver to plain-HTTP endpoints (local development).
static MODEL_ALLOWING_HTTP: LazyLock<Model> = LazyLock::new(|| Model::load(true));

fn model(options: &ParseOptions) -> &'static Model {
    if options.allow_http_endpoints {
        &MODEL_ALLOWING_HTTP
    } else {
        &MODEL
    }
}

impl Model {
    fn load(allow_http_endpoints: bool) -> Model {
        let mut file: ModelFile = serde_json::from_str(MODEL_JSON).expect("the embedded model is valid JSON");
        if allow_http_endpoints {
            if let Some(url) = file.shapes.get_mut("HttpEndpointUrl") {
                url.pattern = Some("https?://.*".into());
            }
        }
        let patterns = file
            .shapes
            .iter()
            .filter_map(|(name, shape)| shape.pattern.as_ref().map(|p| (name, p)))
            .map(|(name, pattern)| {
                // The model's patterns are Java regexes matched against the whole value.
                let anchored = format!("^(?:{})$", java_classes(pattern));
                (name.clone(), fancy_regex::Regex::new(&anchored).expect("model patterns compile"))
            })
            .collect();
        Model { file, patterns }
    }
}

/// Java's `\\w` and `\\d` are ASCII-only; Rust's are Unicode (and `[\\w]{1,255}` in
/// Unicode blows the regex size limit). Spells them out as ASCII classes.
fn java_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut in_class = false;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('w') if in_class => out.push_str("a-zA-Z0-9_"),
                Some('w') => out.push_str("[a-zA-Z0-9_]"),
                Some('d') if in_class => out.push_str("0-9"),
                Some('d') => out.push_str("[0-9]"),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '[' => {
                in_class = true;
                out.push(c);
            }
            ']' => {
                in_class = false;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Validates `input` against the input shape of `operation`.
pub(crate) fn validate_input(operation: &str, input: &Value, options: &ParseOptions) -> Result<(), ApiError> {
    let model = model(options);
    let Some(shape) = model.file.operations.get(operation).and_then(|o| o.input.clone()) else {
        return Ok(());
    };
    let mut violations = Vec::new();
    model.check(&shape.shape, input, "", &mut violations)?;
    Violation::into_result(violations)
}

/// Validates `value` against any named shape (used for merged destination updates).
pub(crate) fn validate_shape(shape: &str, value: &Value, options: &ParseOptions) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    model(options).check(shape, value, "", &mut violations)?;
    Violation::into_result(violations)
}

/// One broken constraint, rendered in AWS's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) value: String,
    pub(crate) path: String,
    pub(crate) constraint: String,
}

impl Violation {
    pub(crate) fn into_result(violations: Vec<Violation>) -> Result<(), ApiError> {
        if violations.is_empty() {
            return Ok(());
        }
        let n = violations.len();
        let head = if n == 1 {
            "1 validation error detected: ".to_string()
        } else {
            format!("{n} validation errors detected: ")
        };
        let body: Vec<String> = violations
            .iter()
            .map(|v| format!("{} at '{}' failed to satisfy constraint: {}", v.value, v.path, v.constraint))
            .collect();
        Err(ApiError::new(ErrorCode::ValidationException, head + &body.join("; ")))
    }

    pub(crate) fn length_max(value: String, path: &str, max: usize) -> Violation {
        Violation {
            value,
            path: path.into(),
            constraint: format!("Member must have length less than or equal to {max}"),
        }
    }

    pub(crate) fn length_min(value: String, path: &str, min: usize) -> Violation {
        Violation {
            value,
            path: path.into(),
            constraint: format!("Member must have length greater than or equal to {min}"),
        }
    }

    pub(crate) fn not_null(path: &str) -> Violation {
        Violation { value: "Value null".into(), path: path.into(), constraint: "Member must not be null".into() }
    }
}

/// How AWS (a Java service) prints a blob of `n` bytes in a validation message.
pub(crate) fn blob_value(n: usize) -> String {
    format!("Value 'java.nio.HeapByteBuffer[pos=0 lim={n} cap={n}]'")
}

/// Checks a delivery stream name the way the model does, without the regex engine:
/// this runs on every put.
pub(crate) fn check_stream_name(name: &str, path: &str, violations: &mut Vec<Violation>) {
    let value = format!("Value '{name}'");
    let n = name.chars().count();
    if n > 64 {
        violations.push(Violation::length_max(value.clone(), path, 64));
    } else if n < 1 {
        violations.push(Violation::length_min(value.clone(), path, 1));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') || name.is_empty() {
        violations.push(Violation {
            value,
            path: path.into(),
            constraint: "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+".into(),
        });
    }
}

fn member_path(parent: &str, member: &str) -> String {
    let mut chars = member.chars();
    let camel: String = chars.next().map(|c| c.to_ascii_lowercase()).into_iter().chain(chars).collect();
    if parent.is_empty() {
        camel
    } else {
        format!("{parent}.{camel}")
    }
}

fn serialization(message: String) -> ApiError {
    ApiError::new(ErrorCode::SerializationException, message)
}

impl Model {
    fn check(&self, shape_name: &str, value: &Value, path: &str, out: &mut Vec<Violation>) -> Result<(), ApiError> {
        let shape = &self.file.shapes[shape_name];
        let shown = |v: &str| {
            if shape.sensitive {
                "Value '*** Sensitive Data Redacted ***'".to_string()
            } else {
                format!("Value '{v}'")
            }
        };
        match shape.kind.as_str() {
            "structure" => {
                let Value::Object(object) = value else {
                    return Err(serialization(format!("Expected an object at '{path}'.")));
                };
                for (name, member) in &shape.members {
                    let target = member["shape"].as_str().expect("members name a shape");
                    let child = member_path(path, name);
                    match object.get(name) {
                        None | Some(Value::Null) if shape.required.contains(name) => {
                            out.push(Violation::not_null(&child))
                        }
                        None | Some(Value::Null) => {}
                        Some(v) => self.check(target, v, &child, out)?,
                    }
                }
            }
            "list" => {
                let Value::Array(items) = value else {
                    return Err(serialization(format!("Expected a list at '{path}'.")));
                };
                let member = &shape.member.as_ref().expect("lists have a member").shape;
                self.check_length(shape, items.len(), || format!("Value '[{} items]'", items.len()), path, out);
                for (i, item) in items.iter().enumerate() {
                    let child = format!("{path}.{}.member", i + 1);
                    if item.is_null() {
                        out.push(Violation::not_null(&child));
                    } else {
                        self.check(member, item, &child, out)?;
                    }
                }
            }
            "map" => {
                let Value::Object(entries) = value else {
                    return Err(serialization(format!("Expected a map at '{path}'.")));
                };
                self.check_length(shape, entries.len(), || format!("Value '{{{} entries}}'", entries.len()), path, out);
                let key = &shape.key.as_ref().expect("maps have a key").shape;
                let val = &shape.value.as_ref().expect("maps have a value").shape;
                for (k, v) in entries {
                    self.check(key, &Value::String(k.clone()), path, out)?;
                    self.check(val, v, &format!("{path}.{k}"), out)?;
                }
            }
            "string" => {
                let Value::String(s) = value else {
                    return Err(serialization(format!("Expected a string at '{path}'.")));
                };
                let n = s.chars().count();
                self.check_length(shape, n, || shown(s), path, out);
                if let Some(values) = &shape.enum_values {
                    if !values.contains(s) {
                        out.push(Violation {
                            value: shown(s),
                            path: path.into(),
                            constraint: format!("Member must satisfy enum value set: [{}]", values.join(", ")),
                        });
                    }
                }
                if let Some(regex) = self.patterns.get(shape_name) {
                    if !regex.is_match(s).unwrap_or(false) {
                        out.push(Violation {
                            value: shown(s),
                            path: path.into(),
                            constraint: format!(
                                "Member must satisfy regular expression pattern: {}",
                                shape.pattern.as_deref().unwrap_or_default()
                            ),
                        });
                    }
                }
            }
            "integer" | "long" => {
                let Some(n) = value.as_i64() else {
                    return Err(serialization(format!("Expected an integer at '{path}'.")));
                };
                self.check_range(shape, n as f64, &n.to_string(), path, out);
            }
            "double" => {
                let Some(n) = value.as_f64() else {
                    return Err(serialization(format!("Expected a number at '{path}'.")));
                };
                self.check_range(shape, n, &n.to_string(), path, out);
            }
            "boolean" => {
                if !value.is_boolean() {
                    return Err(serialization(format!("Expected a boolean at '{path}'.")));
                }
            }
            "timestamp" => {
                if !value.is_number() {
                    return Err(serialization(format!("Expected a timestamp at '{path}'.")));
                }
            }
            "blob" => {
                let Value::String(s) = value else {
                    return Err(serialization(format!("Expected base64 data at '{path}'.")));
                };
                let bytes = base64_simd::STANDARD
                    .decode_to_vec(s.as_bytes())
                    .map_err(|_| serialization(format!("Invalid base64 at '{path}'.")))?;
                self.check_length(shape, bytes.len(), || blob_value(bytes.len()), path, out);
            }
            other => unreachable!("the model has no shapes of type {other}"),
        }
        Ok(())
    }

    fn check_length(&self, shape: &Shape, n: usize, shown: impl Fn() -> String, path: &str, out: &mut Vec<Violation>) {
        if let Some(max) = shape.max.filter(|max| n as f64 > *max) {
            out.push(Violation::length_max(shown(), path, max as usize));
        }
        if let Some(min) = shape.min.filter(|min| (n as f64) < *min) {
            out.push(Violation::length_min(shown(), path, min as usize));
        }
    }

    fn check_range(&self, shape: &Shape, n: f64, shown: &str, path: &str, out: &mut Vec<Violation>) {
        let render = |bound: f64| if bound.fract() == 0.0 { format!("{}", bound as i64) } else { bound.to_string() };
        if let Some(max) = shape.max.filter(|max| n > *max) {
            out.push(Violation {
                value: format!("Value '{shown}'"),
                path: path.into(),
                constraint: format!("Member must have value less than or equal to {}", render(max)),
            });
        }
        if let Some(min) = shape.min.filter(|min| n < *min) {
            out.push(Violation {
                value: format!("Value '{shown}'"),
                path: path.into(),
                constraint: format!("Member must have value greater than or equal to {}", render(min)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(operation: &str, input: Value) -> String {
        validate_input(operation, &input, &ParseOptions::default()).unwrap_err().message
    }

    #[test]
    fn every_pattern_in_the_model_compiles() {
        assert!(MODEL.patterns.len() > 20);
    }

    #[test]
    fn messages_match_aws() {
        assert_eq!(
            message("DescribeDeliveryStream", json!({"DeliveryStreamName": "x".repeat(65)})),
            format!("1 validation error detected: Value '{}' at 'deliveryStreamName' failed to satisfy constraint: Member must have length less than or equal to 64", "x".repeat(65))
        );
        assert_eq!(
            message("DescribeDeliveryStream", json!({"DeliveryStreamName": "bad name"})),
            "1 validation error detected: Value 'bad name' at 'deliveryStreamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        );
        assert_eq!(
            message("DescribeDeliveryStream", json!({})),
            "1 validation error detected: Value null at 'deliveryStreamName' failed to satisfy constraint: Member must not be null"
        );
        assert_eq!(
            message("ListDeliveryStreams", json!({"Limit": 0, "DeliveryStreamType": "Nope"})),
            "2 validation errors detected: Value 'Nope' at 'deliveryStreamType' failed to satisfy constraint: Member must satisfy enum value set: [DirectPut, KinesisStreamAsSource, MSKAsSource, DatabaseAsSource]; Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
        );
        let m =
            message("TagDeliveryStream", json!({"DeliveryStreamName": "s", "Tags": [{"Key": "aws:x", "Value": "v"}]}));
        assert!(m.contains("Value 'aws:x' at 'tags.1.member.key' failed to satisfy constraint: Member must satisfy regular expression pattern"), "{m}");
        let m = message(
            "CreateDeliveryStream",
            json!({"DeliveryStreamName": "s", "ExtendedS3DestinationConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b", "BufferingHints": {"SizeInMBs": 129}}}),
        );
        assert_eq!(m, "1 validation error detected: Value '129' at 'extendedS3DestinationConfiguration.bufferingHints.sizeInMBs' failed to satisfy constraint: Member must have value less than or equal to 128");
    }

    #[test]
    fn wrong_types_are_serialization_errors() {
        for input in [json!({"DeliveryStreamName": 5}), json!({"DeliveryStreamName": "s", "Limit": "ten"}), json!([])] {
            let e = validate_input("DescribeDeliveryStream", &input, &ParseOptions::default()).unwrap_err();
            assert_eq!(e.code, ErrorCode::SerializationException, "{input}");
        }
    }

    #[test]
    fn valid_input_passes() {
        validate_input(
            "CreateDeliveryStream",
            &json!({"DeliveryStreamName": "ok-name_1.2", "ExtendedS3DestinationConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"}, "Tags": [{"Key": "team", "Value": "data"}]}),
            &ParseOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn plain_http_endpoints_only_when_allowed() {
        let input = json!({"DeliveryStreamName": "h", "HttpEndpointDestinationConfiguration": {
            "EndpointConfiguration": {"Url": "http://127.0.0.1:8080/ingest"},
            "S3Configuration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"}}});
        let strict = validate_input("CreateDeliveryStream", &input, &ParseOptions::default()).unwrap_err();
        assert!(strict.message.contains("https://.*"), "{}", strict.message);
        let relaxed = ParseOptions { allow_http_endpoints: true };
        validate_input("CreateDeliveryStream", &input, &relaxed).unwrap();
    }
}
