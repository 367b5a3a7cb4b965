//! One lane of a stream's delivery: the destination itself, or the S3 backup of the
//! source records (`S3BackupMode` `Enabled`), each with its own buffering, prefix
//! and compression. A lane reads the log from where it last delivered, counts what
//! it buffers until `SizeInMBs` or `IntervalInSeconds` (whichever comes first,
//! measured from the oldest buffered record), then decides the batch: its
//! boundaries and key are committed before the upload, and the upload reads the
//! records back from the log. After a crash the committed batch is delivered again,
//! identically, under the same key, so S3 never holds a record twice.
//!
//! Buffering holds counts, not records: memory holds only the batches being
//! uploaded, within [`super::BATCH_BYTES_IN_FLIGHT_MAX`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_protocol::destination::{Destination, HttpSettings, IcebergSettings, S3Settings};
use sluice_protocol::processing::ProcessingChain;
use tokio::sync::watch;

use super::convert;
use super::encode::Compression;
use super::http::{self, HttpFailure, REQUEST_RECORDS_MAX};
use super::key::{object_key, partition_key, BatchIdentity, PartitionKeys, DESTINATION_LANE};
use super::lambda::Route;
use super::process::{error_line, process, Failed, Processed, PARTITIONING_FAILED};
use super::progress::Intent;
use super::source::KinesisMetadata;
use super::worker::StreamProgress;
use super::Delivery;
use crate::catalog::StreamRecord;
use crate::log::{LogError, StoredRecord};
use sluice_kinesis::{Header, Positions};

/// The `!{firehose:error-output-type}` of records that outlived the retention period
/// (Firehose drops those; Sluice writes them under the error prefix when it can).
const RETENTION_EXPIRED: &str = "retention-expired";

/// Every error output type a batch of an S3 lane can produce; their keys are
/// decided with the batch, so a redone batch writes its error objects in place too.
const ERROR_OUTPUT_TYPES: [&str; 7] = [
    RETENTION_EXPIRED,
    "processing-failed",
    "decompression-failed",
    HTTP_ENDPOINT_FAILED,
    PARTITIONING_FAILED,
    convert::FORMAT_CONVERSION_FAILED,
    ICEBERG_FAILED,
];

/// The `!{firehose:error-output-type}` of records an Iceberg table did not take.
const ICEBERG_FAILED: &str = "iceberg-failed";

/// The `!{firehose:error-output-type}` of records an HTTP endpoint did not take.
const HTTP_ENDPOINT_FAILED: &str = "http-endpoint-failed";
/// HTTP endpoint retries: from 1 s, doubling to 120 s, ±15%, as Firehose.
const HTTP_RETRY_DELAY_MIN: Duration = Duration::from_secs(1);
const HTTP_RETRY_DELAY_MAX: Duration = Duration::from_secs(120);
const HTTP_RETRY_JITTER: f64 = 0.15;

/// Objects of one batch (partitions) stored at once.
const OBJECT_PUTS_IN_FLIGHT_MAX: usize = 8;

/// Records read per call to the log.
const READ_RECORDS_MAX: usize = 10_000;
/// How often an idle lane re-reads its stream's definition.
pub(super) const IDLE_POLL: Duration = Duration::from_secs(1);
/// Retry delays: exponential from 1 s, capped at 60 s, with ±20% jitter.
const RETRY_DELAY_MIN: Duration = Duration::from_secs(1);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);
const RETRY_JITTER: f64 = 0.2;

/// Where a lane delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum LaneKind {
    /// The stream's S3 or ExtendedS3 destination.
    Destination,
    /// `S3BackupConfiguration`, with `S3BackupMode` `Enabled`.
    Backup,
}

impl LaneKind {
    pub(super) const ALL: [LaneKind; 2] = [LaneKind::Destination, LaneKind::Backup];

    /// The lane's name in the progress state and in batch identities.
    pub(super) fn name(self) -> &'static str {
        match self {
            LaneKind::Destination => DESTINATION_LANE,
            LaneKind::Backup => "backup",
        }
    }

    /// Where the lane delivers for this destination; `None` if it has no such lane.
    pub(super) fn target(self, destination: &Destination) -> Option<Target> {
        match self {
            LaneKind::Destination => destination
                .s3_settings()
                .map(Target::S3)
                .or_else(|| destination.http_settings().map(|h| Target::Http(Box::new(h))))
                .or_else(|| destination.iceberg_settings().map(|i| Target::Iceberg(Box::new(i)))),
            LaneKind::Backup => destination.backup_s3_settings().map(Target::S3),
        }
    }

    /// The prefix of the lane's Firehose metrics, by what its destination is.
    fn metric(self, http: bool, iceberg: bool) -> &'static str {
        match self {
            LaneKind::Backup => "BackupToS3",
            LaneKind::Destination if http => "DeliveryToHttpEndpoint",
            LaneKind::Destination if iceberg => "DeliveryToIceberg",
            LaneKind::Destination => "DeliveryToS3",
        }
    }
}

/// What a lane delivers to.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// Objects in a bucket.
    S3(S3Settings),
    /// Requests to an HTTP endpoint; failed records go to its `S3Configuration`.
    Http(Box<HttpSettings>),
    /// Appends to an Iceberg table; failed records go to its `S3Configuration`.
    Iceberg(Box<IcebergSettings>),
}

impl Target {
    fn buffer_bytes_max(&self) -> u64 {
        match self {
            Target::S3(s3) => s3.buffer_mib << 20,
            Target::Http(http) => http.buffer_mib << 20,
            Target::Iceberg(iceberg) => iceberg.buffer_mib << 20,
        }
    }

    fn buffer_interval_s(&self) -> u64 {
        match self {
            Target::S3(s3) => s3.buffer_interval_s,
            Target::Http(http) => http.buffer_interval_s,
            Target::Iceberg(iceberg) => iceberg.buffer_interval_s,
        }
    }

