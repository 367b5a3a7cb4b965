//! One stream's delivery: a lane per place the stream delivers to (see `lane`),
//! started and stopped as its destination changes, and the stream's progress,
//! which every lane commits through [`StreamProgress`] so that the log drops a
//! record only once every lane has delivered it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::lane::{self, LaneKind, IDLE_POLL};
use super::progress::{LaneProgress, Progress};
use super::Delivery;
use crate::api::AppState;
use crate::log::{LogError, Tenure};

/// A stream's delivery progress, shared by its lanes. Commits are serialised, so
/// the state the log keeps is always the latest, and made under this worker's
/// tenure: once a later worker (here or on another node) took the stream over,
/// every commit fails and the worker and its lanes stop.
pub(super) struct StreamProgress {
    pub(super) stream_id: u64,
    state: Arc<AppState>,
    tenure: Tenure,
    progress: Mutex<Progress>,
    fenced: AtomicBool,
}

impl StreamProgress {
    /// Whether a later tenure took the stream over: nothing this worker does
    /// will be committed any more.
    pub(super) fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The tenure this worker delivers under.
    pub(super) fn tenure(&self) -> Tenure {
        self.tenure
    }

    /// Every lane's progress, as last committed.
    pub(super) async fn snapshot(&self) -> Progress {
        self.progress.lock().await.clone()
    }

    /// One lane's progress.
    pub(super) async fn lane(&self, lane: &str) -> LaneProgress {
        self.progress.lock().await.lanes.get(lane).cloned().unwrap_or_default()
    }

    /// Changes one lane's progress and commits it, together with the position up to
    /// which every lane has delivered. On failure nothing changes.
    pub(super) async fn update(&self, lane: &str, change: impl FnOnce(&mut LaneProgress)) -> Result<(), LogError> {
        self.commit(|progress| change(progress.lanes.entry(lane.to_string()).or_default())).await
    }

    /// Forgets a lane the destination no longer has, so it holds no records back.
    async fn remove(&self, lane: &str) -> Result<(), LogError> {
        self.commit(|progress| {
            progress.lanes.remove(lane);
        })
        .await
    }

    /// Commits a change. Every lane the destination has now is in the committed
    /// progress (a new one with nothing delivered), so no commit can let the log
    /// drop records a lane added a moment ago (UpdateDestination enabling the
    /// backup) has yet to deliver.
    async fn commit(&self, change: impl FnOnce(&mut Progress)) -> Result<(), LogError> {
        let mut progress = self.progress.lock().await;
        let mut next = progress.clone();
        change(&mut next);
        if let Some(stream) = self.state.catalog.get_by_id(self.stream_id) {
            for kind in LaneKind::ALL.iter().filter(|kind| kind.target(&stream.destination).is_some()) {
                next.lanes.entry(kind.name().to_string()).or_default();
            }
        }
        let committed = self.state.log.commit(self.tenure, next.acknowledged_seq(), next.encode()).await;
        if let Err(LogError::Fenced(_)) = committed {
            self.fenced.store(true, Ordering::Relaxed);
        }
        committed?;
        *progress = next;
        Ok(())
    }
}

pub(super) async fn run(delivery: Arc<Delivery>, stream_id: u64, mut shutdown: watch::Receiver<bool>) {
    // Fences every earlier delivery of the stream (another node's, or a worker of
    // this node that is still winding down) before reading where it got to.
    let taken = match delivery.state.log.take_over(stream_id).await {
        Ok(taken) => taken,
        Err(LogError::StreamUnavailable(reason)) => {
            // Start-up said why at ERROR. Parked until shutdown or deletion: a
            // restarted worker would only fail again.
            tracing::warn!(stream_id, %reason, "Nothing is delivered from this stream until its log is fixed and Sluice restarted.");
            while delivery.state.catalog.get_by_id(stream_id).is_some() {
                if lane::wait(&mut shutdown, IDLE_POLL).await {
                    break;
                }
            }
            return;
        }
        Err(error) => {
            // The engine starts a worker again on its next pass.
            tracing::error!(stream_id, %error, "Cannot take the stream's delivery over; trying again.");
            return;
        }
    };
    let progress = Arc::new(StreamProgress {
        stream_id,
        state: delivery.state.clone(),
        tenure: taken.tenure,
        progress: Mutex::new(Progress::decode(stream_id, taken.state.as_deref())),
        fenced: AtomicBool::new(false),
    });
    // Aborted with the worker (a stream handed to another node), not left running.
    let mut lanes = Lanes(HashMap::new());
    // A Kinesis-sourced stream's reading runs beside its lanes, under the same tenure.
    let source = delivery.state.catalog.get_by_id(stream_id).filter(|s| s.reads_kinesis()).map(|_| {
        let task = super::source::run(delivery.clone(), progress.clone(), shutdown.clone());
        AbortOnDrop(tokio::spawn(task))
    });
    while let Some(stream) = delivery.state.catalog.get_by_id(stream_id) {
        if progress.fenced() {
            tracing::warn!(stream_id, "A later delivery took this stream over; this worker stops.");
            break;
        }
        for kind in LaneKind::ALL {
            let recorded = progress.progress.lock().await.lanes.get(kind.name()).cloned();
            let lanes = &mut lanes.0;
            // A lane with a batch in progress finishes it even if the destination
            // changed since: that batch was promised.
            let wanted = kind.target(&stream.destination).is_some()
                || recorded.as_ref().is_some_and(|lane| lane.batch.is_some());
            let running = lanes.get(&kind).is_some_and(|lane| !lane.is_finished());
            // At shutdown a lane that never ran still starts, to flush; one that
            // ended is not restarted.
            let start = match lanes.get(&kind) {
                None => true,
                Some(lane) => lane.is_finished() && !*shutdown.borrow(),
            };
            if wanted && start {
                let task = lane::run(delivery.clone(), progress.clone(), kind, shutdown.clone());
                lanes.insert(kind, tokio::spawn(task));
            } else if !wanted && !running && recorded.is_some() {
                if let Err(error) = progress.remove(kind.name()).await {
                    tracing::error!(stream_id, lane = kind.name(), %error, "Removing a lane failed; retrying.");
                }
                lanes.remove(&kind);
            }
        }
        if lane::wait(&mut shutdown, IDLE_POLL).await {
            break;
        }
    }
    if progress.fenced() {
        // Nothing the lanes do would count any more: dropping `lanes` aborts them.
        return;
    }
    // The source and the lanes watch the same shutdown signal (or the stream's
    // deletion) and end by themselves; the engine bounds how long this may take.
    if let Some(mut source) = source {
        let _ = (&mut source.0).await;
    }
    for lane in std::mem::take(&mut lanes.0).into_values() {
        let _ = lane.await;
    }
}

/// A task aborted if its handle is dropped before it was awaited.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A worker's lane tasks, aborted if the worker is dropped before it awaited them.
struct Lanes(HashMap<LaneKind, JoinHandle<()>>);

impl Drop for Lanes {
    fn drop(&mut self) {
        for lane in self.0.values() {
            lane.abort();
        }
    }
}
