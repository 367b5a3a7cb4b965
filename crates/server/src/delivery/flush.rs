//! Flushes asked for through `POST /_sluice/flush` (a test's "deliver now"): a
//! generation counter every lane watches, and what each lane reported since. A
//! lane that sees a new generation reads its log to the end, delivers what it
//! buffers whatever the buffering hints, and reports the generation done; a
//! delivery attempt that fails is reported too, so a flush answers with the
//! failure instead of waiting out the retries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// How long a flush waits for the workers of streams that have none yet.
const LANES_START_WAIT: Duration = Duration::from_secs(2);

/// The flush generations and every running lane's reports.
pub struct FlushBoard {
    /// The latest flush's generation; lanes watch it to wake up.
    generation: watch::Sender<u64>,
    /// The latest generation that asked for every stream, and for each stream the
    /// latest that named it.
    requested: Mutex<(u64, HashMap<u64, u64>)>,
    lanes: Mutex<HashMap<(u64, &'static str), LaneReport>>,
    /// Woken on every report.
    reported: tokio::sync::Notify,
    /// Asks the delivery supervisor to start workers for new streams now.
    reconcile: tokio::sync::Notify,
}

/// What one lane reported.
#[derive(Debug, Clone, Default)]
struct LaneReport {
    /// The last generation this lane delivered everything for.
    flushed: u64,
    /// Batches and records delivered since the lane started.
    batches: u64,
    records: u64,
    /// The last failed attempt: the generation current then, and why.
    error: Option<(u64, String)>,
}

/// How a flush ended for one lane of one stream.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaneOutcome {
    /// The stream's id.
    #[serde(skip)]
    pub stream_id: u64,
    /// `destination` or `backup`.
    pub lane: &'static str,
    /// How it ended.
    pub status: LaneStatus,
    /// Batches and records this lane delivered while the flush waited.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a flush ended for one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneStatus {
    /// Everything buffered at the request is delivered (maybe nothing was).
    Delivered,
    /// An attempt failed; delivery goes on retrying.
    Failed,
    /// The lane stopped meanwhile: the stream was deleted or changed, or the
    /// server is stopping.
    Stopped,
    /// None of these within the wait.
    Pending,
}

impl Default for FlushBoard {
    fn default() -> Self {
        FlushBoard {
            generation: watch::Sender::new(0),
            requested: Mutex::default(),
            lanes: Mutex::default(),
            reported: tokio::sync::Notify::new(),
            reconcile: tokio::sync::Notify::new(),
        }
    }
}

impl FlushBoard {
    /// A receiver that changes with every flush, for a lane to wake up.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The latest flush generation that asks for `stream_id` (0: none yet).
    pub(super) fn target(&self, stream_id: u64) -> u64 {
        let requested = self.requested.lock().expect("lock");
        requested.0.max(requested.1.get(&stream_id).copied().unwrap_or(0))
    }

    /// Resolves when a flush wants workers for streams that have none yet.
    pub(super) async fn reconcile_requested(&self) {
        self.reconcile.notified().await;
    }

    /// A lane starts: it is waited for from now on.
    pub(super) fn started(&self, stream_id: u64, lane: &'static str) {
        self.lanes.lock().expect("lock").entry((stream_id, lane)).or_default();
        self.reported.notify_waiters();
    }

    /// A lane stopped (stream deleted, lane removed, lease lost, shutdown).
    pub(super) fn stopped(&self, stream_id: u64, lane: &'static str) {
        self.lanes.lock().expect("lock").remove(&(stream_id, lane));
        self.reported.notify_waiters();
    }

    /// Whether a lane of any of `streams` still runs.
    pub fn running(&self, streams: &[u64]) -> bool {
        self.lanes.lock().expect("lock").keys().any(|(id, _)| streams.contains(id))
    }

    /// The lane delivered a batch.
    pub(super) fn delivered(&self, stream_id: u64, lane: &'static str, records: u64) {
        self.report(stream_id, lane, |r| {
            r.batches += 1;
            r.records += records;
            r.error = None;
        });
    }

