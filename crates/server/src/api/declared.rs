//! Declared streams (`--streams FILE`, `streams_file`): buckets and delivery
//! streams that exist as soon as the server answers `/health`, so a compose file or
//! a CI job needs no init script. Applied at start, before the server listens:
//! each stream is parsed as the CreateDeliveryStream request it is (the same
//! validation as the API), created when missing, and brought to its declaration
//! when it differs (destination, tags, encryption), keeping its undelivered records.
//!
//! The file: `{"buckets": ["NAME", ...], "streams": [<CreateDeliveryStream request>, ...]}`,
//! each request with an optional `Region` (the configured region otherwise).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sluice_protocol::dto::{
    CreateDeliveryStreamInput, StartDeliveryStreamEncryptionInput, StopDeliveryStreamEncryptionInput,
};
use sluice_protocol::{ApiError, ErrorCode, Operation, ParseOptions};

use super::{now_ms, AppState, RequestContext};

/// Buckets and streams a declaration file asks for.
#[derive(Debug)]
pub struct Declaration {
    /// Local buckets to create.
    pub buckets: Vec<String>,
    /// Each stream's region and its create request.
    pub streams: Vec<(Option<String>, CreateDeliveryStreamInput)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeclaration {
    #[serde(default)]
    buckets: Vec<String>,
    #[serde(default)]
    streams: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Reads and checks a declaration file; the error says which entry is wrong and why.
pub fn load(path: &Path, options: &ParseOptions) -> Result<Declaration, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw: RawDeclaration = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for bucket in &raw.buckets {
        if !sluice_s3api::store::valid_bucket_name(bucket) {
            return Err(format!("{}: {bucket:?} is not a valid bucket name", path.display()));
        }
    }
    let mut streams = Vec::new();
    for (i, mut request) in raw.streams.into_iter().enumerate() {
        let region = match request.remove("Region") {
            None => None,
            Some(serde_json::Value::String(region)) => Some(region),
            Some(_) => return Err(format!("{}: streams[{i}].Region must be a string", path.display())),
        };
        let body = serde_json::to_vec(&request).expect("a JSON object serialises");
        let target = Some("Firehose_20150804.CreateDeliveryStream");
        match Operation::parse_with(target, &body, options) {
            Ok(Operation::CreateDeliveryStream(input)) => streams.push((region, input)),
            Ok(_) => unreachable!("parsed as the operation its target names"),
            Err(e) => return Err(format!("{}: streams[{i}]: {}: {}", path.display(), e.code.as_str(), e.message)),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (region, input) in &streams {
        if !seen.insert((region, &input.name)) {
            return Err(format!("{}: stream {} is declared twice", path.display(), input.name));
        }
    }
    Ok(Declaration { buckets: raw.buckets, streams })
}

/// Makes the declared buckets and streams exist as declared. Streams not in the
/// file are left alone (they may have been created through the API).
pub async fn apply(state: &AppState, declaration: &Declaration, buckets_root: Option<&Path>) -> Result<(), String> {
    for bucket in &declaration.buckets {
        // A bucket on an S3-compatible service is that service's to make.
        if state.config.s3.target(bucket).endpoint.is_some() {
            tracing::info!(%bucket, "A declared bucket is on an S3-compatible service: not created here.");
            continue;
        }
        let Some(root) = buckets_root else { continue };
        let dir = root.join(bucket);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating bucket {bucket} at {}: {e}", dir.display()))?;
    }
    for (region, input) in &declaration.streams {
        let ctx = RequestContext {
            region: region.clone().unwrap_or_else(|| state.config.region.clone()),
            access_key_id: None,
            now_ms: now_ms(),
        };
        apply_stream(state, &ctx, input).await.map_err(|e| {
            format!("declared stream {} in {}: {}: {}", input.name, ctx.region, e.code.as_str(), e.message)
        })?;
    }
    Ok(())
}

fn describe_source(stream_type: &str, kinesis: Option<&sluice_protocol::dto::KinesisStreamSource>) -> String {
    match kinesis {
        Some(kinesis) => format!("{stream_type} from {}", kinesis.stream_arn),
        None => stream_type.to_string(),
    }
}

async fn apply_stream(
    state: &AppState,
    ctx: &RequestContext,
    input: &CreateDeliveryStreamInput,
) -> Result<(), ApiError> {
    // Another node of a cluster may be applying the same file: a create it won
    // leaves an existing stream to compare with, the second time round.
    for _ in 0..3 {
        state.catalog.catch_up().await;
        let Some(current) = state.catalog.get(&ctx.region, &input.name) else {
            match super::create_delivery_stream::create(state, ctx, input.clone(), 0).await {
                Ok(_) => {
                    tracing::info!(stream = %input.name, region = %ctx.region, "Created the declared stream.");
                    return Ok(());
                }
                Err(e) if e.code == ErrorCode::ResourceInUseException => continue,
                Err(e) => return Err(e),
            }
        };
        if current.stream_type != input.stream_type || current.kinesis_source != input.kinesis_source {
            // Firehose has no call that changes a stream's source either.
            return Err(ApiError::new(
                ErrorCode::InvalidArgumentException,
                format!(
                    "The declared source of {} ({}) differs from the existing stream's ({}); a stream's source cannot change: delete the stream to declare it anew.",
                    input.name,
                    describe_source(&input.stream_type, input.kinesis_source.as_ref()),
                    describe_source(&current.stream_type, current.kinesis_source.as_ref()),
                ),
            ));
        }
        let [destination] = &input.destinations[..] else {
            return Err(ApiError::new(
                ErrorCode::InvalidArgumentException,
                "Exactly one destination configuration is supported for a Firehose",
            ));
        };
        let tags: BTreeMap<String, Option<String>> =
            input.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect();
        let mut changed = Vec::new();
        if current.destination != *destination || current.tags != tags {
            destination.validate()?;
            super::check_queries(destination)?;
            super::check_buckets_shared(state, destination)?;
            let updated = state
                .update_stream(ctx, &input.name, |stream| {
                    if stream.destination != *destination {
                        stream.destination = destination.clone();
                        stream.version_id += 1;
                        stream.last_update_ms = Some(ctx.now_ms);
                    }
                    stream.tags = tags.clone();
                    Ok(())
                })
                .await;
            match updated {
                Ok(()) => changed.push(if current.destination != *destination { "destination" } else { "tags" }),
                Err(e) if e.code == ErrorCode::ConcurrentModificationException => continue,
                Err(e) => return Err(e),
            }
        }
        let declared_key = input.encryption.as_ref().map(|e| (e.key_type.clone(), e.key_arn.clone()));
        let current_key = current
            .encryption
            .enabled
            .then(|| (current.encryption.key_type.clone().unwrap_or_default(), current.encryption.key_arn.clone()));
        if declared_key != current_key {
            match &input.encryption {
                Some(encryption) => {
                    let start = StartDeliveryStreamEncryptionInput {
                        name: input.name.clone(),
                        encryption: Some(encryption.clone()),
                    };
                    super::start_delivery_stream_encryption::handle(state, ctx, start).await?;
                }
                None => {
                    let stop = StopDeliveryStreamEncryptionInput { name: input.name.clone() };
                    super::stop_delivery_stream_encryption::handle(state, ctx, stop).await?;
                }
            }
            changed.push("encryption");
        }
        if !changed.is_empty() {
            tracing::info!(stream = %input.name, region = %ctx.region, ?changed, "Brought the declared stream to its declaration; its undelivered records are kept.");
        }
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::ConcurrentModificationException,
        "changed concurrently three times while being applied",
    ))
}
