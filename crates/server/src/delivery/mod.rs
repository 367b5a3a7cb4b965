//! Delivery: what happens to records after they are durable. The engine runs one
//! worker per stream (`worker`), which runs one lane per place the stream delivers
//! to (`lane`: the destination, and the S3 backup when enabled). A lane batches by
//! its buffering hints, names the object (`key`), encodes it (`encode`) and stores
//! it (`store`: local-directory buckets or an S3-compatible service); the worker
//! commits each lane's progress (`progress`) and acknowledges in the log what every
//! lane has delivered. Delivery only ever uses the `RecordLog` interface and never
//! blocks ingest.

mod convert;
pub mod encode;
pub mod flush;
mod http;
pub mod key;
mod lambda;
mod lane;
pub mod ownership;
mod process;
mod progress;
mod source;
pub mod store;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::AppState;
use store::Store;

/// How often the engine matches its workers to the catalog (new and deleted streams).
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// Wall-clock time as delivery sees it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `None`: the system clock. `Some`: the wall time at an instant of tokio's
    /// clock, advanced by tokio's clock since, so that a test on a paused runtime
    /// controls how much time passes.
    anchor: Option<(u64, tokio::time::Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { anchor: None }
    }

    /// Now, advancing with tokio's clock (paused in tests) from here on.
    pub fn tokio() -> Clock {
        Clock { anchor: Some((crate::api::now_ms(), tokio::time::Instant::now())) }
    }

    /// Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self.anchor {
            None => crate::api::now_ms(),
            Some((wall_ms, at)) => wall_ms + at.elapsed().as_millis() as u64,
        }
    }
}

/// What every delivery worker shares.
pub struct Delivery {
    /// The catalog, the log, metrics and configuration.
    pub state: Arc<AppState>,
    /// Where objects go.
    pub store: Store,
    /// Time.
    pub clock: Clock,
    /// The client for HTTP endpoint destinations.
    http: http::HttpSender,
    /// The client for Lambda processors.
    lambda: lambda::LambdaInvoker,
    /// Bytes of batches being read, encoded and uploaded at once, in KiB permits:
    /// batches wait for room, so many streams flushing together stay within memory.
    batch_kib_in_flight: tokio::sync::Semaphore,
    /// The namespace of this installation's batch uuids.
    namespace: uuid::Uuid,
    /// In cluster mode, which streams this node delivers; `None`: all of them.
    pub ownership: Option<Arc<ownership::Ownership>>,
    /// (stream, bucket) pairs already told to be missing, so the hint how to create
    /// the bucket is logged once per stream, not on every retry.
    missing_buckets: std::sync::Mutex<std::collections::HashSet<(u64, String)>>,
}

/// Batch bytes held in memory for delivery at once, across all streams (each
/// attempt is charged twice its records' bytes: records read back and the body).
/// Six default-sized (5 MiB) batches fit at once, more than two cores can encode;
/// a batch larger than this (SizeInMBs reaches 128) takes all of it. With the 64 MiB
/// of request bodies, part of the 256 MiB resident-memory budget.
pub const BATCH_BYTES_IN_FLIGHT_MAX: usize = 64 << 20;

impl Delivery {
    /// Logs, once per stream and bucket, that the bucket is missing and how to
    /// create it (delivery retries meanwhile, and its own warnings repeat).
    fn note_missing_bucket(&self, stream_id: u64, bucket: &str) {
        let first = self.missing_buckets.lock().expect("lock").insert((stream_id, bucket.to_string()));
        if first {
            let command = self.store.create_bucket_command(bucket);
            tracing::error!(stream_id, %bucket, %command, "The stream's bucket does not exist; delivery retries until it does. Create it with: {command}");
        }
    }

