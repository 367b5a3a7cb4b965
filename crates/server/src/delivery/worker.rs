//! One stream's delivery loop: read the log from the checkpoint, buffer until
//! `SizeInMBs` or `IntervalInSeconds` (whichever comes first, measured from the
//! oldest buffered record), then: record the batch's intent, upload, acknowledge.
//! After a crash the recorded intent is delivered again, identically, under the same
//! key, so S3 never holds a record twice.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_protocol::destination::S3Settings;
use tokio::sync::watch;

use super::encode::Compression;
use super::key::{object_key, BatchIdentity};
use super::store::{LocalBuckets, S3Buckets, Store};
use crate::api::{now_ms, AppState};
use crate::catalog::StreamRecord;
use crate::log::{LogCursor, StoredRecord};

/// The batch being delivered, as kept with the log's checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    first_seq: u64,
    last_seq: u64,
    bucket: String,
    key: String,
    compression: String,
    /// Where the batch's error records go if it outlives the retention period.
    #[serde(default)]
    error_key: Option<String>,
}

/// The `!{firehose:error-output-type}` of records that outlived the retention period
/// (Firehose drops those; Sluice writes them under the error prefix when it can).
const RETENTION_EXPIRED: &str = "retention-expired";

/// Records read per call to the log.
const READ_RECORDS_MAX: usize = 10_000;
/// How often an idle worker re-reads its stream's definition.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Retry delays: exponential from 1 s, capped, with ±20% jitter.
const RETRY_DELAY_MIN: Duration = Duration::from_secs(1);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);

