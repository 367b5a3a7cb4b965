//! `ProcessingConfiguration` as typed settings: which processors a destination runs
//! and with which parameters, checked with Firehose's rules at CreateDeliveryStream
//! and UpdateDestination (the model has already checked the enums and lengths).
//! The server's processing chain executes what this describes; nothing here runs.
//!
//! Rules Firehose documents are enforced as documented; where it is silent, Sluice's
//! choice is written next to the rule and in the README.

use serde_json::{Map, Value};

/// The processors of one destination, in the order Firehose runs them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessingChain {
    /// `RecordDeAggregation`: KPL aggregates are always expanded; then, with a
    /// `SubRecordType`, each record is split into JSON objects or on a delimiter.
    pub deaggregation: Option<Deaggregation>,
    /// `Decompression` (GZIP, the only format Firehose supports).
    pub decompression: bool,
    /// `CloudWatchLogProcessing` with `DataMessageExtraction` `true`.
    pub message_extraction: bool,
    /// `Lambda`.
    pub lambda: Option<LambdaSettings>,
    /// `MetadataExtraction`: the JQ query producing partition keys.
    pub metadata_query: Option<String>,
    /// `AppendDelimiterToRecord`: the bytes added after each record.
    pub append_delimiter: Option<Vec<u8>>,
}

/// How `RecordDeAggregation` splits records after KPL de-aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deaggregation {
    /// `SubRecordType`; `None`: KPL de-aggregation only.
    pub sub_records: Option<SubRecords>,
}

/// `SubRecordType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubRecords {
    /// Consecutive JSON values.
    Json,
    /// Split on the (base64-decoded) `Delimiter`.
    Delimited(Vec<u8>),
}

/// The `Lambda` processor's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaSettings {
    /// `LambdaArn` (a function name, ARN or qualified ARN).
    pub function: String,
    /// `NumberOfRetries`, default 3.
    pub retries_max: u32,
    /// `BufferSizeInMBs` in bytes, default 1 MiB.
    pub buffer_bytes_max: u64,
    /// `BufferIntervalInSeconds`, default 60.
    pub buffer_interval_s: u64,
}

/// Largest `NumberOfRetries` (Firehose documents 0-300).
pub const LAMBDA_RETRIES_MAX: u32 = 300;

