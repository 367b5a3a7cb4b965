//! Delivery: what happens to records after they are durable. The engine runs one
//! worker per stream (`worker`), which batches by buffering hints, names the object
//! (`key`), encodes it (`encode`) and stores it (`store`: the local-directory
//! buckets), then acknowledges the records in the log. Delivery only ever uses the
//! `RecordLog` interface and never blocks ingest.

pub mod encode;
pub mod key;
pub mod store;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::AppState;

/// How often the engine matches its workers to the catalog (new and deleted streams).
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// The running delivery workers.
pub struct DeliveryEngine {
    shutdown: watch::Sender<bool>,
    supervisor: JoinHandle<()>,
}

impl DeliveryEngine {
    /// Starts delivering every stream in the catalog, and streams created later.
    pub fn start(state: Arc<AppState>) -> DeliveryEngine {
        let (shutdown, signal) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(state, signal));
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

async fn supervise(state: Arc<AppState>, mut signal: watch::Receiver<bool>) {
    let mut workers: HashMap<u64, JoinHandle<()>> = HashMap::new();
    loop {
        let streams = state.catalog.snapshot().streams;
        for stream in streams.values() {
            state.metrics.name_stream(stream.id, &stream.name);
            let running = workers.get(&stream.id).is_some_and(|w| !w.is_finished());
            if !running && stream.status(crate::api::now_ms()) == "ACTIVE" {
                let worker = tokio::spawn(worker::run(state.clone(), stream.id, signal.clone()));
                workers.insert(stream.id, worker);
            }
        }
        workers.retain(|id, worker| !worker.is_finished() || streams.values().any(|s| s.id == *id));
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = signal.changed() => break,
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