    /// Where objects (for HTTP: error objects) are named and written.
    fn s3(&self) -> &S3Settings {
        match self {
            Target::S3(s3) => s3,
            Target::Http(http) => &http.s3,
            Target::Iceberg(iceberg) => &iceberg.s3,
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// Delays from `min`, doubling up to `max`, each varied by ±`jitter` (a fraction).
    pub(super) fn new(min: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff { next: min, max, jitter }
    }

    /// The delay before the next attempt; `unit` in [0, 1) picks where in the
    /// jitter range it falls.
    pub(super) fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.next.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * unit);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// What a lane has read and not yet put in a batch: counts, not records.
#[derive(Debug, Default)]
struct Buffered {
    first_seq: u64,
    last_seq: u64,
    oldest_arrival_ms: u64,
    bytes: u64,
    /// A Kinesis-sourced stream: the last record of each shard.
    source: Positions,
}

/// Resolves `true` if shutdown was requested while waiting.
pub(super) async fn wait(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

pub(super) async fn run(
    delivery: Arc<Delivery>,
    progress: Arc<StreamProgress>,
    kind: LaneKind,
    mut shutdown: watch::Receiver<bool>,
) {
    let stream_id = progress.stream_id;
    if let Some(intent) = progress.lane(kind.name()).await.batch {
        tracing::info!(stream_id, lane = kind.name(), key = %intent.key, "Delivering a batch decided before a restart.");
        if !deliver(&delivery, &progress, kind, &intent, &mut shutdown).await {
            return;
        }
    }
    let from = progress.lane(kind.name()).await.delivered_seq.map_or(0, |seq| seq + 1);
    let mut cursor = match delivery.state.log.cursor(stream_id, from) {
        Ok(cursor) => cursor,
        Err(error) => {
            tracing::error!(stream_id, %error, "Cannot read the stream's log; its delivery stops.");
            return;
        }
    };
    let mut buffered: Option<Buffered> = None;
    // Flushes (`/_sluice/flush`): a newer generation than the one served makes the
    // lane read to the end of its log and deliver what it buffers at once.
    let flushes = delivery.state.flushes.clone();
    flushes.started(stream_id, kind.name());
    let _registered = StopsOnDrop(flushes.clone(), stream_id, kind.name());
    let mut flush_generations = flushes.subscribe();
    let mut flushed = 0u64;
    loop {
        let Some(stream) = delivery.state.catalog.get_by_id(stream_id) else { return };
        let stopping = *shutdown.borrow();
        flush_generations.borrow_and_update();
        let flush_target = flushes.target(stream_id);
        let flushing = flush_target > flushed;
        // The lane is gone when the destination no longer has it; what it buffered
        // stays in the log, and the stream's worker releases its hold on it.
        let Some(target) = kind.target(&stream.destination) else { return };
        let metric = kind.metric(matches!(target, Target::Http(_)), matches!(target, Target::Iceberg(_)));
        let size_max = target.buffer_bytes_max();
        let bytes = buffered.as_ref().map_or(0, |b| b.bytes);
        // Whether the log has nothing more for this batch right now: when stopping,
        // the batch is cut only then (a backend may hand records over in several
        // reads), so that a shutdown does not split what one batch would hold.
        let mut drained = true;
        if bytes < size_max {
            match cursor.read(READ_RECORDS_MAX, (size_max - bytes) as usize).await {
                Ok(records) => {
                    drained = records.is_empty();
                    for record in &records {
                        // A Kinesis record counts with its own arrival and bytes.
                        let header = stream.reads_kinesis().then(|| Header::parse(&record.data).ok()).flatten();
                        let arrival_ms = header.map_or(record.arrival_ms, |h| h.arrival_ms);
                        let b = buffered.get_or_insert_with(|| Buffered {
                            first_seq: record.seq,
                            oldest_arrival_ms: arrival_ms,
                            ..Buffered::default()
                        });
                        b.last_seq = record.seq;
                        b.oldest_arrival_ms = b.oldest_arrival_ms.min(arrival_ms);
                        b.bytes += (record.data.len() - header.map_or(0, |h| h.data_offset)) as u64;
                        if let Some(header) = &header {
                            b.source.note(header);
                        }
                    }
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
        if drained && (stopping || flushing) {
            // About to act on "nothing more" (cut the batch for a shutdown, answer a
            // flush): make sure no record stored before now is still on its way to
            // this reader (a replicated log's reader learns of them a moment late;
            // CI saw a shutdown split what one batch holds).
            match cursor.caught_up().await {
                Ok(caught_up) => drained = caught_up,
                Err(error) => {
                    tracing::warn!(stream = %stream.name, %error, "Asking the log for its end failed.");
                    // A shutdown goes on (the records stay in the log); a flush waits.
                    drained = stopping;
                    if !stopping && wait(&mut shutdown, RETRY_DELAY_MIN).await {
                        return;
                    }
                }
            }
        }
        let metrics = &delivery.state.metrics;
        metrics.oldest_undelivered(stream_id, metric, buffered.as_ref().map(|b| b.oldest_arrival_ms));
        let interval_s = delivery
            .state
            .config
            .buffer_interval_s_max
            .map_or(target.buffer_interval_s(), |cap| target.buffer_interval_s().min(cap));
        let deadline_ms = buffered.as_ref().map(|b| b.oldest_arrival_ms + interval_s * 1000);
        let now_ms = delivery.clock.now_ms();
        let full = buffered.as_ref().is_some_and(|b| b.bytes >= size_max);
        if let Some(deadline_ms) = deadline_ms {
            if full || now_ms >= deadline_ms || ((stopping || flushing) && drained) {
                let batch = buffered.take().expect("a deadline means a buffered batch");
                let Some(intent) = decide(&delivery, &progress, &stream, &target, kind, batch, &mut shutdown).await
                else {
                    return;
                };
                if !deliver(&delivery, &progress, kind, &intent, &mut shutdown).await {
                    return;
                }
                continue;
            }
        }
        if flushing && drained && buffered.is_none() {
            // Everything stored before the flush was asked for is delivered.
            flushed = flush_target;
            flushes.flushed(stream_id, kind.name(), flush_target);
        }
        if stopping && drained {
            return;
        }
        if stopping || (flushing && !drained) {
            continue;
        }
        let pause = deadline_ms.map_or(IDLE_POLL, |d| Duration::from_millis(d.saturating_sub(now_ms)));
        tokio::select! {
            () = cursor.wait() => {}
            () = tokio::time::sleep(pause.min(IDLE_POLL)) => {}
            _ = shutdown.changed() => {}
            _ = flush_generations.changed() => {}
        }
    }
}

/// Takes a lane off the flush board when it stops, however it stops.
struct StopsOnDrop(Arc<super::flush::FlushBoard>, u64, &'static str);

impl Drop for StopsOnDrop {
    fn drop(&mut self) {
        self.0.stopped(self.1, self.2);
    }
}

/// Names the batch and commits it as the lane's batch in progress. `None` if
/// shutdown came first.
async fn decide(
    delivery: &Delivery,
    progress: &StreamProgress,
    stream: &StreamRecord,
    target: &Target,
    kind: LaneKind,
    batch: Buffered,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Intent> {
    let settings = target.s3();
    let identity = BatchIdentity {
        namespace: delivery.namespace,
        stream_name: &stream.name,
        stream_id: stream.id,
        version: stream.version_id,
        lane: kind.name(),
        first_seq: batch.first_seq,
        oldest_arrival_ms: batch.oldest_arrival_ms,
    };
    // An HTTP batch has a request id instead of a key: the same on every retry,
    // after a crash too, so the endpoint can tell a repeat.
    let http_request_id = matches!(target, Target::Http(_)).then(|| identity.uuid().hyphenated().to_string());
    // An Iceberg batch's snapshot carries an id, the same on every retry, so that
    // a redo after its commit appends nothing.
    let iceberg_batch_id = matches!(target, Target::Iceberg(_)).then(|| identity.uuid().hyphenated().to_string());
    // A partitioned batch's keys depend on its records' partition keys: they are
    // derived when it is uploaded (from the batch's identity, so the same on a retry).
    let partitioned = matches!(target, Target::S3(s3) if s3.dynamic_partitioning);
    let key = loop {
        if let Some(request_id) = http_request_id.as_ref().or(iceberg_batch_id.as_ref()) {
            break request_id.clone();
        }
        if partitioned {
            break String::new();
        }
        match object_key(settings, &identity, None) {
            Ok(key) => break key,
            Err(error) => {
                tracing::error!(stream = %stream.name, %error, "Cannot build the object key; retrying.");
                if wait(shutdown, RETRY_DELAY_MAX).await {
                    return None;
                }
            }
        }
    };
    let intent = Intent {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        bucket: settings.bucket.clone(),
        key,
        compression: settings.compression.clone(),
        error_key: None,
        error_keys: ERROR_OUTPUT_TYPES
            .iter()
            .filter_map(|t| object_key(settings, &identity, Some(t)).ok().map(|key| (t.to_string(), key)))
            .collect(),
        bytes: batch.bytes,
        http_request_id,
        iceberg_batch_id,
        partitioned,
        version: stream.version_id,
        oldest_arrival_ms: batch.oldest_arrival_ms,
        namespace: Some(delivery.namespace.hyphenated().to_string()),
        uploads: BTreeMap::new(),
        source: batch.source,
    };
    loop {
        match progress.update(kind.name(), |lane| lane.batch = Some(intent.clone())).await {
            Ok(()) => return Some(intent),
            Err(LogError::Fenced(_)) => return None,
            Err(error) => {
                tracing::error!(stream = %stream.name, %error, "Recording the batch failed; retrying.");
                if wait(shutdown, RETRY_DELAY_MIN).await {
                    return None;
                }
            }
        }
    }
}

/// The batch's records, read back from the log: all of them, or an error to retry
/// on. The batch was decided on records the log handed out, so a read that ends
/// early is the log (a JetStream replica behind its leader: the fault test saw
/// one hand a batch back short, which was then committed as delivered and its
/// missing records lost) not having them *yet*. Only once the batch is past the
/// retention period is what is left delivered, with the loss said loudly.
async fn read_batch(delivery: &Delivery, stream_id: u64, intent: &Intent) -> Result<ReadBack, LogError> {
    let mut cursor = delivery.state.log.cursor_range(stream_id, intent.first_seq, intent.last_seq)?;
    let mut batch: Vec<StoredRecord> = Vec::new();
    while batch.last().is_none_or(|r| r.seq < intent.last_seq) {
        let records = cursor.read(READ_RECORDS_MAX, usize::MAX).await?;
        if records.is_empty() {
            break;
        }
        batch.extend(records.into_iter().take_while(|r| r.seq <= intent.last_seq));
    }
    let kinesis = match delivery.state.catalog.get_by_id(stream_id).is_some_and(|s| s.reads_kinesis()) {
        true => super::source::unwrap_records(stream_id, &mut batch),
        false => Vec::new(),
    };
    let (first, last) = (batch.first().map(|r| r.seq), batch.last().map(|r| r.seq));
    if first == Some(intent.first_seq) && last == Some(intent.last_seq) {
        return Ok(ReadBack { records: batch, kinesis });
    }
    let age_ms = delivery.clock.now_ms().saturating_sub(intent.oldest_arrival_ms);
    if intent.oldest_arrival_ms == 0 || age_ms < delivery.state.config.retention_ms {
        return Err(LogError::Unavailable(format!(
            "the log handed back records {}..{} of the batch {}..{} ({} records); reading it again",
            first.unwrap_or(0),
            last.unwrap_or(0),
            intent.first_seq,
            intent.last_seq,
            batch.len()
        )));
    }
    tracing::error!(
        stream_id,
        intent.first_seq,
        intent.last_seq,
        read_first = first.unwrap_or(0),
        read_last = last.unwrap_or(0),
        n_read = batch.len(),
        "The log no longer holds all records of a decided batch past the retention period: records it acknowledged are lost; delivering what is left."
    );
    Ok(ReadBack { records: batch, kinesis })
}

/// A batch read back: its records, and for a Kinesis-sourced stream what Kinesis
/// said of each (aligned with them; empty otherwise).
pub(super) struct ReadBack {
    pub(super) records: Vec<StoredRecord>,
    pub(super) kinesis: Vec<KinesisMetadata>,
}

impl std::ops::Deref for ReadBack {
    type Target = Vec<StoredRecord>;

    fn deref(&self) -> &Vec<StoredRecord> {
        &self.records
    }
}

/// Delivers the lane's batch in progress (see [`deliver_s3`] and
/// [`deliver_http`]), then commits the lane's progress. `false` if it stopped for
/// shutdown or deletion first (the batch stays recorded, to be delivered after the
/// next start).
async fn deliver(
    delivery: &Delivery,
    progress: &StreamProgress,
    kind: LaneKind,
    intent: &Intent,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let stream_id = progress.stream_id;
    let metric = kind.metric(intent.http_request_id.is_some(), intent.iceberg_batch_id.is_some());
    let stored = match (&intent.http_request_id, &intent.iceberg_batch_id) {
        (Some(request_id), _) => deliver_http(delivery, progress, metric, intent, request_id, shutdown).await,
        (None, Some(batch_id)) => deliver_iceberg(delivery, progress, metric, intent, batch_id, shutdown).await,
        (None, None) => deliver_s3(delivery, progress, kind, metric, intent, shutdown).await,
    };
    if !stored {
        return false;
    }
    loop {
        let done = progress
            .update(kind.name(), |lane| {
                lane.batch = None;
                lane.delivered_seq = Some(intent.last_seq);
                lane.source.merge(&intent.source);
            })
            .await;
        match done {
            Ok(()) => {
                delivery.state.metrics.oldest_undelivered(stream_id, metric, None);
                return true;
            }
            Err(LogError::Fenced(_)) => return false,
            Err(error) => {
                tracing::error!(stream_id, %error, "Committing a delivered batch failed; retrying.");
                if wait(shutdown, RETRY_DELAY_MIN).await {
                    return false;
                }
            }
        }
    }
}

/// The processing chain of the stream's destination as configured now; the backup
/// keeps the source records.
fn chain_of(stream: &StreamRecord, kind: LaneKind) -> Option<ProcessingChain> {
    match kind {
        LaneKind::Destination => stream.destination.processing(),
        LaneKind::Backup => None,
    }
}

/// Writes the error objects of a processed batch; the first failure stops.
async fn put_errors(
    delivery: &Delivery,
    progress: &StreamProgress,
    kind: LaneKind,
    intent: &Intent,
    errors: BTreeMap<&'static str, Vec<u8>>,
) -> Result<(), String> {
    for (output_type, lines) in errors {
        let Some(key) = intent.error_key(output_type) else { continue };
        store_object(delivery, progress, kind, &intent.bucket, key, bytes::Bytes::from(lines)).await?;
    }
    Ok(())
}

/// Stores one object of the lane's batch; a multipart upload it starts is recorded
/// in the batch's progress first, so that [`abort_stale_uploads`] can abort it
/// if the attempt is cut short, by a crash too.
async fn store_object(
    delivery: &Delivery,
    progress: &StreamProgress,
    kind: LaneKind,
    bucket: &str,
    key: &str,
    body: bytes::Bytes,
) -> Result<(), String> {
    let record = |upload_id: String| async move {
        let recorded = progress
            .update(kind.name(), |lane| {
                if let Some(batch) = lane.batch.as_mut() {
                    batch.uploads.insert(key.to_string(), upload_id);
                }
            })
            .await;
        recorded.map_err(|e| format!("recording a multipart upload: {e}"))
    };
    delivery.store.put_recorded(bucket, key, body, record).await
}

/// Aborts the multipart uploads earlier attempts at the lane's batch recorded (an
/// attempt that failed to abort its own, or one a crash interrupted), then forgets
/// them. Run before each attempt; nothing to do in the usual case.
async fn abort_stale_uploads(delivery: &Delivery, progress: &StreamProgress, kind: LaneKind) -> Result<(), String> {
    let Some(batch) = progress.lane(kind.name()).await.batch else { return Ok(()) };
    if batch.uploads.is_empty() {
        return Ok(());
    }
    for (key, upload_id) in &batch.uploads {
        delivery.store.abort_upload(&batch.bucket, key, upload_id).await?;
        tracing::info!(stream_id = progress.stream_id, bucket = %batch.bucket, %key, %upload_id, "Aborted the multipart upload of an interrupted attempt.");
    }
    let aborted = batch.uploads;
    let forgotten = progress
        .update(kind.name(), |lane| {
            if let Some(batch) = lane.batch.as_mut() {
                batch.uploads.retain(|key, id| aborted.get(key) != Some(id));
            }
        })
        .await;
    forgotten.map_err(|e| format!("forgetting aborted uploads: {e}"))
}

/// Uploads the batch to S3 until it is stored (or, past the retention period,
/// given up). Each attempt reads the records back from the log under the in-flight
/// memory budget, so a batch waiting for its bucket holds no memory. `false` if it
/// stopped for shutdown or deletion first.
async fn deliver_s3(
    delivery: &Delivery,
    progress: &StreamProgress,
    kind: LaneKind,
    metric: &'static str,
    intent: &Intent,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let stream_id = progress.stream_id;
    let state = &delivery.state;
    let compression = Compression::from_api(&intent.compression).unwrap_or(Compression::Uncompressed);
    let mut backoff = Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX, RETRY_JITTER);
    let mut attempt = 0u32;
    loop {
        if state.catalog.get_by_id(stream_id).is_none() {
            // Deleted while retrying: its records went with it.
            tracing::info!(stream_id, "Stream deleted; its delivery stops.");
            return false;
        }
        // Another delivery of the stream took over: it redoes this batch.
        if progress.fenced() {
            return false;
        }
        attempt += 1;
        let permit = delivery.batch_kib_in_flight.acquire_many(permits(intent)).await.expect("never closed");
        // A bucket known to be missing fails the attempt before the batch is read,
        // unless the batch is old enough to expire (which needs its records).
        let age_ms = delivery.clock.now_ms().saturating_sub(intent.oldest_arrival_ms);
        let ready = match abort_stale_uploads(delivery, progress, kind).await {
            Ok(()) => delivery.store.check_bucket(&intent.bucket),
            Err(error) => Err(error),
        };
        let batch = match ready {
            Err(error) if intent.oldest_arrival_ms > 0 && age_ms < state.config.retention_ms => Err(error),
            _ => read_batch(delivery, stream_id, intent)
                .await
                .map_err(|e| format!("reading the batch from the log: {e}")),
        };
        let outcome: Result<(), String> = match batch {
            Err(error) => Err(error),
            Ok(batch) if batch.is_empty() => {
                // Cannot happen while lanes hold the log; said loudly if it does.
                tracing::error!(stream_id, key = %intent.key, intent.first_seq, intent.last_seq, "The batch's records are no longer in the log: records it acknowledged are lost.");
                return true;
            }
            Ok(mut batch) => 'attempt: {
                let oldest_ms = batch[0].arrival_ms;
                state.metrics.oldest_undelivered(stream_id, metric, Some(oldest_ms));
                let Some(stream) = state.catalog.get_by_id(stream_id) else { return false };
                let chain = chain_of(&stream, kind);
                // Set up for every attempt: a table at `LATEST` may have changed. A
                // table that cannot be had fails the attempt, to be retried.
                let conversion = match kind {
                    LaneKind::Destination => stream.destination.conversion(),
                    LaneKind::Backup => None,
                };
                let conversion = match conversion {
                    None => None,
                    Some(settings) => match crate::tables::setup(&state.config.glue, &settings, &stream.region).await {
                        Ok(conversion) => {
                            let account = &state.config.account_id;
                            let table = crate::tables::catalog_table(&settings.schema, account, &stream.region);
                            Some((Arc::new(conversion), table))
                        }
                        Err(error) => break 'attempt Err(error.to_string()),
                    },
                };
                let mut processed = process(delivery, &stream, chain.as_ref(), &mut batch, attempt).await;
                let (n_records, n_bytes) = (processed.records.len() as u64, processed.n_bytes());
                let mut result: Result<(), String> = Ok(());
                let groups = match processed.partitions.take() {
                    Some(partitions) => {
                        partition(delivery, &stream, kind, intent, &batch, &mut processed, partitions, attempt)
                    }
                    None => vec![(intent.key.clone(), (0..processed.records.len()).collect())],
                };
                let mut n_records = n_records - processed.n_failed_partitioning;
                let mut conversion_counts = None;
                let objects: Vec<(String, Vec<u8>)> = match conversion {
                    None => groups.into_iter().map(|(key, indices)| (key, processed.concatenated(&indices))).collect(),
                    Some((conversion, catalog_table)) => {
                        let input = convert::Input {
                            conversion,
                            groups,
                            records: std::mem::take(&mut processed.records),
                            arrivals_ms: processed.sources.iter().map(|&i| batch[i].arrival_ms).collect(),
                            catalog_table,
                            attempt,
                            now_ms: delivery.clock.now_ms(),
                        };
                        let converted = tokio::task::spawn_blocking(move || convert::convert(input)).await;
                        match converted.map_err(|e| e.to_string()).and_then(|c| c) {
                            Ok(converted) => {
                                n_records -= converted.failed.0;
                                conversion_counts = Some((converted.ok, converted.failed));
                                if !converted.errors.is_empty() {
                                    let lines = processed.errors.entry(convert::FORMAT_CONVERSION_FAILED).or_default();
                                    lines.extend_from_slice(&converted.errors);
                                }
                                converted.objects
                            }
                            Err(error) => {
                                result = Err(format!("converting the batch: {error}"));
                                Vec::new()
                            }
                        }
                    }
                };
                if result.is_ok() {
                    if let Err(error) =
                        put_errors(delivery, progress, kind, intent, std::mem::take(&mut processed.errors)).await
                    {
                        result = Err(error);
                    }
                }
                if result.is_ok() {
                    // A partitioned batch is many objects: they are stored a few at a
                    // time, each encoded on the blocking pool.
                    let puts = objects.into_iter().filter(|(_, body)| !body.is_empty() || n_records > 0).map(
                        |(key, body)| async move {
                            let entry = key.rsplit('/').next().unwrap_or("").trim_end_matches(".zip").to_string();
                            let body = tokio::task::spawn_blocking(move || compression.encode(body, &entry))
                                .await
                                .map_err(|e| e.to_string())?;
                            store_object(delivery, progress, kind, &intent.bucket, &key, bytes::Bytes::from(body)).await
                        },
                    );
                    let mut puts = futures_util::stream::iter(puts).buffer_unordered(OBJECT_PUTS_IN_FLIGHT_MAX);
                    while let Some(put) = puts.next().await {
                        if put.is_err() {
                            result = put;
                            break;
                        }
                    }
                }
                state.metrics.delivery(stream_id, metric, result.is_ok(), n_records, n_bytes);
                if result.is_ok() {
                    state.flushes.delivered(stream_id, kind.name(), n_records);
                }
                let age_ms = delivery.clock.now_ms().saturating_sub(oldest_ms);
                match result {
                    Ok(()) => {
                        state.metrics.processing(stream_id, &processed.stats);
                        if let Some((ok, failed)) = conversion_counts {
                            state.metrics.conversion(stream_id, ok, failed);
                        }
                        return true;
                    }
                    Err(error) if age_ms >= state.config.retention_ms => {
                        tracing::warn!(stream_id, bucket = %intent.bucket, key = %intent.key, attempt, %error, "Delivery to S3 failed past the retention period.");
                        // Processing may have taken the records' bytes: read them again.
                        drop((batch, processed));
                        match read_batch(delivery, stream_id, intent).await {
                            Ok(batch) => {
                                expire(delivery, stream_id, intent, &batch, attempt, &error).await;
                                return true;
                            }
                            Err(read_error) => Err(format!("reading the expired batch from the log: {read_error}")),
                        }
                    }
                    Err(error) => Err(error),
                }
            }
        };
        drop(permit);
        if let Err(error) = outcome {
            if error.contains("NoSuchBucket") {
                delivery.note_missing_bucket(stream_id, &intent.bucket);
            }
            delivery.state.flushes.failed(stream_id, kind.name(), &error);
            tracing::warn!(stream_id, lane = kind.name(), bucket = %intent.bucket, key = %intent.key, attempt, %error, "Delivery to S3 failed; retrying.");
        }
        if *shutdown.borrow() || wait(shutdown, backoff.next_delay(rand::random::<f64>())).await {
            return false;
        }
    }
}

/// Splits a batch's records into one object per partition (records with the same
/// evaluated prefix), keyed by [`partition_key`]: each object's key and the
/// indices of its records in `processed.records`. Records whose prefix cannot be
/// evaluated, or that come past the active-partition limit, go to the error prefix
/// (`partitioning-failed`).
#[allow(clippy::too_many_arguments, reason = "one call site; the pieces are all different")]
fn partition(
    delivery: &Delivery,
    stream: &StreamRecord,
    kind: LaneKind,
    intent: &Intent,
    batch: &[StoredRecord],
    processed: &mut Processed,
    partitions: Vec<PartitionKeys>,
    attempt: u32,
) -> Vec<(String, Vec<usize>)> {
    let Some(Target::S3(settings)) = kind.target(&stream.destination) else { return Vec::new() };
    let identity = BatchIdentity {
        namespace: intent.namespace(),
        stream_name: &stream.name,
        stream_id: stream.id,
        version: intent.version,
        lane: kind.name(),
        first_seq: intent.first_seq,
        oldest_arrival_ms: batch[0].arrival_ms,
    };
    let limit = delivery.state.config.active_partitions_max;
    let now_ms = delivery.clock.now_ms();
    let mut objects: Vec<(String, Vec<usize>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut exceeded = false;
    // Records of one partition share their keys: each distinct set is rendered once.
    let mut rendered: HashMap<PartitionKeys, Result<String, String>> = HashMap::new();
    for (j, keys) in partitions.into_iter().enumerate() {
        let key = match rendered.get(&keys) {
            Some(key) => key.clone(),
            None => {
                let key = partition_key(&settings, &identity, &keys);
                rendered.insert(keys, key.clone());
                key
            }
        };
        let failure = match key {
            Ok(key) => match index.get(&key) {
                Some(&i) => {
                    objects[i].1.push(j);
                    continue;
                }
                None if objects.len() < limit => {
                    index.insert(key.clone(), objects.len());
                    objects.push((key, vec![j]));
                    continue;
                }
                None => {
                    exceeded = true;
                    (
                        "DynamicPartitioning.ActivePartitionsLimitExceeded",
                        format!("More than {limit} active partitions."),
                    )
                }
            },
            Err(error) => ("DynamicPartitioning.PartitionKeyMissing", error),
        };
        processed.n_failed_partitioning += 1;
        let lines = processed.errors.entry(PARTITIONING_FAILED).or_default();
        let record = std::mem::take(&mut processed.records[j]);
        let source = &batch[processed.sources[j]];
        let failed = Failed { record: source, data: &record, code: failure.0, message: &failure.1 };
        error_line(lines, &failed, attempt, now_ms, None);
    }
    delivery.state.metrics.partitions(stream.id, index.len() as u64, exceeded, objects.len() as u64);
    objects
}

/// In-flight budget permits (KiB) for one batch: twice its records' bytes, since
/// an attempt holds the records read back and the object's body (or request) at once.
fn permits(intent: &Intent) -> u32 {
    ((intent.bytes * 2) >> 10).clamp(1, (super::BATCH_BYTES_IN_FLIGHT_MAX >> 10) as u64) as u32
}

/// How an attempt at a batch for an HTTP endpoint or an Iceberg table begins.
enum Begun<'a> {
    /// The stream as defined now, room in the in-flight budget, and the batch.
    Ready(Arc<StreamRecord>, tokio::sync::SemaphorePermit<'a>, ReadBack),
    /// The batch could not be read; waited, try again.
    Again,
    /// Stop: `true` if the batch counts as delivered (its records are gone from the
    /// log, said loudly), `false` for shutdown, deletion or a take-over.
    Stop(bool),
}

/// Begins an attempt: the stream still exists and is still this lane's, room in
/// the in-flight budget, uploads an earlier attempt left aborted, and the batch
/// read back from the log (a failed read waits before the next attempt).
async fn begin_attempt<'a>(
    delivery: &'a Delivery,
    progress: &StreamProgress,
    intent: &Intent,
    shutdown: &mut watch::Receiver<bool>,
) -> Begun<'a> {
    let stream_id = progress.stream_id;
    let Some(stream) = delivery.state.catalog.get_by_id(stream_id) else {
        tracing::info!(stream_id, "Stream deleted; its delivery stops.");
        return Begun::Stop(false);
    };
    if progress.fenced() {
        return Begun::Stop(false);
    }
    let permit = delivery.batch_kib_in_flight.acquire_many(permits(intent)).await.expect("never closed");
    let batch = match abort_stale_uploads(delivery, progress, LaneKind::Destination).await {
        Ok(()) => read_batch(delivery, stream_id, intent).await.map_err(|e| e.to_string()),
        Err(error) => Err(error),
    };
    match batch {
        Ok(batch) if batch.is_empty() => {
            tracing::error!(stream_id, batch = %intent.key, "The batch's records are no longer in the log.");
            Begun::Stop(true)
        }
        Ok(batch) => Begun::Ready(stream, permit, batch),
        Err(error) => {
            tracing::error!(stream_id, %error, "Reading the batch from the log failed; retrying.");
            drop(permit);
            match wait(shutdown, RETRY_DELAY_MIN).await {
                true => Begun::Stop(false),
                false => Begun::Again,
            }
        }
    }
}

/// The retries of a destination with `RetryOptions.DurationInSeconds`: backoff
/// between attempts, for that long after the first failure.
struct RetryWindow {
    backoff: Backoff,
    first_failure: Option<tokio::time::Instant>,
}

/// What follows a failed attempt.
enum After {
    /// Waited; try again.
    Again,
    /// The retry duration has passed.
    GiveUp,
    /// Shutting down.
    Stop,
}

impl RetryWindow {
    fn new(backoff: Backoff) -> RetryWindow {
        RetryWindow { backoff, first_failure: None }
    }

    /// After a failed attempt: waits for the next one, unless `retry_duration_s`
    /// has passed since the first failure (the last wait is cut short so that the
    /// final attempt comes when the duration ends).
    async fn after_failure(&mut self, retry_duration_s: u64, shutdown: &mut watch::Receiver<bool>) -> After {
        let since_first_failure = self.first_failure.get_or_insert_with(tokio::time::Instant::now).elapsed();
        let delay = self.backoff.next_delay(rand::random::<f64>());
        match http::next_wait(since_first_failure, Duration::from_secs(retry_duration_s), delay) {
            None => After::GiveUp,
            Some(_) if *shutdown.borrow() => After::Stop,
            Some(delay) if wait(shutdown, delay).await => After::Stop,
            Some(_) => After::Again,
        }
    }
}

/// Sends the batch to the HTTP endpoint, in requests of at most 10,000 records,
/// retrying with Firehose's backoff until `RetryOptions.DurationInSeconds` has
/// passed since the first failure (413: not at all); then the batch's records go to
/// the destination's `S3Configuration` under the error prefix
/// (`http-endpoint-failed`) as Firehose's error records, never dropped. The URL,
/// access key and attributes are read again on every attempt, as Firehose does.
/// `false` if it stopped for shutdown or deletion first.
async fn deliver_http(
    delivery: &Delivery,
    progress: &StreamProgress,
    metric: &'static str,
    intent: &Intent,
    request_id: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let (stream_id, kind) = (progress.stream_id, LaneKind::Destination);
    let state = &delivery.state;
    let mut retries = RetryWindow::new(Backoff::new(HTTP_RETRY_DELAY_MIN, HTTP_RETRY_DELAY_MAX, HTTP_RETRY_JITTER));
    let mut attempt = 0u32;
    // Requests already answered with 200 are not sent again within this run.
    let mut requests_done = 0usize;
    let failure = loop {
        attempt += 1;
        let (stream, permit, mut batch) = match begin_attempt(delivery, progress, intent, shutdown).await {
            Begun::Ready(stream, permit, batch) => (stream, permit, batch),
            Begun::Again => continue,
            Begun::Stop(delivered) => return delivered,
        };
        state.metrics.oldest_undelivered(stream_id, metric, Some(batch[0].arrival_ms));
        let chain = chain_of(&stream, LaneKind::Destination);
        let mut processed = process(delivery, &stream, chain.as_ref(), &mut batch, attempt).await;
        let now_ms = delivery.clock.now_ms();
        let (n_records, n_bytes) = (processed.records.len() as u64, processed.n_bytes());
        let mut result = match put_errors(delivery, progress, kind, intent, std::mem::take(&mut processed.errors)).await
        {
            Ok(()) => Ok(()),
            Err(error) => Err(HttpFailure { code: "S3.DeliveryFailed", message: error, permanent: false }),
        };
        let settings = stream.destination.http_settings();
        let source_arn = state.arn(&stream.region, &stream.name);
        for (i, records) in processed.records.chunks(REQUEST_RECORDS_MAX).enumerate().skip(requests_done) {
            let Some(settings) = &settings else {
                let message = "The destination is no longer an HTTP endpoint.".to_string();
                result = Err(HttpFailure { code: "HttpEndpoint.InvalidEndpoint", message, permanent: false });
                break;
            };
            if result.is_err() {
                break;
            }
            let id = if i == 0 { request_id.to_string() } else { format!("{request_id}-{i}") };
            state.metrics.http_processed(stream_id, records.len() as u64, records.iter().map(|r| r.len() as u64).sum());
            result = delivery.http.send(settings, &source_arn, &id, now_ms, records).await;
            if result.is_ok() {
                requests_done = i + 1;
            }
        }
        drop(permit);
        state.metrics.delivery(stream_id, metric, result.is_ok(), n_records, n_bytes);
        let lane = LaneKind::Destination.name();
        let failure = match result {
            Ok(()) => {
                state.metrics.processing(stream_id, &processed.stats);
                state.flushes.delivered(stream_id, lane, n_records);
                return true;
            }
            Err(failure) => failure,
        };
        state.flushes.failed(stream_id, lane, &format!("{}: {}", failure.code, failure.message));
        tracing::warn!(stream_id, request_id, attempt, code = failure.code, error = %failure.message, "Delivery to the HTTP endpoint failed.");
        if failure.permanent {
            break failure;
        }
        match retries.after_failure(settings.as_ref().map_or(0, |s| s.retry_duration_s), shutdown).await {
            After::Again => {}
            After::GiveUp => break failure,
            After::Stop => return false,
        }
    };
    let failure = (failure.code, failure.message.as_str());
    give_up(delivery, progress, intent, attempt, failure, HTTP_ENDPOINT_FAILED, shutdown).await
}

/// A batch's records grouped by the Iceberg table each goes to (in `records`
/// order), and the records whose route cannot be followed, with the error code and
/// message of each. A record's route (`routes`, from the MetadataExtraction query or
/// the Lambda function) may name its database and table; a table named alone is in
/// the database the stream lists it under, else in the first listed table's; a
/// record naming no table goes to the stream's table when it lists exactly one.
/// `update` and `delete` operations need row-level changes, which Sluice does not
/// write: those records fail.
type Routed<'a> = (BTreeMap<(&'a str, &'a str), Vec<usize>>, Vec<(usize, &'static str, String)>);

fn route_records<'a>(settings: &'a IcebergSettings, routes: Option<&'a [Route]>, n: usize) -> Routed<'a> {
    let (mut groups, mut failed): Routed<'a> = Default::default();
    let only = match settings.tables.as_slice() {
        [(database, table)] => Some((database.as_str(), table.as_str())),
        _ => None,
    };
    // A record without a route names nothing.
    static UNNAMED: Route = Route { destination_database_name: None, destination_table_name: None, operation: None };
    for i in 0..n {
        // Borrowed, not cloned: this runs for every record of a batch.
        let route = routes.and_then(|r| r.get(i)).unwrap_or(&UNNAMED);
        if let Some(operation) = route.operation.as_deref().filter(|o| !o.eq_ignore_ascii_case("insert")) {
            let message = format!(
                "The record's operation is {operation}: Sluice appends (insert) only; update and delete need row-level changes it does not write."
            );
            failed.push((i, "Iceberg.UnsupportedOperation", message));
            continue;
        }
        let table = match (route.destination_database_name.as_deref(), route.destination_table_name.as_deref()) {
            (Some(database), Some(table)) => Some((database, table)),
            (None, Some(table)) => {
                let listed = settings.tables.iter().find(|(_, t)| t == table).or(settings.tables.first());
                listed.map(|(database, _)| (database.as_str(), table))
            }
            (database, None) => only.filter(|(d, _)| database.is_none_or(|named| named == *d)),
        };
        match table {
            Some(table) => groups.entry(table).or_default().push(i),
            None => failed.push((
                i,
                "Iceberg.NoDestinationTable",
                "The record names no destination table (destinationTableName), and the stream lists more than one, or another database's.".into(),
            )),
        }
    }
    (groups, failed)
}

/// Appends the batch to its Iceberg table, retrying with backoff until
/// `RetryOptions.DurationInSeconds` has passed since the first failure; then the
/// batch's records go to the destination's `S3Configuration` under the error
/// prefix (`iceberg-failed`), never dropped. Records that do not fit the table go
/// there at once, as Firehose's error records; the rest are appended. The append
/// is one snapshot carrying the batch's id, so a redo after a crash that followed
/// the commit appends nothing twice. `false` if it stopped for shutdown or
/// deletion first.
async fn deliver_iceberg(
    delivery: &Delivery,
    progress: &StreamProgress,
    metric: &'static str,
    intent: &Intent,
    batch_id: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let (stream_id, kind) = (progress.stream_id, LaneKind::Destination);
    let state = &delivery.state;
    let mut retries = RetryWindow::new(Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX, RETRY_JITTER));
    let mut attempt = 0u32;
    let failure = loop {
        attempt += 1;
        let (stream, permit, mut batch) = match begin_attempt(delivery, progress, intent, shutdown).await {
            Begun::Ready(stream, permit, batch) => (stream, permit, batch),
            Begun::Again => continue,
            Begun::Stop(delivered) => return delivered,
        };
        state.metrics.oldest_undelivered(stream_id, metric, Some(batch[0].arrival_ms));
        let chain = chain_of(&stream, kind);
        let mut processed = process(delivery, &stream, chain.as_ref(), &mut batch, attempt).await;
        let (n_records, n_bytes) = (processed.records.len() as u64, processed.n_bytes());
        let settings = stream.destination.iceberg_settings();
        let result: Result<u64, String> = async {
            let settings = settings.as_ref().ok_or("The destination is no longer an Iceberg table.")?;
            let tables = state.iceberg().await.map_err(|e| e.to_string())?;
            let input = sluice_convert::InputFormat::default();
            let (groups, mut failed) = route_records(settings, processed.routes.as_deref(), processed.records.len());
            // One append (one snapshot carrying the batch's id) per table: after a
            // crash between two tables' commits, the redo skips the tables that have
            // the batch and appends to the others.
            for ((database, table), indices) in &groups {
                let records: Vec<&[u8]> = indices.iter().map(|&i| processed.records[i].as_slice()).collect();
                match tables.append(database, table, batch_id, &input, &records).await {
                    Ok(appended) => {
                        failed.extend(appended.failed.into_iter().map(|(j, e)| (indices[j], e.code(), e.message)))
                    }
                    // A table only records named (not one of the stream's) fails
                    // those records; the stream's own tables are waited for.
                    Err(sluice_iceberg::IcebergError::NoSuchTable(name))
                        if !settings.tables.iter().any(|(d, t)| d == database && t == table) =>
                    {
                        let message =
                            format!("The records were routed to the Iceberg table {name}, which does not exist.");
                        failed.extend(indices.iter().map(|&i| (i, "Iceberg.TableNotFound", message.clone())));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            let now_ms = delivery.clock.now_ms();
            let lines = processed.errors.entry(ICEBERG_FAILED).or_default();
            failed.sort_by_key(|(i, _, _)| *i);
            for (i, code, message) in &failed {
                let source = &batch[processed.sources[*i]];
                let failed = Failed { record: source, data: &processed.records[*i], code, message };
                error_line(lines, &failed, attempt, now_ms, None);
            }
            if lines.is_empty() {
                processed.errors.remove(ICEBERG_FAILED);
            }
            Ok(failed.len() as u64)
        }
        .await;
        // Records that failed (processing, or the table) are written where they go
        // before the batch counts as delivered; a redo rewrites the same objects.
        let result = match result {
            Ok(n_failed) => put_errors(delivery, progress, kind, intent, std::mem::take(&mut processed.errors))
                .await
                .map(|()| n_failed),
            Err(error) => Err(error),
        };
        drop(permit);
        let n_delivered = n_records - result.as_ref().map_or(0, |n| *n);
        state.metrics.delivery(stream_id, metric, result.is_ok(), n_delivered, n_bytes);
        let error = match result {
            Ok(n_failed) => {
                state.metrics.processing(stream_id, &processed.stats);
                state.metrics.iceberg_rows(stream_id, n_records, n_failed);
                state.flushes.delivered(stream_id, kind.name(), n_delivered);
                return true;
            }
            Err(error) => error,
        };
        state.flushes.failed(stream_id, kind.name(), &error);
        tracing::warn!(stream_id, batch_id, attempt, %error, "Delivery to the Iceberg table failed.");
        match retries.after_failure(settings.as_ref().map_or(0, |s| s.retry_duration_s), shutdown).await {
            After::Again => {}
            After::GiveUp => break error,
            After::Stop => return false,
        }
    };
    give_up(delivery, progress, intent, attempt, ("Iceberg.AppendFailed", &failure), ICEBERG_FAILED, shutdown).await
}

/// Writes a batch the destination did not take under the error prefix of its
/// `S3Configuration` (`output_type`: `http-endpoint-failed`, `iceberg-failed`),
/// retrying the write until the retention period ends, then counting and logging
/// the records.
async fn give_up(
    delivery: &Delivery,
    progress: &StreamProgress,
    intent: &Intent,
    attempt: u32,
    (code, message): (&str, &str),
    output_type: &'static str,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let stream_id = progress.stream_id;
    let mut backoff = Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX, RETRY_JITTER);
    loop {
        if delivery.state.catalog.get_by_id(stream_id).is_none() {
            return false;
        }
        let permit = delivery.batch_kib_in_flight.acquire_many(permits(intent)).await.expect("never closed");
        let batch = match abort_stale_uploads(delivery, progress, LaneKind::Destination).await {
            Ok(()) => read_batch(delivery, stream_id, intent).await.map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        let result = match batch {
            Ok(batch) if batch.is_empty() => return true,
            Ok(batch) => {
                let now_ms = delivery.clock.now_ms();
                let mut lines = Vec::new();
                for record in batch.iter() {
                    let failed = Failed { record, data: &record.data, code, message };
                    error_line(&mut lines, &failed, attempt, now_ms, None);
                }
                let result = match intent.error_key(output_type) {
                    Some(key) => {
                        let lines = bytes::Bytes::from(lines);
                        store_object(delivery, progress, LaneKind::Destination, &intent.bucket, key, lines).await
                    }
                    None => Err("no error key".to_string()),
                };
                if let Err(error) = &result {
                    if now_ms.saturating_sub(batch[0].arrival_ms) >= delivery.state.config.retention_ms {
                        expire(delivery, stream_id, intent, &batch, attempt, error).await;
                        return true;
                    }
                }
                result
            }
            Err(error) => Err(error.to_string()),
        };
        drop(permit);
        match result {
            Ok(()) => {
                tracing::warn!(stream_id, batch = intent.key, bucket = %intent.bucket, output_type, "The destination did not take the batch; its records are under the error prefix.");
                return true;
            }
            Err(error) => {
                tracing::warn!(stream_id, bucket = %intent.bucket, %error, output_type, "Writing failed records to S3 failed; retrying.");
                if wait(shutdown, backoff.next_delay(rand::random::<f64>())).await {
                    return false;
                }
            }
        }
    }
}

/// A batch older than the retention period is given up: its records are written,
/// if the store takes them, under the error prefix as Firehose's error records
/// (one JSON document per line), and always counted and logged, never dropped
/// silently.
async fn expire(
    delivery: &Delivery,
    stream_id: u64,
    intent: &Intent,
    batch: &[StoredRecord],
    attempt: u32,
    error: &str,
) {
    let error_code = if error.contains("NoSuchBucket") { "S3.NoSuchBucket" } else { "S3.DeliveryFailed" };
    let ended = delivery.clock.now_ms();
    let mut lines = Vec::new();
    for record in batch {
        let failed = Failed { record, data: &record.data, code: error_code, message: error };
        error_line(&mut lines, &failed, attempt, ended, None);
    }
    let written = match intent.error_key(RETENTION_EXPIRED) {
        Some(key) => delivery.store.put(&intent.bucket, key, bytes::Bytes::from(lines)).await.is_ok(),
        None => false,
    };
    delivery.state.metrics.records_expired(stream_id, batch.len() as u64);
    tracing::error!(
        stream_id,
        n_records = batch.len(),
        bucket = %intent.bucket,
        error_key = intent.error_key(RETENTION_EXPIRED).unwrap_or(""),
        written_to_error_prefix = written,
        %error,
        "Records outlived the retention period without being delivered."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_within_the_jitter() {
        let mut backoff = Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX, RETRY_JITTER);
        let low: Vec<u64> = (0..9).map(|_| backoff.next_delay(0.0).as_millis() as u64).collect();
        assert_eq!(low, [800, 1600, 3200, 6400, 12800, 25600, 48000, 48000, 48000]);
        let mut backoff = Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX, RETRY_JITTER);
        let high: Vec<u64> = (0..8).map(|_| backoff.next_delay(0.999_999).as_millis() as u64).collect();
        assert_eq!(high, [1199, 2399, 4799, 9599, 19199, 38399, 71999, 71999]);
        let mut plain = Backoff::new(Duration::from_secs(1), Duration::from_secs(120), 0.15);
        let mid: Vec<u64> = (0..8).map(|_| plain.next_delay(0.5).as_secs()).collect();
        assert_eq!(mid, [1, 2, 4, 8, 16, 32, 64, 120]);
    }

    fn iceberg(tables: &[(&str, &str)]) -> IcebergSettings {
        let list: Vec<serde_json::Value> = tables
            .iter()
            .map(|(d, t)| serde_json::json!({"DestinationDatabaseName": d, "DestinationTableName": t}))
            .collect();
        let config = serde_json::json!({
            "DestinationTableConfigurationList": list,
            "S3Configuration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"},
        });
        IcebergSettings::from_config(config.as_object().unwrap()).unwrap()
    }

    fn route(database: Option<&str>, table: Option<&str>, operation: Option<&str>) -> Route {
        Route {
            destination_database_name: database.map(str::to_string),
            destination_table_name: table.map(str::to_string),
            operation: operation.map(str::to_string),
        }
    }

    #[test]
    fn records_go_to_the_table_they_name_or_the_only_one_and_the_rest_fail_with_why() {
        let key = |d: &'static str, t: &'static str| (d, t);
        let codes =
            |failed: &[(usize, &'static str, String)]| failed.iter().map(|(i, c, _)| (*i, *c)).collect::<Vec<_>>();
        // One table: records that name nothing go there; no routes at all, all there.
        let one = iceberg(&[("lake", "events")]);
        let (groups, failed) = route_records(&one, None, 3);
        assert_eq!(groups, [(key("lake", "events"), vec![0, 1, 2])].into());
        assert!(failed.is_empty());
        let routes = [
            route(None, None, None),
            route(None, Some("audit"), Some("insert")),
            route(Some("other"), Some("t"), None),
            route(Some("other"), None, None),
            route(None, Some("events"), Some("update")),
        ];
        let (groups, failed) = route_records(&one, Some(&routes), routes.len());
        assert_eq!(
            groups,
            [(key("lake", "events"), vec![0]), (key("lake", "audit"), vec![1]), (key("other", "t"), vec![2])].into()
        );
        assert_eq!(codes(&failed), [(3, "Iceberg.NoDestinationTable"), (4, "Iceberg.UnsupportedOperation")]);
        // Two tables: a table named alone takes the database it is listed under;
        // naming no table fails.
        let two = iceberg(&[("lake", "events"), ("audit_db", "audit")]);
        let routes = [route(None, Some("audit"), None), route(None, None, None), route(None, Some("new"), None)];
        let (groups, failed) = route_records(&two, Some(&routes), routes.len());
        assert_eq!(groups, [(key("audit_db", "audit"), vec![0]), (key("lake", "new"), vec![2])].into());
        assert_eq!(codes(&failed), [(1, "Iceberg.NoDestinationTable")]);
    }
}