impl ProcessingChain {
    /// Reads `ProcessingConfiguration` from a destination configuration. `Ok(None)`
    /// when it is absent, disabled or lists no processor; `Err` with an
    /// `InvalidArgumentException` message when it breaks a rule.
    pub fn from_config(
        config: &Map<String, Value>,
        dynamic_partitioning: bool,
    ) -> Result<Option<ProcessingChain>, String> {
        let Some(processing) = config.get("ProcessingConfiguration").and_then(Value::as_object) else {
            return Ok(None);
        };
        let processors = processing.get("Processors").and_then(Value::as_array).cloned().unwrap_or_default();
        let enabled = processing.get("Enabled").and_then(Value::as_bool).unwrap_or(!processors.is_empty());
        if !enabled || processors.is_empty() {
            return Ok(None);
        }
        let mut chain = ProcessingChain::default();
        let mut seen: Vec<&str> = Vec::new();
        for processor in &processors {
            let kind = processor.get("Type").and_then(Value::as_str).unwrap_or("");
            if seen.contains(&kind) {
                return Err(format!("Processor type {kind} may appear only once in ProcessingConfiguration."));
            }
            seen.push(kind);
            let params = Parameters::read(kind, processor)?;
            match kind {
                "RecordDeAggregation" => {
                    params.only(&["SubRecordType", "Delimiter"])?;
                    let sub_records = match params.get("SubRecordType") {
                        None => None,
                        Some("JSON") => {
                            if params.get("Delimiter").is_some() {
                                return Err("Delimiter is only valid with SubRecordType DELIMITED.".into());
                            }
                            Some(SubRecords::Json)
                        }
                        Some("DELIMITED") => {
                            let delimiter = params.get("Delimiter").ok_or(
                                "Delimiter (base64) must be specified when SubRecordType is DELIMITED.".to_string(),
                            )?;
                            Some(SubRecords::Delimited(base64(delimiter, "Delimiter")?))
                        }
                        Some(other) => {
                            return Err(format!("Unsupported SubRecordType {other}; expected JSON or DELIMITED."))
                        }
                    };
                    chain.deaggregation = Some(Deaggregation { sub_records });
                }
                "Decompression" => {
                    params.only(&["CompressionFormat"])?;
                    match params.get("CompressionFormat").unwrap_or("GZIP") {
                        "GZIP" => chain.decompression = true,
                        other => {
                            return Err(format!(
                                "Unsupported CompressionFormat {other} for Decompression; expected GZIP."
                            ))
                        }
                    }
                }
                "CloudWatchLogProcessing" => {
                    params.only(&["DataMessageExtraction"])?;
                    chain.message_extraction = match params.get("DataMessageExtraction") {
                        Some("true") => true,
                        Some("false") => false,
                        _ => return Err("DataMessageExtraction must be true or false.".into()),
                    };
                }
                "Lambda" => {
                    params.only(&[
                        "LambdaArn",
                        "NumberOfRetries",
                        "RoleArn",
                        "BufferSizeInMBs",
                        "BufferIntervalInSeconds",
                    ])?;
                    let function = params.get("LambdaArn").ok_or("LambdaArn must be specified.".to_string())?;
                    let retries_max = params.number("NumberOfRetries", 0.0, LAMBDA_RETRIES_MAX as f64, 3.0)? as u32;
                    let buffer_mib = params.number("BufferSizeInMBs", 0.2, 3.0, 1.0)?;
                    let buffer_interval_s = params.number("BufferIntervalInSeconds", 60.0, 900.0, 60.0)? as u64;
                    chain.lambda = Some(LambdaSettings {
                        function: function.to_string(),
                        retries_max,
                        buffer_bytes_max: (buffer_mib * (1 << 20) as f64) as u64,
                        buffer_interval_s,
                    });
                }
                "MetadataExtraction" => {
                    params.only(&["MetadataExtractionQuery", "JsonParsingEngine"])?;
                    if !dynamic_partitioning {
                        return Err(
                            "MetadataExtraction requires DynamicPartitioningConfiguration to be enabled.".into()
                        );
                    }
                    match params.get("JsonParsingEngine") {
                        Some("JQ-1.6") => {}
                        _ => return Err("JsonParsingEngine must be JQ-1.6.".into()),
                    }
                    let query = params
                        .get("MetadataExtractionQuery")
                        .ok_or("MetadataExtractionQuery must be specified.".to_string())?;
                    chain.metadata_query = Some(query.to_string());
                }
                "AppendDelimiterToRecord" => {
                    params.only(&["Delimiter"])?;
                    // The delimiter is base64, like RecordDeAggregation's; some of
                    // Firehose's examples write it with escapes ("\\n"), which Sluice
                    // reads when the value is not base64. Unset: a newline.
                    let delimiter = params.get("Delimiter").map_or_else(
                        || b"\n".to_vec(),
                        |text| base64(text, "Delimiter").unwrap_or_else(|_| unescape(text)),
                    );
                    chain.append_delimiter = Some(delimiter);
                }
                other => return Err(format!("Processor type {other} is not supported.")),
            }
        }
        if chain.message_extraction && !chain.decompression {
            return Err("CloudWatchLogProcessing requires the Decompression processor.".into());
        }
        Ok(Some(chain))
    }
}

/// A processor's parameters by name.
struct Parameters<'a> {
    kind: &'a str,
    values: Vec<(&'a str, &'a str)>,
}

impl<'a> Parameters<'a> {
    fn read(kind: &'a str, processor: &'a Value) -> Result<Parameters<'a>, String> {
        let mut values = Vec::new();
        for parameter in processor.get("Parameters").and_then(Value::as_array).into_iter().flatten() {
            let name = parameter.get("ParameterName").and_then(Value::as_str).unwrap_or("");
            let value = parameter.get("ParameterValue").and_then(Value::as_str).unwrap_or("");
            if values.iter().any(|(n, _)| *n == name) {
                return Err(format!("Parameter {name} appears more than once for processor {kind}."));
            }
            values.push((name, value));
        }
        Ok(Parameters { kind, values })
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.values.iter().find(|(name, _)| !allowed.contains(name)) {
            Some((name, _)) => Err(format!("Parameter {name} is not supported for processor type {}.", self.kind)),
            None => Ok(()),
        }
    }

    fn number(&self, name: &str, min: f64, max: f64, default: f64) -> Result<f64, String> {
        let Some(text) = self.get(name) else { return Ok(default) };
        match text.parse::<f64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("{name} must be a number between {min} and {max}, got {text:?}.")),
        }
    }
}

fn base64(text: &str, name: &str) -> Result<Vec<u8>, String> {
    match base64_simd::STANDARD.decode_to_vec(text) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(format!("{name} must be a non-empty base64 string.")),
    }
}

