//! CreateDeliveryStream: validates what Firehose validates beyond the model, creates
//! the stream's log, then records the stream in the catalog as `CREATING`.

use std::sync::Arc;

use sluice_protocol::dto::{CreateDeliveryStreamInput, CreateDeliveryStreamOutput, EncryptionInput};
use sluice_protocol::limits::STREAMS_PER_REGION_MAX;
use sluice_protocol::{ApiError, ErrorCode};

use super::{kms_error, log_failure, ok, AppState, Reply, RequestContext};
use crate::catalog::{count_in_region, EncryptionState, Lifecycle, StreamDefinition, StreamRecord};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgumentException, message)
}

/// Checks an encryption request and returns `(key_type, key_arn)`.
pub(super) fn check_encryption(
    state: &AppState,
    input: &EncryptionInput,
) -> Result<(String, Option<String>), ApiError> {
    match (input.key_type.as_str(), &input.key_arn) {
        ("AWS_OWNED_CMK", Some(_)) => Err(invalid("KeyARN must not be specified when KeyType is AWS_OWNED_CMK.")),
        ("AWS_OWNED_CMK", None) => Ok((input.key_type.clone(), None)),
        ("CUSTOMER_MANAGED_CMK", None) => {
            Err(invalid("KeyARN must be specified when KeyType is CUSTOMER_MANAGED_CMK."))
        }
        ("CUSTOMER_MANAGED_CMK", Some(arn)) => {
            state.keys.check(arn).map_err(|reason| kms_error(arn, &reason))?;
            Ok((input.key_type.clone(), Some(arn.clone())))
        }
        (other, _) => Err(invalid(format!("Unsupported KeyType {other}."))),
    }
}

/// The source: a direct put, or a Kinesis data stream (whose configuration
/// excludes the direct-put-only settings, as on Firehose).
fn check_source(input: &CreateDeliveryStreamInput) -> Result<(), ApiError> {
    match input.stream_type.as_str() {
        "DirectPut" => {
            if let Some(source) = input.other_sources.first() {
                return Err(invalid(format!("{source} is not supported for a DirectPut delivery stream.")));
            }
        }
        "KinesisStreamAsSource" => {
            if input.kinesis_source.is_none() {
                return Err(invalid(
                    "KinesisStreamSourceConfiguration is required for a KinesisStreamAsSource delivery stream.",
                ));
            }
            if let Some(source) = input.other_sources.iter().find(|s| **s != "KinesisStreamSourceConfiguration") {
                return Err(invalid(format!("{source} is not supported for a KinesisStreamAsSource delivery stream.")));
            }
            if input.throughput_hint_mbs.is_some() {
                return Err(invalid(
                    "DirectPutSourceConfiguration is not supported for a KinesisStreamAsSource delivery stream.",
                ));
            }
            if input.encryption.is_some() {
                return Err(invalid(
                    "DeliveryStreamEncryptionConfigurationInput is not supported for a KinesisStreamAsSource delivery stream; the Kinesis data stream's own encryption applies.",
                ));
            }
        }
        other => {
            return Err(invalid(format!(
                "Sluice does not support the source type {other}; DirectPut and KinesisStreamAsSource delivery streams can be created."
            )))
        }
    }
    Ok(())
}

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: CreateDeliveryStreamInput) -> Reply {
    let arn = create(state, ctx, input, state.config.transition_ms).await?;
    ok(&CreateDeliveryStreamOutput { arn })
}

