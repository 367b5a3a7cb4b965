//! The path both puts share: find the stream, decide encryption, append to the log
//! and wait for durability. Nothing here answers the client before the log has
//! confirmed the records are on disk.

use std::sync::Arc;

use sluice_protocol::{ApiError, ErrorCode};

use super::{kms_error, log_failure, AppState, RequestContext};
use crate::catalog::StreamRecord;
use crate::log::{Appended, Encryption, LogError};

/// What a put stored.
pub(super) struct Ingested {
    /// The stream.
    pub(super) stream: Arc<StreamRecord>,
    /// The stored records' sequence range; `None` when all were throttled.
    pub(super) appended: Option<Appended>,
    /// Records refused by the stream's throughput limits (the last ones).
    pub(super) n_throttled: usize,
    /// Bytes of the stored records.
    pub(super) n_bytes: u64,
}

/// Firehose's message for a throttled put or record.
pub(super) const SLOW_DOWN: &str = "Slow down.";

/// Appends `records` to stream `name`; resolves once they are durable. With
/// `partial`, the records over the stream's throughput limits are left out (and
/// counted) instead of refusing the put.
pub(super) async fn ingest(
    state: &AppState,
    ctx: &RequestContext,
    name: &str,
    mut records: Vec<Vec<u8>>,
    partial: bool,
) -> Result<Ingested, ApiError> {
    let stream = match state.catalog.get(&ctx.region, name) {
        Some(stream) => stream,
        None => {
            // Cluster mode: the stream may have been created through another node a
            // moment ago; a put right after a create must not hear "not found" only
            // because this node's view lags (one request to JetStream, on misses only).
            state.catalog.catch_up().await;
            state.stream(ctx, name)?
        }
    };
    if stream.reads_kinesis() {
        return Err(not_permitted_on_kinesis_source());
    }
    let status = stream.status(ctx.now_ms);
    if status != "ACTIVE" {
        let account = &state.config.account_id;
        let message = format!("Firehose {name} under account {account} is not ACTIVE (status {status}).");
        return Err(ApiError::new(ErrorCode::ResourceInUseException, message));
    }
    check_source(state, ctx, &stream)?;
    let slow_down = || ApiError::new(ErrorCode::ServiceUnavailableException, SLOW_DOWN);
    let n_admitted = match state.throttle.admit(stream.id, &stream.name, &records, partial) {
        Some(n) if n > 0 || (partial && !records.is_empty()) => n,
        _ => {
            state.metrics.stream(stream.id, name).throttled_records.increment(records.len() as u64);
            return Err(slow_down());
        }
    };
    let n_throttled = records.len() - n_admitted;
    if n_throttled > 0 {
        state.metrics.stream(stream.id, name).throttled_records.increment(n_throttled as u64);
        records.truncate(n_admitted);
    }
    let n_bytes: usize = records.iter().map(Vec::len).sum();
    if records.is_empty() {
        return Ok(Ingested { stream, appended: None, n_throttled, n_bytes: 0 });
    }
    check_buffer_room(state, &stream, n_bytes)?;
    let encryption = match stream.encryption.key_ref() {
        Some(key_ref) => {
            state.keys.check(&key_ref).map_err(|reason| kms_error(&key_ref, &reason))?;
            Encryption::Key(key_ref)
        }
        None => Encryption::None,
    };
    match state.log.append(stream.id, records, encryption).await {
        Ok(appended) => {
            state.disk.written();
            Ok(Ingested { stream, appended: Some(appended), n_throttled, n_bytes: n_bytes as u64 })
        }
        Err(e @ LogError::NoSpace(_)) => {
            state.disk.full(ctx.now_ms);
            Err(log_failure(e))
        }
        // Deleted between the lookup and the append.
        Err(LogError::UnknownStream(_)) => Err(ApiError::stream_not_found(name, &state.config.account_id)),
        Err(e) => Err(log_failure(e)),
    }
}

/// A stream that decompresses CloudWatch Logs subscription data takes puts only
/// from CloudWatch Logs, as on Firehose. Sluice recognises that source by the
/// access key id the request is signed with (`[sources]
/// cloudwatch_logs_access_key_ids`).
fn check_source(state: &AppState, ctx: &RequestContext, stream: &StreamRecord) -> Result<(), ApiError> {
    if !stream.destination.processing().is_some_and(|chain| chain.decompression) {
        return Ok(());
    }
    let allowed = &state.config.cloudwatch_logs_access_key_ids;
    if ctx.access_key_id.as_ref().is_some_and(|id| allowed.contains(id)) {
        return Ok(());
    }
    let message = format!(
        "Put to Firehose failed for AccountId: {}, FirehoseName: {} because the request is not originating from allowed source types.",
        state.config.account_id, stream.name
    );
    Err(ApiError::new(ErrorCode::InvalidSourceException, message))
}

/// Firehose's answer to a put (or an encryption change) on a stream that reads a
/// Kinesis data stream.
pub(super) fn not_permitted_on_kinesis_source() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidArgumentException,
        "This operation is not permitted on KinesisStreamAsSource delivery stream type.",
    )
}

/// Back-pressure: refuses a put that would take the stream's (or Sluice's) held,
/// undelivered bytes past the configured limit. Acknowledged data is never evicted
/// to make room; the producer retries (SDKs retry 503) once delivery catches up.
fn check_buffer_room(state: &AppState, stream: &StreamRecord, n_bytes: usize) -> Result<(), ApiError> {
    let held = state.log.undelivered_bytes(stream.id).unwrap_or(0);
    let held_total = state.log.undelivered_bytes_total();
    let config = &state.config;
    if held + n_bytes as u64 > config.buffer_bytes_per_stream_max
        || held_total + n_bytes as u64 > config.buffer_bytes_max
    {
        let message = format!(
            "Firehose {} is holding {held} bytes not yet delivered (limits: {} per stream, {} in all); try again later.",
            stream.name, config.buffer_bytes_per_stream_max, config.buffer_bytes_max
        );
        return Err(ApiError::new(ErrorCode::ServiceUnavailableException, message));
    }
    Ok(())
}

/// An opaque, stable record id that names the stream's log and the record's
/// sequence number in it: 16 hex digits each.
pub(super) fn record_id(stream_id: u64, seq: u64) -> String {
    // Written by hand: `format!("{:016x}")` showed up in PutRecord profiles.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, value) in [stream_id, seq].into_iter().enumerate() {
        for nibble in 0..16 {
            out[i * 16 + nibble] = HEX[((value >> (60 - 4 * nibble)) & 0xf) as usize];
        }
    }
    String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    #[test]
    fn record_ids_are_two_padded_hex_numbers() {
        assert_eq!(super::record_id(1, 0xabc), "00000000000000010000000000000abc");
        assert_eq!(super::record_id(u64::MAX, 0), format!("{:016x}{:016x}", u64::MAX, 0));
    }
}
