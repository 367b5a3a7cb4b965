//! A `KinesisStreamAsSource` stream's source: the stream's delivery worker reads the
//! Kinesis data stream (`sluice-kinesis`) into the stream's log, where its lanes
//! deliver from as for direct puts. Records are copied into the log, not re-read
//! from Kinesis when a batch is redone, so that every delivery path (batches decided
//! and committed before upload, redone under the same key, retries for the retention
//! period, backups, flushes) is the one direct puts use (ARCHITECTURE.md says why).
//!
//! Exactly once from Kinesis to the bucket: where each shard's reading resumes is
//! derived, never stored separately, from what the log holds: the Kinesis positions
//! each lane committed with the batches it delivered (the log dropped those records)
//! merged with the records still in the log. The reader appends under the worker's
//! tenure, so after a take-over no earlier worker's append can land behind the new
//! one's back: a record is in the log once, and the lanes deliver it once.

use std::sync::Arc;
use std::time::Duration;

use sluice_kinesis::reader::{BoxFuture, Call};
use sluice_kinesis::{Client, Ended, Header, Positions, ReaderOptions, Sink, SinkError, SourceRecord};
use tokio::sync::watch;

use super::lane::wait;
use super::worker::StreamProgress;
use super::Delivery;
use crate::api::AppState;
use crate::log::{LogError, StoredRecord, Tenure, APPEND_UNDER_BYTES_MAX};

/// Records read per call when scanning the log for positions.
const SCAN_RECORDS_MAX: usize = 10_000;
/// Pause before reading again after the reader stopped on an error.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What Firehose tells a Lambda function of a record read from Kinesis
/// (`kinesisRecordMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KinesisMetadata {
    pub(super) shard_id: String,
    pub(super) partition_key: String,
    pub(super) sequence_number: String,
    pub(super) subsequence_number: u32,
    pub(super) arrival_ms: u64,
}

/// Replaces each record of a Kinesis-sourced stream, as the log holds it, by its
/// data, with Kinesis's arrival time; returns what Kinesis said of each.
pub(super) fn unwrap_records(stream_id: u64, records: &mut [StoredRecord]) -> Vec<KinesisMetadata> {
    let mut metadata = Vec::with_capacity(records.len());
    for record in records {
        let (meta, data_offset) = match Header::parse(&record.data) {
            Ok(header) => (
                KinesisMetadata {
                    shard_id: header.shard_id.to_string(),
                    partition_key: header.partition_key.to_string(),
                    sequence_number: header.sequence_number.to_string(),
                    subsequence_number: header.subsequence_number,
                    arrival_ms: header.arrival_ms,
                },
                header.data_offset,
            ),
            Err(error) => {
                // Only this module appends to such a stream; delivered as it is.
                tracing::error!(stream_id, seq = record.seq, %error, "A record of a Kinesis-sourced stream is not in the source format.");
                (KinesisMetadata { arrival_ms: record.arrival_ms, ..KinesisMetadata::default() }, 0)
            }
        };
        record.arrival_ms = meta.arrival_ms;
        record.data.drain(..data_offset);
        metadata.push(meta);
    }
    metadata
}