    /// Delivery for `state`'s streams, to the stores its configuration names. Fails
    /// if the HTTP client cannot be set up (an unreadable extra CA).
    pub fn new(state: Arc<AppState>, clock: Clock) -> Result<Delivery, String> {
        let local = store::LocalBuckets::of(&state.config);
        let store = Store::new(local, state.config.s3.clone()).with_api_endpoint(state.config.local_endpoint());
        match store.clean_temporary_files() {
            Ok(0) => {}
            Ok(n) => tracing::info!(n_files = n, "Removed temporary files of object writes a crash interrupted."),
            Err(error) => return Err(format!("cleaning the buckets' temporary directory: {error}")),
        }
        let local = store.local().clone();
        tokio::task::spawn_blocking(move || match local.sweep_legacy_temporary_files() {
            Ok(0) => {}
            Ok(n) => tracing::info!(n_files = n, "Removed temporary files an earlier version left inside buckets."),
            Err(error) => {
                tracing::warn!(%error, "Could not sweep the buckets for temporary files of earlier versions.")
            }
        });
        let http = http::HttpSender::new(&state.config.http)?;
        let lambda = lambda::LambdaInvoker::new(&state.config.lambda, &state.config.http)?;
        let batch_kib_in_flight = tokio::sync::Semaphore::new(BATCH_BYTES_IN_FLIGHT_MAX >> 10);
        let namespace = key::installation_namespace(&state.installation_id);
        Ok(Delivery {
            state,
            store,
            clock,
            http,
            lambda,
            batch_kib_in_flight,
            namespace,
            ownership: None,
            missing_buckets: std::sync::Mutex::default(),
        })
    }
}

/// The running delivery workers.
pub struct DeliveryEngine {
    shutdown: watch::Sender<bool>,
    supervisor: JoinHandle<()>,
}

impl DeliveryEngine {
    /// Starts delivering every stream in the catalog, and streams created later.
    pub fn start(delivery: Delivery) -> DeliveryEngine {
        let (shutdown, signal) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(Arc::new(delivery), signal));
        DeliveryEngine { shutdown, supervisor }
    }

    /// Asks every worker to flush what it buffers (no minimum size or age), waits
    /// for them up to `deadline`, and stops. Undelivered records stay in the log.
    pub async fn stop(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let abort = self.supervisor.abort_handle();
        if tokio::time::timeout(deadline, self.supervisor).await.is_err() {
            tracing::warn!("Delivery did not finish within the shutdown deadline; the rest stays in the log.");
            abort.abort();
        }
    }
}

async fn supervise(delivery: Arc<Delivery>, mut signal: watch::Receiver<bool>) {
    let mut workers: HashMap<u64, JoinHandle<()>> = HashMap::new();
    loop {
        // One more pass after shutdown is requested: a stream that became ACTIVE
        // since the last pass gets a worker too, which flushes what it holds.
        let stopping = *signal.borrow();
        let streams = delivery.state.catalog.snapshot().streams;
        let owned = |id: u64| delivery.ownership.as_ref().is_none_or(|o| o.owns(id));
        for stream in streams.values() {
            delivery.state.metrics.name_stream(stream.id, &stream.name);
            let start = match workers.get(&stream.id) {
                None => true,
                Some(worker) => worker.is_finished() && !stopping,
            };
            if start && owned(stream.id) && stream.status(delivery.clock.now_ms()) == "ACTIVE" {
                let worker = tokio::spawn(worker::run(delivery.clone(), stream.id, signal.clone()));
                workers.insert(stream.id, worker);
            }
        }
        workers.retain(|id, worker| {
            if !owned(*id) {
                // The lease went to another node: stop at once, whatever is in flight
                // (its commits would be refused; the new owner redoes the batch).
                worker.abort();
                return false;
            }
            !worker.is_finished() || streams.values().any(|s| s.id == *id)
        });
        if stopping {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = signal.changed() => {}
            () = delivery.state.flushes.reconcile_requested() => {}
        }
    }
    let handles: Vec<JoinHandle<()>> = workers.into_values().collect();
    let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
    // Dropped (on the deadline) means abort: workers hold nothing that needs cleanup.
    let _guard = AbortOnDrop(aborts);
    for handle in handles {
        let _ = handle.await;
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}
