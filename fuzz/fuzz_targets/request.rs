//! Fuzz target: the API edge's parsing and validation of a request (issue 5). The
//! first byte picks the `X-Amz-Target` operation (or an unknown one) and whether
//! http:// endpoints are allowed; the rest is the body. Parsing, destination
//! validation, describing, applying an update to a valid destination and compiling
//! a JQ query must answer `Ok` or an `ApiError`, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::{Operation, ParseOptions, OPERATION_NAMES, TARGET_PREFIX};

/// A valid stream to apply fuzzed updates to.
const BASE: &str = r#"{"DeliveryStreamName":"s","ExtendedS3DestinationConfiguration":{
    "RoleARN":"arn:aws:iam::000000000000:role/r","BucketARN":"arn:aws:s3:::b",
    "ProcessingConfiguration":{"Enabled":true,"Processors":[{"Type":"AppendDelimiterToRecord"}]}}}"#;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else { return };
    let options = ParseOptions { allow_http_endpoints: selector & 0x80 != 0 };
    let index = usize::from(selector & 0x7f);
    let target = OPERATION_NAMES
        .get(index)
        .map_or_else(|| format!("{TARGET_PREFIX}.Nope"), |op| format!("{TARGET_PREFIX}.{op}"));
    let Ok(operation) = Operation::parse_with(Some(&target), body, &options) else { return };
    assert_eq!(Some(operation.name()), OPERATION_NAMES.get(index).copied(), "parsed as another operation");
    let _ = operation.stream_name();
    match operation {
        Operation::CreateDeliveryStream(create) => {
            for destination in &create.destinations {
                let _ = destination.validate();
                let _ = destination.s3_settings();
                let _ = destination.http_settings();
                let _ = destination.backup_s3_settings();
                let _ = destination.describe("destinationId-000000000001");
                if let Some(query) = destination.processing().and_then(|chain| chain.metadata_query) {
                    let _ = sluice_processing::jq::check(&query);
                }
            }
        }
        Operation::UpdateDestination(update) => {
            let base = Operation::parse(Some(&format!("{TARGET_PREFIX}.CreateDeliveryStream")), BASE.as_bytes());
            let Ok(Operation::CreateDeliveryStream(base)) = base else { panic!("the base stream is valid") };
            for change in &update.updates {
                if let Ok(updated) = base.destinations[0].apply_with(change, &options) {
                    let _ = updated.validate();
                    let _ = updated.describe("destinationId-000000000001");
                }
            }
        }
        _ => {}
    }
});