/// Reads the stream's Kinesis data stream into its log until shutdown, deletion
/// or a later tenure.
pub(super) async fn run(delivery: Arc<Delivery>, progress: Arc<StreamProgress>, mut shutdown: watch::Receiver<bool>) {
    let stream_id = progress.stream_id;
    loop {
        let Some(stream) = delivery.state.catalog.get_by_id(stream_id) else { return };
        let Some(source) = stream.kinesis_source.clone() else { return };
        if progress.fenced() || *shutdown.borrow() {
            return;
        }
        let positions = match positions(&delivery, &progress).await {
            Ok(positions) => positions,
            // A later delivery of the stream took it over, and reads it now.
            Err(LogError::Fenced(_)) => return,
            Err(error) => {
                tracing::error!(stream = %stream.name, %error, "Cannot read the log to find where reading the Kinesis stream resumes; retrying.");
                if wait(&mut shutdown, RESTART_DELAY).await {
                    return;
                }
                continue;
            }
        };
        let config = &delivery.state.config;
        let client_config = config.kinesis.client_for(&source.stream_arn, source.stream_name(), &config.region);
        let client = match Client::new(client_config) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(stream = %stream.name, %error, "Cannot set up the Kinesis client; retrying.");
                if wait(&mut shutdown, RESTART_DELAY).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(
            stream = %stream.name,
            kinesis_stream = %source.stream_arn,
            n_shards_positioned = positions.0.len(),
            "Reading the Kinesis data stream."
        );
        let sink = Arc::new(LogSink { state: delivery.state.clone(), tenure: progress.tenure(), stream_id });
        let options = ReaderOptions::new(source.stream_name(), stream.created_ms);
        match sluice_kinesis::run(client, options, positions, sink, shutdown.clone()).await {
            Ended::Shutdown => return,
            Ended::Stopped(reason) => {
                tracing::warn!(stream = %stream.name, %reason, "Reading the Kinesis stream stopped; resuming from what the log holds.");
                if wait(&mut shutdown, RESTART_DELAY).await {
                    return;
                }
            }
        }
    }
}

/// Where each shard's reading resumes: after the last record of it the stream
/// ever took into its log (delivered, in a lane's progress, or still in the log).
async fn positions(delivery: &Delivery, progress: &StreamProgress) -> Result<Positions, LogError> {
    // First: no earlier append of this worker still lands, and from here on only
    // appends onto what the scan below sees do.
    delivery.state.log.settle_appends(progress.tenure()).await?;
    // Lanes deliver meanwhile, and the log may drop records the scan has not reached
    // yet: the lanes' positions are taken after the scan, so they cover whatever it
    // missed.
    let from = progress.snapshot().await.acknowledged_seq().saturating_add(1);
    let mut positions = Positions::default();
    let mut cursor = delivery.state.log.cursor(progress.stream_id, from)?;
    loop {
        let records = cursor.read(SCAN_RECORDS_MAX, usize::MAX).await?;
        if records.is_empty() {
            break;
        }
        for record in &records {
            if let Ok(header) = Header::parse(&record.data) {
                positions.note(&header);
            }
        }
    }
    for lane in progress.snapshot().await.lanes.values() {
        positions.merge(&lane.source);
    }
    Ok(positions)
}

/// The encoded records in appends of at most [`APPEND_UNDER_BYTES_MAX`], each
/// ending with a Kinesis record's last user record, so no Kinesis record is split
/// between two appends (one larger than an append alone is one append, which the
/// log may refuse).
fn chunks(encoded: Vec<Vec<u8>>, records: &[SourceRecord]) -> Vec<Vec<Vec<u8>>> {
    let mut chunks: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let (mut n_bytes, mut since_boundary) = (0usize, 0usize);
    for (data, record) in encoded.into_iter().zip(records) {
        let size = data.len() + 16;
        let current = chunks.last_mut().expect("one chunk");
        if n_bytes + size > APPEND_UNDER_BYTES_MAX && current.len() > since_boundary {
            // Move the records of the Kinesis record in progress to a new chunk.
            let moved = current.split_off(current.len() - since_boundary);
            n_bytes = moved.iter().map(|d: &Vec<u8>| d.len() + 16).sum();
            chunks.push(moved);
        }
        let current = chunks.last_mut().expect("one chunk");
        current.push(data);
        n_bytes += size;
        since_boundary = if record.last_of_record { 0 } else { since_boundary + 1 };
    }
    chunks.retain(|c| !c.is_empty());
    chunks
}

/// The stream's log as the reader's sink.
struct LogSink {
    state: Arc<AppState>,
    tenure: Tenure,
    stream_id: u64,
}