    /// The lane has delivered everything it read by `generation`.
    pub(super) fn flushed(&self, stream_id: u64, lane: &'static str, generation: u64) {
        self.report(stream_id, lane, |r| r.flushed = r.flushed.max(generation));
    }

    /// A delivery attempt failed (it is retried).
    pub(super) fn failed(&self, stream_id: u64, lane: &'static str, error: &str) {
        let generation = *self.generation.borrow();
        self.report(stream_id, lane, |r| r.error = Some((generation, error.to_string())));
    }

    fn report(&self, stream_id: u64, lane: &'static str, change: impl FnOnce(&mut LaneReport)) {
        change(self.lanes.lock().expect("lock").entry((stream_id, lane)).or_default());
        self.reported.notify_waiters();
    }

    /// Asks every lane of `streams` (every stream: `None`) to deliver what it
    /// buffers now, and waits, at most `wait`, until each has delivered or failed.
    /// `active` are the streams that should have lanes: a stream that became
    /// `ACTIVE` a moment ago gets its workers first (within [`LANES_START_WAIT`];
    /// in cluster mode, streams another node delivers get none here).
    pub async fn flush(&self, streams: Option<&[u64]>, active: &[u64], wait: Duration) -> Vec<LaneOutcome> {
        let wanted = |id: u64| streams.is_none_or(|ids| ids.contains(&id));
        let starting = tokio::time::Instant::now() + LANES_START_WAIT;
        loop {
            let notified = self.reported.notified();
            let missing = {
                let lanes = self.lanes.lock().expect("lock");
                active.iter().any(|id| wanted(*id) && !lanes.keys().any(|(lane_stream, _)| lane_stream == id))
            };
            if !missing || tokio::time::Instant::now() >= starting {
                break;
            }
            self.reconcile.notify_one();
            let _ = tokio::time::timeout_at(starting, notified).await;
        }
        let before: HashMap<(u64, &'static str), LaneReport> = {
            let lanes = self.lanes.lock().expect("lock");
            lanes.iter().filter(|((id, _), _)| wanted(*id)).map(|(k, r)| (*k, r.clone())).collect()
        };
        let generation = {
            let mut requested = self.requested.lock().expect("lock");
            let generation = *self.generation.borrow() + 1;
            match streams {
                None => requested.0 = generation,
                Some(ids) => requested.1.extend(ids.iter().map(|id| (*id, generation))),
            }
            self.generation.send_replace(generation);
            generation
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.reported.notified();
            let outcomes = self.outcomes(&before, generation);
            let done = outcomes.iter().all(|o| o.status != LaneStatus::Pending);
            if done || tokio::time::Instant::now() >= deadline {
                return outcomes;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn outcomes(&self, before: &HashMap<(u64, &'static str), LaneReport>, generation: u64) -> Vec<LaneOutcome> {
        let lanes = self.lanes.lock().expect("lock");
        let mut outcomes: Vec<LaneOutcome> = before
            .iter()
            .map(|((stream_id, lane), was)| {
                let now = lanes.get(&(*stream_id, *lane));
                let (status, error) = match now {
                    // Stopped meanwhile: what it buffered stays in the log.
                    None => (LaneStatus::Stopped, None),
                    Some(r) if r.flushed >= generation => (LaneStatus::Delivered, None),
                    Some(LaneReport { error: Some((at, why)), .. }) if *at >= generation => {
                        (LaneStatus::Failed, Some(why.clone()))
                    }
                    Some(_) => (LaneStatus::Pending, None),
                };
                let now = now.cloned().unwrap_or_default();
                LaneOutcome {
                    stream_id: *stream_id,
                    lane,
                    status,
                    batches: now.batches.saturating_sub(was.batches),
                    records: now.records.saturating_sub(was.records),
                    error,
                }
            })
            .collect();
        outcomes.sort_by_key(|o| (o.stream_id, o.lane));
        outcomes
    }
}
