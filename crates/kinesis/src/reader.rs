//! Reads every shard of one Kinesis data stream into a [`Sink`]: shards in
//! parallel, each in order, a child shard only once its parents are read to their
//! end (so records of one partition key stay in order across a split or merge),
//! with back-off on throttling and errors. Each GetRecords result is handed to the
//! sink as one call, KPL aggregates expanded into their user records; the sink
//! makes it durable before the shard reads on.
//!
//! The reader keeps no state of its own: it starts from the [`Positions`] it is
//! given (the last record of each shard the sink already holds) and, for shards
//! without one, at the delivery stream's start time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{Client, KinesisError, Record, Start};
use crate::record::{Positions, SourceRecord};

/// A boxed future, so [`Sink`] can be used as `dyn Sink`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the sink did not take records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Nothing was stored; the same records may be handed again later.
    #[error("{0}")]
    Retry(String),
    /// Reading must stop (the sink may or may not hold the records: it decides
    /// where reading resumes).
    #[error("{0}")]
    Stop(String),
}

/// Which call Kinesis throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// DescribeStream.
    DescribeStream,
    /// GetShardIterator.
    GetShardIterator,
    /// GetRecords.
    GetRecords,
}

/// Where read records go.
pub trait Sink: Send + Sync + 'static {
    /// Makes the records of one read (from one shard, in order) durable; resolves
    /// once they are.
    fn append<'a>(&'a self, records: &'a [SourceRecord]) -> BoxFuture<'a, Result<(), SinkError>>;
    /// `n_records` Kinesis records of `n_bytes` were read.
    fn read(&self, _n_records: u64, _n_bytes: u64) {}
    /// How far behind its tip a shard's last read was.
    fn behind(&self, _shard_id: &str, _millis: u64) {}
    /// A call was throttled.
    fn throttled(&self, _call: Call) {}
    /// A shard was read to its end (closed by resharding, and every record read).
    fn shard_ended(&self, _shard_id: &str) {}
}

/// How to read.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// The data stream's name.
    pub stream_name: String,
    /// Where shards without a position start (Unix ms): `DeliveryStartTimestamp`.
    pub start_ms: u64,
    /// Records per GetRecords call (Kinesis's maximum is 10,000).
    pub records_per_call_max: u32,
    /// Pause after a read that found nothing (Firehose reads each shard about once
    /// a second).
    pub idle_poll: Duration,
    /// Pause after a read that found records but not a full call's worth: Kinesis
    /// allows five GetRecords per second and shard.
    pub busy_poll: Duration,
    /// Back-off after a throttled or failed call: from `backoff_min`, doubling up to
    /// `backoff_max`.
    pub backoff_min: Duration,
    /// See `backoff_min`.
    pub backoff_max: Duration,
    /// How often shards are listed even if none ended (new shards from
    /// UpdateShardCount appear as children of closed ones, so this only catches up
    /// with what was missed). A stream that lists no shards (still being created)
    /// is listed again after `idle_poll`.
    pub describe_every: Duration,
}

impl ReaderOptions {
    /// Defaults for `stream_name`, starting at `start_ms`.
    pub fn new(stream_name: impl Into<String>, start_ms: u64) -> ReaderOptions {
        ReaderOptions {
            stream_name: stream_name.into(),
            start_ms,
            records_per_call_max: 10_000,
            idle_poll: Duration::from_secs(1),
            busy_poll: Duration::from_millis(200),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            describe_every: Duration::from_secs(60),
        }
    }
}

/// Why reading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The sink said stop.
    Stopped(String),
}

enum ShardEnd {
    /// Read to its end.
    Finished,
    Shutdown,
    Stopped(String),
}

/// Reads the stream until shutdown or until the sink says stop.
pub async fn run(
    client: Client,
    options: ReaderOptions,
    positions: Positions,
    sink: Arc<dyn Sink>,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let options = Arc::new(options);
    let mut finished: HashSet<String> = HashSet::new();
    let mut running: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut tasks: JoinSet<(String, ShardEnd)> = JoinSet::new();
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    let stopped = |tasks: &mut JoinSet<(String, ShardEnd)>, reason: String| {
        tasks.abort_all();
        Ended::Stopped(reason)
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut pause = options.describe_every;
        match client.shards(&options.stream_name).await {
            Ok(shards) => {
                backoff.reset();
                if shards.is_empty() {
                    // A stream being created lists no shards yet: look again soon.
                    pause = options.idle_poll;
                }
                let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
                for shard in &shards {
                    let id = &shard.shard_id;
                    if finished.contains(id) || running.contains_key(id) {
                        continue;
                    }
                    // A parent no longer listed was trimmed away: nothing of it is left to read.
                    if !shard.parents().all(|p| finished.contains(p) || !listed.contains(p)) {
                        continue;
                    }
                    let start = match positions.get(id) {
                        Some(sequence_number) => Start::After(sequence_number.to_string()),
                        None => Start::AtTimestamp(options.start_ms),
                    };
                    let task =
                        read_shard(client.clone(), options.clone(), id.clone(), start, sink.clone(), shutdown.clone());
                    let id = id.clone();
                    let handle = tasks.spawn(async move { (id.clone(), task.await) });
                    running.insert(shard.shard_id.clone(), handle);
                }
            }
            Err(error) => {
                if matches!(error, KinesisError::Throttled(_)) {
                    sink.throttled(Call::DescribeStream);
                }
                tracing::warn!(stream = %options.stream_name, %error, "Cannot list the Kinesis stream's shards; retrying.");
                pause = backoff.next();
            }
        }
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                joined = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        Some(Ok((shard, ShardEnd::Finished))) => {
                            running.remove(&shard);
                            sink.shard_ended(&shard);
                            finished.insert(shard);
                            // Its children may start now.
                            break;
                        }
                        Some(Ok((_, ShardEnd::Stopped(reason)))) => return stopped(&mut tasks, reason),
                        Some(Ok((shard, ShardEnd::Shutdown))) => {
                            running.remove(&shard);
                        }
                        Some(Err(error)) => {
                            // A panic in a shard's task: start over from what the sink holds.
                            return stopped(&mut tasks, format!("a shard reader failed: {error}"));
                        }
                        None => {}
                    }
                }
                () = &mut sleep => break,
                _ = shutdown.changed() => break,
            }
        }
    }
    // Shard readers watch the same signal and end after their current call.
    while tasks.join_next().await.is_some() {}
    Ended::Shutdown
}