impl Sink for LogSink {
    fn append<'a>(&'a self, records: &'a [SourceRecord]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let encoded: Vec<Vec<u8>> = records.iter().map(SourceRecord::encode).collect();
            // Back-pressure as for puts: while delivery is behind by the configured
            // limit, the records wait in Kinesis rather than on this disk.
            let n_bytes: u64 = encoded.iter().map(|r| r.len() as u64).sum();
            let config = &self.state.config;
            let held = self.state.log.undelivered_bytes(self.stream_id).unwrap_or(0);
            if held + n_bytes > config.buffer_bytes_per_stream_max
                || self.state.log.undelivered_bytes_total() + n_bytes > config.buffer_bytes_max
            {
                return Err(SinkError::Retry(format!("the stream holds {held} bytes not yet delivered, its limit")));
            }
            // One append per chunk, each whole Kinesis records; the first one failing
            // may be offered again, a later one not: the earlier chunks are in the
            // log, and reading resumes after them once the log is read again.
            for (i, chunk) in chunks(encoded, records).into_iter().enumerate() {
                match self.state.log.append_under(self.tenure, chunk).await {
                    Ok(_) => {}
                    // Nothing was stored (or, in cluster mode, the next append finds
                    // out that it was and says `Changed`).
                    Err(error @ (LogError::Unavailable(_) | LogError::NoSpace(_))) if i == 0 => {
                        return Err(SinkError::Retry(error.to_string()))
                    }
                    Err(error) => return Err(SinkError::Stop(error.to_string())),
                }
            }
            Ok(())
        })
    }

    fn read(&self, n_records: u64, n_bytes: u64) {
        self.state.metrics.kinesis_read(self.stream_id, n_records, n_bytes);
    }

    fn behind(&self, shard_id: &str, millis: u64) {
        self.state.metrics.kinesis_behind(self.stream_id, shard_id, millis);
    }

    fn throttled(&self, call: Call) {
        let metric = match call {
            Call::DescribeStream => "ThrottledDescribeStream",
            Call::GetShardIterator => "ThrottledGetShardIterator",
            Call::GetRecords => "ThrottledGetRecords",
        };
        self.state.metrics.kinesis_throttled(self.stream_id, metric);
    }

    fn shard_ended(&self, shard_id: &str) {
        self.state.metrics.kinesis_shard_ended(self.stream_id, shard_id);
        tracing::info!(stream_id = self.stream_id, shard = shard_id, "A closed Kinesis shard is read to its end.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_record(sequence: u64, last: bool, bytes: usize) -> SourceRecord {
        SourceRecord {
            shard_id: "shardId-000000000000".into(),
            sequence_number: sequence.to_string(),
            subsequence_number: 0,
            last_of_record: last,
            partition_key: "k".into(),
            arrival_ms: 1,
            data: vec![b'x'; bytes],
        }
    }

    #[test]
    fn appends_hold_whole_kinesis_records_within_the_limit() {
        // Kinesis records of 1 MiB, then aggregates of three 900 KiB user records.
        let mut records: Vec<SourceRecord> = (0..10).map(|s| user_record(s, true, 1 << 20)).collect();
        for s in 10..20 {
            records
                .extend([900 << 10, 900 << 10, 900 << 10].iter().enumerate().map(|(i, n)| user_record(s, i == 2, *n)));
        }
        let encoded: Vec<Vec<u8>> = records.iter().map(SourceRecord::encode).collect();
        let chunks = chunks(encoded.clone(), &records);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.concat(), encoded, "every record once, in order");
        for chunk in &chunks {
            assert!(chunk.iter().map(|d| d.len() + 16).sum::<usize>() <= APPEND_UNDER_BYTES_MAX);
            let last = Header::parse(chunk.last().unwrap()).unwrap();
            assert!(last.last_of_record, "a chunk ends with a whole Kinesis record");
        }
    }

    #[test]
    fn a_record_larger_than_an_append_is_one_append() {
        let records =
            vec![user_record(1, true, 10), user_record(2, true, APPEND_UNDER_BYTES_MAX), user_record(3, true, 10)];
        let encoded: Vec<Vec<u8>> = records.iter().map(SourceRecord::encode).collect();
        let chunks = chunks(encoded, &records);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
    }
}