/// `\n`, `\r`, `\t` and `\\` as escapes; everything else as written.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let c = match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some('\\') => '\\',
                Some(other) => {
                    out.push(b'\\');
                    other
                }
                None => '\\',
            },
            (c, false) => c,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chain(processors: Value, dynamic_partitioning: bool) -> Result<Option<ProcessingChain>, String> {
        let config = json!({"ProcessingConfiguration": {"Enabled": true, "Processors": processors}});
        ProcessingChain::from_config(config.as_object().unwrap(), dynamic_partitioning)
    }

    fn processor(kind: &str, params: &[(&str, &str)]) -> Value {
        let params: Vec<Value> = params.iter().map(|(n, v)| json!({"ParameterName": n, "ParameterValue": v})).collect();
        json!({"Type": kind, "Parameters": params})
    }

    #[test]
    fn reads_every_processor_with_defaults() {
        let c = chain(
            json!([
                processor("RecordDeAggregation", &[("SubRecordType", "DELIMITED"), ("Delimiter", "IyMjIw==")]),
                processor("Decompression", &[("CompressionFormat", "GZIP")]),
                processor("CloudWatchLogProcessing", &[("DataMessageExtraction", "true")]),
                processor("Lambda", &[("LambdaArn", "arn:aws:lambda:us-east-1:000000000000:function:f")]),
                processor("AppendDelimiterToRecord", &[]),
            ]),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.deaggregation.unwrap().sub_records, Some(SubRecords::Delimited(b"####".to_vec())));
        assert!(c.decompression && c.message_extraction);
        let lambda = c.lambda.unwrap();
        assert_eq!((lambda.retries_max, lambda.buffer_bytes_max, lambda.buffer_interval_s), (3, 1 << 20, 60));
        assert_eq!(c.append_delimiter.as_deref(), Some(&b"\n"[..]));
        let custom = chain(json!([processor("AppendDelimiterToRecord", &[("Delimiter", "\\r\\n")])]), false);
        assert_eq!(custom.unwrap().unwrap().append_delimiter.as_deref(), Some(&b"\r\n"[..]));
        let base64 = chain(json!([processor("AppendDelimiterToRecord", &[("Delimiter", "LS0K")])]), false);
        assert_eq!(base64.unwrap().unwrap().append_delimiter.as_deref(), Some(&b"--\n"[..]));
    }

    #[test]
    fn disabled_or_empty_is_no_chain() {
        let off = json!({"ProcessingConfiguration": {"Enabled": false,
            "Processors": [processor("AppendDelimiterToRecord", &[])]}});
        assert_eq!(ProcessingChain::from_config(off.as_object().unwrap(), false), Ok(None));
        assert_eq!(chain(json!([]), false), Ok(None));
        assert_eq!(ProcessingChain::from_config(&Map::new(), false), Ok(None));
    }

    #[test]
    fn rule_breakers_are_refused() {
        let cases = [
            json!([processor("Lambda", &[])]),
            json!([processor("Lambda", &[("LambdaArn", "f"), ("BufferSizeInMBs", "4")])]),
            json!([processor("Lambda", &[("LambdaArn", "f"), ("BufferIntervalInSeconds", "30")])]),
            json!([processor("Lambda", &[("LambdaArn", "f"), ("NumberOfRetries", "-1")])]),
            json!([processor("Lambda", &[("LambdaArn", "f"), ("SubRecordType", "JSON")])]),
            json!([processor("Lambda", &[("LambdaArn", "f"), ("LambdaArn", "g")])]),
            json!([processor("AppendDelimiterToRecord", &[]), processor("AppendDelimiterToRecord", &[])]),
            json!([processor("RecordDeAggregation", &[("SubRecordType", "DELIMITED")])]),
            json!([processor("RecordDeAggregation", &[("SubRecordType", "DELIMITED"), ("Delimiter", "%%")])]),
            json!([processor("RecordDeAggregation", &[("SubRecordType", "CSV")])]),
            json!([processor("Decompression", &[("CompressionFormat", "ZIP")])]),
            json!([processor("CloudWatchLogProcessing", &[("DataMessageExtraction", "true")])]),
            json!([processor(
                "MetadataExtraction",
                &[("MetadataExtractionQuery", "{a:.a}"), ("JsonParsingEngine", "JQ-1.6")]
            )]),
        ];
        for case in cases {
            assert!(chain(case.clone(), false).is_err(), "accepted: {case}");
        }
        let jq = json!([processor(
            "MetadataExtraction",
            &[("MetadataExtractionQuery", "{a:.a}"), ("JsonParsingEngine", "JQ-1.6")]
        )]);
        assert_eq!(chain(jq, true).unwrap().unwrap().metadata_query.as_deref(), Some("{a:.a}"));
    }
}