async fn read_shard(
    client: Client,
    options: Arc<ReaderOptions>,
    shard_id: String,
    mut start: Start,
    sink: Arc<dyn Sink>,
    mut shutdown: watch::Receiver<bool>,
) -> ShardEnd {
    let stream = options.stream_name.as_str();
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    let mut iterator: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            return ShardEnd::Shutdown;
        }
        let current = match iterator.take() {
            Some(iterator) => iterator,
            None => match client.shard_iterator(stream, &shard_id, &start).await {
                Ok(iterator) => iterator,
                Err(KinesisError::NotFound(message)) => {
                    // Trimmed away after the retention period: nothing left to read.
                    tracing::warn!(stream, shard = %shard_id, %message, "The shard no longer exists; reading its children.");
                    return ShardEnd::Finished;
                }
                Err(error) => {
                    if matches!(error, KinesisError::Throttled(_)) {
                        sink.throttled(Call::GetShardIterator);
                    } else {
                        tracing::warn!(stream, shard = %shard_id, %error, "GetShardIterator failed; retrying.");
                    }
                    if pause(&mut shutdown, backoff.next()).await {
                        return ShardEnd::Shutdown;
                    }
                    continue;
                }
            },
        };
        let read = match client.records(&current, options.records_per_call_max).await {
            Ok(read) => read,
            Err(error) => {
                match error {
                    KinesisError::Throttled(_) => {
                        sink.throttled(Call::GetRecords);
                        iterator = Some(current);
                    }
                    // A new one from the last position read.
                    KinesisError::ExpiredIterator(_) => {}
                    error => {
                        tracing::warn!(stream, shard = %shard_id, %error, "GetRecords failed; retrying.");
                        iterator = Some(current);
                    }
                }
                if pause(&mut shutdown, backoff.next()).await {
                    return ShardEnd::Shutdown;
                }
                continue;
            }
        };
        backoff.reset();
        sink.behind(&shard_id, read.millis_behind_latest);
        let n_read = read.records.len();
        if let Some(last) = read.records.last() {
            start = Start::After(last.sequence_number.clone());
            let n_bytes = read.records.iter().map(|r| r.data.len() as u64).sum();
            let records = expand(&shard_id, read.records);
            loop {
                match sink.append(&records).await {
                    Ok(()) => break,
                    Err(SinkError::Stop(reason)) => return ShardEnd::Stopped(reason),
                    Err(SinkError::Retry(reason)) => {
                        tracing::warn!(stream, shard = %shard_id, %reason, "Storing records read from Kinesis failed; retrying.");
                        // The records are not lost: on shutdown they are read again
                        // next time, from the position the sink holds.
                        if pause(&mut shutdown, backoff.next()).await {
                            return ShardEnd::Shutdown;
                        }
                    }
                }
            }
            backoff.reset();
            sink.read(n_read as u64, n_bytes);
        }
        match read.next_iterator {
            None => return ShardEnd::Finished,
            Some(next) => iterator = Some(next),
        }
        let wait = if n_read as u32 >= options.records_per_call_max {
            Duration::ZERO
        } else if n_read > 0 {
            options.busy_poll
        } else {
            options.idle_poll
        };
        if !wait.is_zero() && pause(&mut shutdown, wait).await {
            return ShardEnd::Shutdown;
        }
    }
}

/// The records of one read as the log keeps them: KPL aggregates expanded into
/// their user records (subsequence numbers from 0), as Firehose does for this
/// source. An aggregate whose checksum or protobuf is wrong stays one record, as
/// the KCL treats it.
pub fn expand(shard_id: &str, records: Vec<Record>) -> Vec<SourceRecord> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        match sluice_processing::kpl::user_records(&record.data) {
            Ok(Some(user_records)) => {
                let n = user_records.len();
                for (i, user) in user_records.into_iter().enumerate() {
                    out.push(SourceRecord {
                        shard_id: shard_id.to_string(),
                        sequence_number: record.sequence_number.clone(),
                        subsequence_number: i as u32,
                        last_of_record: i + 1 == n,
                        partition_key: user.partition_key,
                        arrival_ms: record.arrival_ms,
                        data: user.data,
                    });
                }
            }
            Ok(None) | Err(_) => out.push(SourceRecord {
                shard_id: shard_id.to_string(),
                sequence_number: record.sequence_number,
                subsequence_number: 0,
                last_of_record: true,
                partition_key: record.partition_key,
                arrival_ms: record.arrival_ms,
                data: record.data,
            }),
        }
    }
    out
}

/// Resolves `true` if shutdown was asked for while waiting.
async fn pause(shutdown: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Exponential back-off with jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
    }
}
