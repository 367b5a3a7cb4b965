//! StartDeliveryStreamEncryption: turns on (or re-keys) encryption at rest. Records
//! are written encrypted from this call on; the status reads `ENABLING` for the
//! configured transition time, then `ENABLED`.

use sluice_protocol::dto::{Empty, EncryptionInput, StartDeliveryStreamEncryptionInput};
use sluice_protocol::limits::ENCRYPTION_CHANGES_PER_DAY_MAX;
use sluice_protocol::{ApiError, ErrorCode};

use super::create_delivery_stream::check_encryption;
use super::{ok, AppState, Reply, RequestContext};
use crate::catalog::StreamRecord;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Checks that encryption can change now: the stream is ACTIVE, no change is in
/// progress, and fewer than 25 changes happened in the last 24 hours.
pub(super) fn check_can_change(
    state: &AppState,
    ctx: &RequestContext,
    stream: &StreamRecord,
) -> Result<Vec<u64>, ApiError> {
    if stream.reads_kinesis() {
        return Err(super::ingest::not_permitted_on_kinesis_source());
    }
    let status = stream.encryption.status(ctx.now_ms, state.config.transition_ms);
    if stream.status(ctx.now_ms) != "ACTIVE" || status.ends_with("ING") {
        let message = format!(
            "Firehose {} under account {} cannot change encryption while its status is {} and its encryption status is {status}.",
            stream.name,
            state.config.account_id,
            stream.status(ctx.now_ms)
        );
        return Err(ApiError::new(ErrorCode::ResourceInUseException, message));
    }
    let recent: Vec<u64> = stream.encryption.changes_ms.iter().copied().filter(|t| t + DAY_MS > ctx.now_ms).collect();
    if recent.len() >= ENCRYPTION_CHANGES_PER_DAY_MAX {
        let message = format!(
            "Firehose {} has reached the limit of {ENCRYPTION_CHANGES_PER_DAY_MAX} StartDeliveryStreamEncryption and StopDeliveryStreamEncryption calls in 24 hours.",
            stream.name
        );
        return Err(ApiError::new(ErrorCode::LimitExceededException, message));
    }
    Ok(recent)
}

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: StartDeliveryStreamEncryptionInput) -> Reply {
    let requested = input.encryption.unwrap_or(EncryptionInput { key_type: "AWS_OWNED_CMK".into(), key_arn: None });
    let (key_type, key_arn) = check_encryption(state, &requested)?;
    state
        .update_stream(ctx, &input.name, |stream| {
            let mut recent = check_can_change(state, ctx, stream)?;
            recent.push(ctx.now_ms);
            stream.encryption.enabled = true;
            stream.encryption.key_type = Some(key_type.clone());
            stream.encryption.key_arn = key_arn.clone();
            stream.encryption.changed_at_ms = ctx.now_ms;
            stream.encryption.changes_ms = recent;
            Ok(())
        })
        .await?;
    ok(&Empty {})
}