/// Creates the stream, `CREATING` for `transition_ms` (declared streams are
/// `ACTIVE` at once); returns its ARN.
pub(super) async fn create(
    state: &AppState,
    ctx: &RequestContext,
    input: CreateDeliveryStreamInput,
    transition_ms: u64,
) -> Result<String, ApiError> {
    check_source(&input)?;
    let [destination] = &input.destinations[..] else {
        return Err(invalid("Exactly one destination configuration is supported for a Firehose"));
    };
    if !destination.kind.is_supported() {
        return Err(invalid(format!(
            "Sluice does not deliver to {} destinations ({}); supported: ExtendedS3, S3, HttpEndpoint, Iceberg.",
            destination.kind.name(),
            sluice_protocol::dto::destination_member(destination.kind)
        )));
    }
    destination.validate()?;
    super::check_queries(destination)?;
    super::check_buckets_shared(state, destination)?;
    super::check_conversion(state, destination, &ctx.region).await?;
    super::check_iceberg(state, destination).await?;
    let encryption = match &input.encryption {
        Some(requested) => {
            let (key_type, key_arn) = check_encryption(state, requested)?;
            EncryptionState {
                enabled: true,
                key_type: Some(key_type),
                key_arn,
                changed_at_ms: 0,
                changes_ms: Vec::new(),
            }
        }
        None => EncryptionState::default(),
    };
    let account = state.config.account_id.clone();
    let key = (ctx.region.clone(), input.name.clone());
    let arn = state.arn(&ctx.region, &input.name);
    let exists = || {
        ApiError::new(
            ErrorCode::ResourceInUseException,
            format!("Firehose {} under account {account} already exists.", input.name),
        )
    };
    let over_quota = || {
        ApiError::new(
            ErrorCode::LimitExceededException,
            format!("You have already consumed your firehose quota of {STREAMS_PER_REGION_MAX} hoses."),
        )
    };
    // Checked first against what this node knows, so that a create bound to fail
    // makes no log; checked again, authoritatively, when the catalog takes it.
    let snapshot = state.catalog.snapshot();
    if snapshot.streams.contains_key(&key) {
        return Err(exists());
    }
    if count_in_region(&snapshot, &ctx.region) >= STREAMS_PER_REGION_MAX {
        return Err(over_quota());
    }
    let mut record = StreamRecord {
        id: state.catalog.reserve_id().await?,
        region: ctx.region.clone(),
        name: input.name.clone(),
        stream_type: input.stream_type.clone(),
        kinesis_source: input.kinesis_source.clone(),
        created_ms: ctx.now_ms,
        active_at_ms: ctx.now_ms + transition_ms,
        last_update_ms: None,
        version_id: 1,
        destination_id: "destinationId-000000000001".into(),
        destination: destination.clone(),
        throughput_hint_mbs: input.throughput_hint_mbs,
        tags: input.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
        encryption,
        revision: 1,
    };
    // The log is made (with the definition marked `Creating`) before the catalog
    // names the stream; a crash in between leaves an empty log that start-up
    // recognises and removes. A refused or failed catalog change removes it here.
    let id = record.id;
    state.log.create_stream(id, StreamDefinition::encode(&record, Lifecycle::Creating)).await.map_err(log_failure)?;
    // `CREATING` lasts `transition_ms` from here: making a log (a replicated one in
    // cluster mode) may take longer than the window itself, and the caller should
    // still see the stream `CREATING` when the create returns.
    record.active_at_ms = crate::api::now_ms().max(ctx.now_ms) + transition_ms;
    let record = Arc::new(record);
    let created = state
        .update_catalog(|catalog| {
            if catalog.streams.contains_key(&key) {
                return Err(exists());
            }
            if count_in_region(catalog, &ctx.region) >= STREAMS_PER_REGION_MAX {
                return Err(over_quota());
            }
            catalog.next_stream_id = catalog.next_stream_id.max(id + 1);
            catalog.streams.insert(key.clone(), record.clone());
            Ok(record.clone())
        })
        .await;
    let record = match created {
        Ok(record) => record,
        Err(error) => {
            if let Err(undo) = state.log.delete_stream(id).await {
                tracing::warn!(log_id = id, error = %undo, "Could not remove the log of a refused create; start-up will.");
            }
            return Err(error);
        }
    };
    if let Err(error) = state.keep_definition(&record, Lifecycle::Active).await {
        // Start-up sees the catalog names the stream; the copy is fixed then.
        tracing::warn!(stream = %record.name, %error, "Could not mark the stream's definition as created.");
    }
    state.metrics.register_stream(&record);
    Ok(arn)
}