pub(super) async fn run(state: Arc<AppState>, stream_id: u64, mut shutdown: watch::Receiver<bool>) {
    let store = match &state.config.s3_endpoint {
        Some(endpoint) => Store::S3(S3Buckets::new(endpoint, &state.config.s3_region)),
        None => Store::Local(LocalBuckets::new(state.config.data_dir.join("buckets"))),
    };
    if let Ok(Some(bytes)) = state.log.intent(stream_id) {
        match serde_json::from_slice::<Intent>(&bytes) {
            Ok(intent) => {
                if !redo(&state, &store, stream_id, intent, &mut shutdown).await {
                    return;
                }
            }
            Err(error) => {
                tracing::error!(stream_id, %error, "Unreadable delivery intent; delivering from the checkpoint.")
            }
        }
    }
    let mut cursor = match state.log.cursor(stream_id, 0) {
        Ok(cursor) => cursor,
        Err(error) => {
            tracing::error!(stream_id, %error, "Cannot read the stream's log; its delivery stops.");
            return;
        }
    };
    let mut buffer: Vec<StoredRecord> = Vec::new();
    let mut buffer_bytes = 0u64;
    loop {
        let Some(stream) = state.catalog.get_by_id(stream_id) else { return };
        let stopping = *shutdown.borrow();
        let Some(settings) = stream.destination.s3_settings() else {
            // HTTP endpoint delivery comes with issue 4: records wait in the log.
            if stopping || wait(&mut shutdown, IDLE_POLL).await {
                return;
            }
            continue;
        };
        let size_max = settings.buffer_mib << 20;
        if buffer_bytes < size_max {
            match cursor.read(READ_RECORDS_MAX, (size_max - buffer_bytes) as usize).await {
                Ok(records) => {
                    buffer_bytes += records.iter().map(|r| r.data.len() as u64).sum::<u64>();
                    buffer.extend(records);
                }
                Err(error) => {
                    tracing::error!(stream = %stream.name, %error, "Reading the log failed; retrying.");
                    if wait(&mut shutdown, RETRY_DELAY_MIN).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let oldest_ms = buffer.first().map(|r| r.arrival_ms);
        state.metrics.oldest_undelivered(stream_id, oldest_ms);
        let deadline_ms = oldest_ms.map(|t| t + settings.buffer_interval_s * 1000);
        let due = deadline_ms.is_some_and(|d| buffer_bytes >= size_max || now_ms() >= d || stopping);
        if due {
            let batch = std::mem::take(&mut buffer);
            buffer_bytes = 0;
            if !deliver(&state, &store, &stream, &settings, batch, &mut shutdown).await {
                return;
            }
            continue;
        }
        if stopping {
            return;
        }
        let pause = deadline_ms.map(|d| Duration::from_millis(d.saturating_sub(now_ms()))).unwrap_or(IDLE_POLL);
        tokio::select! {
            () = cursor.wait() => {}
            () = tokio::time::sleep(pause.min(IDLE_POLL)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A batch older than the retention period is given up: its records are written,
/// if the store takes them, under the error prefix as Firehose's error records
/// (one JSON document per line), and always counted and logged, never dropped
/// silently.
async fn expire(
    state: &AppState,
    store: &Store,
    stream_id: u64,
    intent: &Intent,
    batch: &[StoredRecord],
    attempt: u32,
    error: &str,
) {
    let error_code = if error.contains("NoSuchBucket") { "S3.NoSuchBucket" } else { "S3.DeliveryFailed" };
    let ended = now_ms();
    let mut lines = Vec::new();
    for record in batch {
        let line = serde_json::json!({
            "attemptsMade": attempt,
            "arrivalTimestamp": record.arrival_ms,
            "errorCode": error_code,
            "errorMessage": error,
            "attemptEndingTimestamp": ended,
            "rawData": base64_simd::STANDARD.encode_to_string(&record.data),
        });
        lines.extend_from_slice(line.to_string().as_bytes());
        lines.push(b'\n');
    }
    let written = match &intent.error_key {
        Some(key) => store.put(&intent.bucket, key, bytes::Bytes::from(lines)).await.is_ok(),
        None => false,
    };
    state.metrics.records_expired(stream_id, batch.len() as u64);
    tracing::error!(
        stream_id,
        n_records = batch.len(),
        bucket = %intent.bucket,
        error_key = intent.error_key.as_deref().unwrap_or(""),
        written_to_error_prefix = written,
        %error,
        "Records outlived the retention period without being delivered."
    );
}

/// Resolves `true` if shutdown was requested while waiting.
async fn wait(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Decides, records and delivers one batch. `false` if it stopped for shutdown
/// before the batch was delivered (its intent stays, to be redone at the next start).
async fn deliver(
    state: &AppState,
    store: &Store,
    stream: &StreamRecord,
    settings: &S3Settings,
    batch: Vec<StoredRecord>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let (first, last) = (&batch[0], batch.last().expect("batches are not empty"));
    let identity = BatchIdentity {
        stream_name: &stream.name,
        stream_id: stream.id,
        version: stream.version_id,
        first_seq: first.seq,
        oldest_arrival_ms: first.arrival_ms,
    };
    let key = loop {
        match object_key(settings, &identity, None) {
            Ok(key) => break key,
            Err(error) => {
                tracing::error!(stream = %stream.name, %error, "Cannot build the object key; retrying.");
                if wait(shutdown, RETRY_DELAY_MAX).await {
                    return false;
                }
            }
        }
    };
    let intent = Intent {
        first_seq: first.seq,
        last_seq: last.seq,
        bucket: settings.bucket.clone(),
        key,
        compression: settings.compression.clone(),
        error_key: object_key(settings, &identity, Some(RETENTION_EXPIRED)).ok(),
    };
    let bytes = serde_json::to_vec(&intent).expect("intents serialise");
    if let Err(error) = state.log.record_intent(stream.id, bytes).await {
        tracing::error!(stream = %stream.name, %error, "Recording the batch failed; it will be decided again.");
        return !wait(shutdown, RETRY_DELAY_MIN).await;
    }
    upload(state, store, stream.id, &intent, &batch, shutdown).await
}

/// Delivers the batch an interrupted run recorded, exactly as recorded.
async fn redo(
    state: &AppState,
    store: &Store,
    stream_id: u64,
    intent: Intent,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut cursor: Box<dyn LogCursor> = match state.log.cursor(stream_id, intent.first_seq) {
        Ok(cursor) => cursor,
        Err(_) => return false,
    };
    let mut batch = Vec::new();
    while batch.last().is_none_or(|r: &StoredRecord| r.seq < intent.last_seq) {
        match cursor.read(READ_RECORDS_MAX, usize::MAX).await {
            Ok(records) if records.is_empty() => break,
            Ok(records) => batch.extend(records.into_iter().filter(|r| r.seq <= intent.last_seq)),
            Err(error) => {
                tracing::error!(stream_id, %error, "Reading an interrupted batch failed; retrying.");
                if wait(shutdown, RETRY_DELAY_MIN).await {
                    return false;
                }
            }
        }
    }
    tracing::info!(stream_id, key = %intent.key, n_records = batch.len(), "Delivering a batch interrupted by a restart again.");
    upload(state, store, stream_id, &intent, &batch, shutdown).await
}

/// Uploads until it succeeds (then acknowledges) or shutdown is requested.
async fn upload(
    state: &AppState,
    store: &Store,
    stream_id: u64,
    intent: &Intent,
    batch: &[StoredRecord],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let compression = Compression::from_api(&intent.compression).unwrap_or(Compression::Uncompressed);
    let n_bytes: usize = batch.iter().map(|r| r.data.len()).sum();
    let mut data = Vec::with_capacity(n_bytes);
    for record in batch {
        data.extend_from_slice(&record.data);
    }
    let entry = intent.key.rsplit('/').next().unwrap_or("").trim_end_matches(".zip").to_string();
    let body = bytes::Bytes::from(compression.encode(data, &entry));
    let mut delay = RETRY_DELAY_MIN;
    let mut attempt = 0u32;
    loop {
        if state.catalog.get_by_id(stream_id).is_none() {
            // Deleted while retrying: its records went with it.
            tracing::info!(stream_id, "Stream deleted; its delivery stops.");
            return false;
        }
        attempt += 1;
        state.metrics.oldest_undelivered(stream_id, batch.first().map(|r| r.arrival_ms));
        let age_ms = now_ms().saturating_sub(batch.first().map_or(0, |r| r.arrival_ms));
        let result = store.put(&intent.bucket, &intent.key, body.clone()).await;
        state.metrics.delivery_to_s3(stream_id, result.is_ok(), batch.len() as u64, n_bytes as u64);
        match result {
            Ok(_) => match state.log.acknowledge(stream_id, intent.last_seq).await {
                Ok(()) => return true,
                Err(error) => tracing::error!(stream_id, %error, "Acknowledging a delivered batch failed; retrying."),
            },
            Err(error) => {
                tracing::warn!(stream_id, bucket = %intent.bucket, key = %intent.key, attempt, %error, "Delivery to S3 failed; retrying.");
                if age_ms >= state.config.retention_ms {
                    expire(state, store, stream_id, intent, batch, attempt, &error).await;
                    match state.log.acknowledge(stream_id, intent.last_seq).await {
                        Ok(()) => return true,
                        Err(error) => {
                            tracing::error!(stream_id, %error, "Acknowledging an expired batch failed; retrying.")
                        }
                    }
                }
            }
        }
        if *shutdown.borrow() {
            return false;
        }
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        if wait(shutdown, delay.mul_f64(jitter)).await {
            return false;
        }
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
}
