//! One stream's delivery: a lane per place the stream delivers to (see `lane`),
//! started and stopped as its destination changes, and the stream's progress,
//! which every lane commits through [`StreamProgress`] so that the log drops a
//! record only once every lane has delivered it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::lane::{self, LaneKind, IDLE_POLL};
use super::progress::{LaneProgress, Progress};
use super::Delivery;
use crate::log::{LogError, RecordLog};

/// A stream's delivery progress, shared by its lanes. Commits are serialised, so
/// the state the log keeps is always the latest.
pub(super) struct StreamProgress {
    pub(super) stream_id: u64,
    log: Arc<dyn RecordLog>,
    progress: Mutex<Progress>,
}

impl StreamProgress {
    /// One lane's progress.
    pub(super) async fn lane(&self, lane: &str) -> LaneProgress {
        self.progress.lock().await.lanes.get(lane).cloned().unwrap_or_default()
    }

    /// Changes one lane's progress and commits it, together with the position up to
    /// which every lane has delivered. On failure nothing changes.
    pub(super) async fn update(&self, lane: &str, change: impl FnOnce(&mut LaneProgress)) -> Result<(), LogError> {
        let mut progress = self.progress.lock().await;
        let mut next = progress.clone();
        change(next.lanes.entry(lane.to_string()).or_default());
        self.log.commit(self.stream_id, next.acknowledged_seq(), next.encode()).await?;
        *progress = next;
        Ok(())
    }

    /// Adds lanes that have no progress yet (delivered nothing), in one commit,
    /// before any of them runs: a lane holds the log from the moment it exists.
    async fn register(&self, lanes: &[&str]) -> Result<(), LogError> {
        let mut progress = self.progress.lock().await;
        if lanes.iter().all(|lane| progress.lanes.contains_key(*lane)) {
            return Ok(());
        }
        let mut next = progress.clone();
        for lane in lanes {
            next.lanes.entry(lane.to_string()).or_default();
        }
        self.log.commit(self.stream_id, next.acknowledged_seq(), next.encode()).await?;
        *progress = next;
        Ok(())
    }

    /// Forgets a lane the destination no longer has, so it holds no records back.
    async fn remove(&self, lane: &str) -> Result<(), LogError> {
        let mut progress = self.progress.lock().await;
        let mut next = progress.clone();
        next.lanes.remove(lane);
        self.log.commit(self.stream_id, next.acknowledged_seq(), next.encode()).await?;
        *progress = next;
        Ok(())
    }
}

pub(super) async fn run(delivery: Arc<Delivery>, stream_id: u64, mut shutdown: watch::Receiver<bool>) {
    let blob = match delivery.state.log.state(stream_id) {
        Ok(blob) => blob,
        Err(error) => {
            tracing::error!(stream_id, %error, "Cannot read the stream's log; its delivery stops.");
            return;
        }
    };
    let progress = Arc::new(StreamProgress {
        stream_id,
        log: delivery.state.log.clone(),
        progress: Mutex::new(Progress::decode(stream_id, blob.as_deref())),
    });
    let mut lanes: HashMap<LaneKind, JoinHandle<()>> = HashMap::new();
    while let Some(stream) = delivery.state.catalog.get_by_id(stream_id) {
        let configured: Vec<&str> = LaneKind::ALL
            .iter()
            .filter(|kind| kind.settings(&stream.destination).is_some())
            .map(|k| k.name())
            .collect();
        if let Err(error) = progress.register(&configured).await {
            tracing::error!(stream_id, %error, "Recording the stream's lanes failed; retrying.");
            if lane::wait(&mut shutdown, IDLE_POLL).await {
                break;
            }
            continue;
        }
        for kind in LaneKind::ALL {
            let recorded = progress.progress.lock().await.lanes.get(kind.name()).cloned();
            // A lane with a batch in progress finishes it even if the destination
            // changed since: that batch was promised.
            let wanted = kind.settings(&stream.destination).is_some()
                || recorded.as_ref().is_some_and(|lane| lane.batch.is_some());
            let running = lanes.get(&kind).is_some_and(|lane| !lane.is_finished());
            if wanted && !running && !*shutdown.borrow() {
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
    // Lanes watch the same shutdown signal (or the stream's deletion) and end by
    // themselves; the engine bounds how long this may take.
    for lane in lanes.into_values() {
        let _ = lane.await;
    }
}
