//! One stream's log: its segments, the group-commit writer task that appends to it,
//! and the readers that deliver from it. `Wal` (wal.rs) owns one of these per stream.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{self, Checkpoint, Slots, STATE_BYTES_MAX};
use crate::crypto::{DataKey, KeyWrapper, TAG_BYTES};
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::frame::{self, FrameHeader, FLAG_ENCRYPTED};
use crate::segment::{self, BadRange, SegmentHeader, Visit};
use crate::wal::{Poison, WalOptions};

/// The sequence numbers an append was given, once they are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Sequence number of the last record (equal to `first_seq - 1` for an empty append).
    pub last_seq: u64,
    /// Whether the records were written encrypted.
    pub encrypted: bool,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its sequence number within the stream.
    pub seq: u64,
    /// When it was accepted, in Unix milliseconds.
    pub arrival_ms: u64,
    /// Whether it was stored encrypted (it is returned decrypted).
    pub encrypted: bool,
    /// The record's bytes.
    pub data: Vec<u8>,
}

pub(crate) struct AppendRequest {
    pub(crate) records: Vec<Vec<u8>>,
    pub(crate) key_ref: Option<String>,
    pub(crate) arrival_ms: u64,
    pub(crate) reply: oneshot::Sender<Result<Appended>>,
}

/// What the writer task is asked to do.
pub(crate) enum WriterRequest {
    /// Append records (group-committed with other queued appends).
    Append(AppendRequest),
    /// Delete the segment being appended to if every record in it is acknowledged,
    /// so a fully delivered stream holds no segment on disk; the next append starts
    /// a new one. Sent by commits; only the writer may touch its active segment.
    Release,
}

/// A segment as readers see it. `end` and `last_seq` cover durable frames only.
#[derive(Clone)]
pub(crate) struct SegmentMeta {
    pub(crate) base_seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) header_len: u64,
    pub(crate) end: u64,
    /// Last durable sequence number in the segment; `base_seq - 1` when empty.
    pub(crate) last_seq: u64,
    pub(crate) key: Option<DataKey>,
    pub(crate) skips: Arc<[BadRange]>,
}

impl SegmentMeta {
    /// Bytes of the segment's frames holding records above `acked`. Exact for a
    /// segment entirely above or below it; for the one segment `acked` falls inside,
    /// an estimate in proportion to sequence numbers (frames are not indexed), so
    /// the error is less than one segment and nil once everything is delivered.
    fn undelivered_bytes(&self, acked: u64) -> u64 {
        let frames = self.end.saturating_sub(self.header_len);
        if self.last_seq <= acked {
            0
        } else if self.base_seq > acked {
            frames
        } else {
            let (above, all) = (self.last_seq - acked, self.last_seq - self.base_seq + 1);
            (u128::from(frames) * u128::from(above) / u128::from(all)) as u64
        }
    }
}

pub(crate) struct Shared {
    pub(crate) segments: Vec<SegmentMeta>,
    pub(crate) acked: u64,
    /// The consumer's opaque state (delivery progress), kept with the checkpoint.
    pub(crate) state: Option<Vec<u8>>,
}

impl Shared {
    pub(crate) fn undelivered_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.undelivered_bytes(self.acked)).sum()
    }
}

pub(crate) struct StreamLog {
    pub(crate) id: u64,
    pub(crate) dir: PathBuf,
    pub(crate) options: Arc<WalOptions>,
    pub(crate) keys: Arc<dyn KeyWrapper>,
    pub(crate) shared: Mutex<Shared>,
    /// The next sequence number that is not durable yet.
    pub(crate) durable: watch::Sender<u64>,
    pub(crate) requests: Mutex<Option<mpsc::Sender<WriterRequest>>>,
    pub(crate) poison: Arc<Poison>,
    /// Where the next checkpoint goes; locked across a commit, which serialises
    /// commits.
    pub(crate) checkpoint_slots: Mutex<Slots>,
    /// The stream's definition as last written beside the log.
    pub(crate) definition: Mutex<Option<Vec<u8>>>,
    /// The log's budget of descriptors kept open between uses.
    pub(crate) files: Arc<FileBudget>,
    /// Bytes of frames holding records not yet acknowledged, for back-pressure.
    /// Changed only with `shared` locked, so it always matches `shared`.
    pub(crate) undelivered_bytes: AtomicU64,
    /// The same summed over every stream of the log.
    pub(crate) total_undelivered_bytes: Arc<AtomicU64>,
}

impl StreamLog {
    /// Queues records for the writer and waits for the sync that covers them.
    pub(crate) async fn append(
        &self,
        records: Vec<Vec<u8>>,
        key_ref: Option<String>,
        arrival_ms: u64,
    ) -> Result<Appended> {
        self.poison.check()?;
        let sender = self.requests.lock().expect("lock").clone().ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        let request = WriterRequest::Append(AppendRequest { records, key_ref, arrival_ms, reply });
        sender.send(request).await.map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Sets the stream's undelivered count to what `shared` now holds, and moves
    /// the log's total by the difference. Call with `shared` locked.
    pub(crate) fn account(&self, shared: &Shared) {
        let now = shared.undelivered_bytes();
        let before = self.undelivered_bytes.swap(now, Ordering::Relaxed);
        if now >= before {
            self.total_undelivered_bytes.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.total_undelivered_bytes.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Takes the stream's bytes out of the log's total (the stream is going away).
    pub(crate) fn forget(&self) {
        let before = self.undelivered_bytes.swap(0, Ordering::Relaxed);
        self.total_undelivered_bytes.fetch_sub(before, Ordering::Relaxed);
    }

    pub(crate) fn durable_next(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Durably records that everything up to `seq` is delivered (never moving the
    /// position back) and, with `state`, replaces the consumer's state blob in the
    /// same atomic write; then deletes the segments that held only delivered
    /// records. Blocking.
    pub(crate) fn commit(&self, seq: u64, state: Option<Vec<u8>>) -> Result<()> {
        if state.as_ref().is_some_and(|s| s.len() > STATE_BYTES_MAX) {
            let bytes = state.as_ref().map_or(0, Vec::len);
            return Err(Error::StateTooLarge { bytes, limit: STATE_BYTES_MAX });
        }
        let seq = seq.min(self.durable_next().saturating_sub(1));
        // Commits are serialised by the slots' lock. The shared lock is not held
        // across the checkpoint's fsync, which would stall appends publishing their
        // segments.
        let mut slots = self.checkpoint_slots.lock().expect("lock");
        let checkpoint = {
            let shared = self.shared.lock().expect("lock");
            if seq <= shared.acked && state.is_none() {
                return Ok(());
            }
            let state = state.or_else(|| shared.state.clone()).filter(|s| !s.is_empty());
            Checkpoint { acked: shared.acked.max(seq), state }
        };
        checkpoint::write(&self.dir, &mut slots, &checkpoint)?;
        drop(slots);
        let acked = checkpoint.acked;
        let (deletable, release): (Vec<SegmentMeta>, bool) = {
            let mut shared = self.shared.lock().expect("lock");
            shared.acked = acked;
            shared.state = checkpoint.state;
            // The last segment is the writer's: it is deleted by the writer itself
            // (a release), once everything in it is acknowledged.
            let n_deletable = shared
                .segments
                .iter()
                .take(shared.segments.len().saturating_sub(1))
                .take_while(|s| s.last_seq <= acked)
                .count();
            let deletable = shared.segments.drain(..n_deletable).collect();
            self.account(&shared);
            let release = shared.segments.last().is_some_and(|s| s.last_seq <= acked && s.last_seq >= s.base_seq);
            (deletable, release)
        };
        if release {
            if let Some(sender) = self.requests.lock().expect("lock").as_ref() {
                // Best effort: with appends queued, the segment is not releasable anyway.
                let _ = sender.try_send(WriterRequest::Release);
            }
        }
        if !deletable.is_empty() {
            for segment in &deletable {
                fs::remove_file(&segment.path).at(&segment.path)?;
            }
            durable::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Descriptors the log may keep open *between* uses: a busy writer keeps its
/// segment open across commit groups, a reader that keeps finding records keeps its
/// segment open across reads, each only while it holds a permit from this budget.
/// Without one a file is opened for one group or one read and closed again. So the
/// descriptors the log holds are bounded by the budget plus the files in use at one
/// moment (one per blocking thread), whatever the number of streams.
pub(crate) struct FileBudget {
    free: AtomicU64,
}

impl FileBudget {
    pub(crate) fn new(files_open_max: usize) -> Arc<FileBudget> {
        Arc::new(FileBudget { free: AtomicU64::new(files_open_max as u64) })
    }

    /// A permit, if one is free.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<FilePermit> {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| free.checked_sub(1))
            .ok()
            .map(|_| FilePermit(self.clone()))
    }
}

/// Leave to keep one file open between uses; given back when dropped.
pub(crate) struct FilePermit(Arc<FileBudget>);

impl Drop for FilePermit {
    fn drop(&mut self) {
        self.0.free.fetch_add(1, Ordering::AcqRel);
    }
}

/// A writer that has had no append for this long closes its segment and gives its
/// permit back.
const WRITER_IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer's private state: the segment being appended to.
pub(crate) struct WriterState {
    pub(crate) next_seq: u64,
    pub(crate) active: Option<Active>,
}

pub(crate) struct Active {
    /// Open during a commit group, and between groups only with `permit` (see
    /// [`FileBudget`]): an idle stream holds no file descriptor, so the number of
    /// streams is not bounded by the process's limit.
    file: Option<File>,
    permit: Option<FilePermit>,
    path: PathBuf,
    base_seq: u64,
    header_len: u64,
    /// Where the next frame goes.
    offset: u64,
    allocated: u64,
    key_ref: Option<String>,
    key: Option<DataKey>,
    /// Frames encoded but not yet written.
    pending: Vec<u8>,
    segment_bytes_max: u64,
    /// `offset` when this group started (or `header_len` if created in it).
    group_start: u64,
    created_in_group: bool,
    last_seq: u64,
}

impl Active {
    /// The segment's file, opened again if it was closed while idle.
    fn file(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let file = fs::OpenOptions::new().read(true).write(true).open(&self.path).at(&self.path)?;
            self.file = Some(file);
        }
        Ok(self.file.as_ref().expect("opened above"))
    }
}

/// The group-commit loop: takes every queued request, writes them, syncs once, then
/// answers each. Ends when the request channel closes.
pub(crate) async fn run_writer(
    log: Arc<StreamLog>,
    mut state: WriterState,
    mut requests: mpsc::Receiver<WriterRequest>,
) {
    loop {
        let holds_file = state.active.as_ref().is_some_and(|a| a.file.is_some());
        let request = if holds_file {
            match tokio::time::timeout(WRITER_IDLE_CLOSE, requests.recv()).await {
                Ok(request) => request,
                Err(_) => {
                    // Idle: the descriptor and its permit go back.
                    if let Some(active) = state.active.as_mut() {
                        active.file = None;
                        active.permit = None;
                    }
                    requests.recv().await
                }
            }
        } else {
            requests.recv().await
        };
        let Some(request) = request else { break };
        let first = match request {
            WriterRequest::Append(append) => append,
            WriterRequest::Release => {
                state = release(&log, state).await;
                continue;
            }
        };
        let mut group = vec![first];
        let mut n_bytes: usize = group[0].records.iter().map(Vec::len).sum();
        let mut release_after = false;
        while n_bytes < log.options.group_bytes_max {
            match requests.try_recv() {
                Ok(WriterRequest::Append(request)) => {
                    n_bytes += request.records.iter().map(Vec::len).sum::<usize>();
                    group.push(request);
                }
                Ok(WriterRequest::Release) => {
                    release_after = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Requests queued before another stream's sync failed must not be written
        // now: a sync after a failed one can succeed without the data being safe.
        if let Some(reason) = log.poison.reason() {
            for request in group {
                let _ = request.reply.send(Err(Error::Poisoned(reason.clone())));
            }
            continue;
        }
        let task_log = log.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = write_group(&task_log, &mut state, &group);
            (state, group, outcome)
        })
        .await;
        let Ok((returned_state, group, outcome)) = joined else {
            log.poison.set(format!("writer of stream {:016x} panicked", log.id));
            return;
        };
        state = returned_state;
        publish(&log, &state, outcome.segments);
        if let Some(reason) = outcome.fatal {
            log.poison.set(reason);
        }
        for (request, result) in group.into_iter().zip(outcome.results) {
            let _ = request.reply.send(result);
        }
        if release_after {
            state = release(&log, state).await;
        }
        if let Some(active) = state.active.as_mut() {
            // Kept open for the next group only with a permit.
            if active.file.is_some() && active.permit.is_none() {
                active.permit = log.files.try_take();
                if active.permit.is_none() {
                    active.file = None;
                }
            }
        }
    }
}

/// Deletes the last segment if every record in it is acknowledged (see
/// [`WriterRequest::Release`]): the one being appended to, or, before the first
/// append after the log was opened, the last segment recovery found (appends never
/// go to that one). Readers stop seeing it before the file goes. A failure is
/// logged and left for recovery, which deletes acknowledged segments.
async fn release(log: &Arc<StreamLog>, mut state: WriterState) -> WriterState {
    let path = {
        let mut shared = log.shared.lock().expect("lock");
        let acked = shared.acked;
        match &state.active {
            Some(active) if active.pending.is_empty() && active.last_seq <= acked => {
                let base_seq = active.base_seq;
                shared.segments.retain(|s| s.base_seq != base_seq);
                state.active.take().map(|active| active.path.clone())
            }
            Some(_) => None,
            None if shared.segments.last().is_some_and(|s| s.last_seq <= acked) => {
                shared.segments.pop().map(|segment| segment.path)
            }
            None => None,
        }
        .inspect(|_| log.account(&shared))
    };
    let Some(path) = path else { return state };
    let dir = log.dir.clone();
    let removed = tokio::task::spawn_blocking(move || {
        fs::remove_file(&path).at(&path)?;
        durable::sync_dir(&dir)
    })
    .await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(stream = log.id, %error, "Could not delete a delivered segment; recovery will.")
        }
        Err(error) => tracing::warn!(stream = log.id, %error, "Deleting a delivered segment panicked."),
    }
    state
}

struct GroupOutcome {
    results: Vec<Result<Appended>>,
    /// Segments written in this group, in order, as readers should now see them.
    segments: Vec<SegmentMeta>,
    fatal: Option<String>,
}

/// Makes a group's frames visible to readers: segment metadata first, then the
/// durable sequence number, so a reader that sees the new number finds the frames.
fn publish(log: &StreamLog, state: &WriterState, segments: Vec<SegmentMeta>) {
    if segments.is_empty() {
        return;
    }
    let mut shared = log.shared.lock().expect("lock");
    let acked = shared.acked;
    let mut grown = 0u64;
    for meta in segments {
        let above = meta.undelivered_bytes(acked);
        // Nearly always the last segment: search from the end.
        match shared.segments.iter_mut().rev().find(|s| s.base_seq == meta.base_seq) {
            Some(existing) => {
                grown += above.saturating_sub(existing.undelivered_bytes(acked));
                *existing = meta;
            }
            None => {
                grown += above;
                shared.segments.push(meta);
            }
        }
    }
    // New frames are all above the acknowledged position: only growth, no recount.
    log.undelivered_bytes.fetch_add(grown, Ordering::Relaxed);
    log.total_undelivered_bytes.fetch_add(grown, Ordering::Relaxed);
    drop(shared);
    log.durable.send_replace(state.next_seq);
}

fn write_group(log: &StreamLog, state: &mut WriterState, group: &[AppendRequest]) -> GroupOutcome {
    let group_next_seq = state.next_seq;
    let mut rolled: Vec<Active> = Vec::new();
    if let Some(active) = state.active.as_mut() {
        active.group_start = active.offset;
        active.created_in_group = false;
    }
    let mut results = Vec::with_capacity(group.len());
    let mut io_error = None;
    for request in group {
        match append_request(log, state, &mut rolled, request) {
            Ok(appended) => results.push(Ok(appended)),
            Err(e @ (Error::RecordTooLarge { .. } | Error::Key { .. })) => results.push(Err(e)),
            Err(Error::Poisoned(reason)) => return fatal_outcome(group.len(), reason),
            Err(e) => {
                io_error = Some(e);
                break;
            }
        }
    }
    if io_error.is_none() {
        if let Some(active) = state.active.as_mut() {
            if let Err(e) = flush_pending(log, active) {
                io_error = Some(e);
            } else if active.offset > active.group_start {
                // The file is open: the group wrote to it.
                let file = active.file.as_ref().expect("written in this group");
                if let Err(e) = sync(log, file, false) {
                    // Never retried: the kernel may have dropped the dirty pages already.
                    let reason = format!("fdatasync of {} failed: {e}", active.path.display());
                    return fatal_outcome(group.len(), reason);
                }
            }
        }
    }
    if let Some(error) = io_error {
        return undo_group(state, rolled, group_next_seq, group.len(), error);
    }
    if let Some(active) = state.active.as_mut() {
        // An idle stream should not keep a group's worth of buffer: with many streams
        // that adds up to most of the process's memory.
        if active.pending.capacity() > PENDING_BYTES_RETAINED_MAX {
            active.pending = Vec::new();
        }
    }
    let mut segments: Vec<SegmentMeta> = rolled.iter().map(meta_of).collect();
    segments.extend(state.active.as_ref().filter(|a| a.offset > a.group_start || a.created_in_group).map(meta_of));
    GroupOutcome { results, segments, fatal: None }
}

fn fatal_outcome(n: usize, reason: String) -> GroupOutcome {
    let results = (0..n).map(|_| Err(Error::Poisoned(reason.clone()))).collect();
    GroupOutcome { results, segments: Vec::new(), fatal: Some(reason) }
}

/// After a failed write, removes every byte this group wrote so that a record whose
/// append failed can never be read back, then seals the segment.
fn undo_group(
    state: &mut WriterState,
    rolled: Vec<Active>,
    group_next_seq: u64,
    n: usize,
    error: Error,
) -> GroupOutcome {
    tracing::warn!(%error, "Write-ahead log write failed; undoing the group.");
    state.next_seq = group_next_seq;
    let touched = rolled.into_iter().chain(state.active.take());
    for mut active in touched {
        let undone = if active.created_in_group {
            fs::remove_file(&active.path).map_err(|e| e.to_string())
        } else {
            let group_start = active.group_start;
            active
                .file()
                .map_err(|e| e.to_string())
                .and_then(|f| f.set_len(group_start).and_then(|()| f.sync_all()).map_err(|e| e.to_string()))
        };
        if let Err(e) = undone {
            let reason = format!("could not undo a failed write to {}: {e}", active.path.display());
            return fatal_outcome(n, reason);
        }
    }
    let results = (0..n).map(|_| Err(error.replicate())).collect();
    GroupOutcome { results, segments: Vec::new(), fatal: None }
}

fn meta_of(active: &Active) -> SegmentMeta {
    SegmentMeta {
        base_seq: active.base_seq,
        path: active.path.clone(),
        header_len: active.header_len,
        end: active.offset,
        last_seq: active.last_seq,
        key: active.key.clone(),
        skips: Arc::from(Vec::new()),
    }
}

fn append_request(
    log: &StreamLog,
    state: &mut WriterState,
    rolled: &mut Vec<Active>,
    request: &AppendRequest,
) -> Result<Appended> {
    let limit = log.options.record_bytes_max;
    if let Some(record) = request.records.iter().find(|r| r.len() > limit) {
        return Err(Error::RecordTooLarge { bytes: record.len(), limit });
    }
    let key_matches = state.active.as_ref().is_some_and(|a| a.key_ref == request.key_ref);
    if !key_matches {
        roll(log, state, rolled, request.key_ref.as_deref())?;
    }
    let first_seq = state.next_seq;
    for record in &request.records {
        let sealed_len = record.len() + if request.key_ref.is_some() { TAG_BYTES } else { 0 };
        let needed = frame::frame_bytes(sealed_len) as u64;
        let active = state.active.as_ref().expect("rolled above");
        let used = active.offset + active.pending.len() as u64;
        if used + needed > log.options.segment_bytes_max && used > active.header_len {
            roll(log, state, rolled, request.key_ref.as_deref())?;
        }
        let seq = state.next_seq;
        let active = state.active.as_mut().expect("rolled above");
        let flags = if active.key.is_some() { FLAG_ENCRYPTED } else { 0 };
        let header = FrameHeader { len: sealed_len as u32, seq, arrival_ms: request.arrival_ms, flags };
        match &active.key {
            Some(key) => {
                frame::encode_with(&mut active.pending, header, |out| key.seal_into(seq, &header.aad(), record, out))
            }
            None => frame::encode(&mut active.pending, header, record),
        }
        active.last_seq = seq;
        state.next_seq += 1;
        if active.pending.len() >= log.options.write_chunk_bytes {
            flush_pending(log, active)?;
        }
    }
    Ok(Appended { first_seq, last_seq: state.next_seq - 1, encrypted: request.key_ref.is_some() })
}

/// Writes encoded frames at the segment's offset, growing the preallocation first.
fn flush_pending(log: &StreamLog, active: &mut Active) -> Result<()> {
    if active.pending.is_empty() {
        return Ok(());
    }
    let end = active.offset + active.pending.len() as u64;
    if end > active.allocated {
        let needed = end - active.offset;
        let step = needed.max(PREALLOCATE_STEP_BYTES.min(active.segment_bytes_max));
        let (offset, path) = (active.offset, active.path.clone());
        let file = active.file()?;
        // On a nearly full disk, reserve only what this write needs.
        active.allocated = match segment::preallocate(file, &path, offset, step) {
            Err(e) if e.is_no_space() && step > needed => segment::preallocate(file, &path, offset, needed)?,
            other => other?,
        };
    }
    #[cfg(any(test, feature = "failpoints"))]
    if let Some(n) = log.options.fail_write_number {
        if log.poison.n_writes.fetch_add(1, Ordering::SeqCst) == n {
            return Err(std::io::Error::from_raw_os_error(28)).at(&active.path); // ENOSPC
        }
    }
    let _ = log;
    let (offset, path) = (active.offset, active.path.clone());
    active.file()?;
    let file = active.file.as_ref().expect("opened above");
    file.write_all_at(&active.pending, offset).at(&path)?;
    active.offset = end;
    active.pending.clear();
    Ok(())
}

/// Syncs a segment file: `fdatasync`, or `fsync` when its length changed.
fn sync(log: &StreamLog, file: &File, all: bool) -> std::io::Result<()> {
    #[cfg(any(test, feature = "failpoints"))]
    if let Some(after) = log.options.fail_syncs_after {
        let n = log.poison.n_syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= after {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
    }
    let _ = log;
    if all {
        file.sync_all()
    } else {
        file.sync_data()
    }
}

/// Write buffer capacity a stream keeps between groups.
const PENDING_BYTES_RETAINED_MAX: usize = 256 << 10;

/// Segments grow by this much at a time, so most appends change no file size.
pub(crate) const PREALLOCATE_STEP_BYTES: u64 = 4 << 20;

/// Seals the active segment (writing and syncing what it holds) and starts a new one.
fn roll(log: &StreamLog, state: &mut WriterState, rolled: &mut Vec<Active>, key_ref: Option<&str>) -> Result<()> {
    let (raw_key, key) = match key_ref {
        Some(_) => {
            let (raw, key) = DataKey::generate();
            (Some(raw), Some(key))
        }
        None => (None, None),
    };
    let wrapped_key = match (key_ref, raw_key) {
        (Some(key_ref), Some(raw)) => {
            log.keys.wrap(key_ref, &raw).map_err(|source| Error::Key { key_ref: key_ref.to_string(), source })?
        }
        _ => Vec::new(),
    };
    if let Some(mut old) = state.active.take() {
        flush_pending(log, &mut old)?;
        // Sealed segments are complete on disk, and cut to their used length, before a
        // newer one exists, so recovery can treat damage in any segment but the last as
        // corruption, not a torn tail.
        let (offset, path) = (old.offset, old.path.clone());
        old.file()?.set_len(offset).at(&path)?;
        old.allocated = old.offset;
        sync(log, old.file()?, true)
            .map_err(|e| Error::Poisoned(format!("fsync of {} failed: {e}", path.display())))?;
        rolled.push(old);
    }
    let header = SegmentHeader {
        stream_id: log.id,
        base_seq: state.next_seq,
        created_ms: crate::wal::now_ms(),
        key_ref: key_ref.map(str::to_string),
        wrapped_key,
    };
    let step = PREALLOCATE_STEP_BYTES.min(log.options.segment_bytes_max);
    let (file, path, allocated) = segment::create(&log.dir, &header, step)?;
    let header_len = segment::encode_header(&header).len() as u64;
    state.active = Some(Active {
        file: Some(file),
        permit: None,
        path,
        base_seq: state.next_seq,
        header_len,
        offset: header_len,
        allocated,
        key_ref: header.key_ref,
        key,
        pending: Vec::new(),
        segment_bytes_max: log.options.segment_bytes_max,
        group_start: header_len,
        created_in_group: true,
        last_seq: state.next_seq - 1,
    });
    Ok(())
}

/// Reads a stream's durable records in order from a cursor. Obtained from
/// [`crate::Wal::reader`].
pub struct Reader {
    pub(crate) log: Arc<StreamLog>,
    pub(crate) next_seq: u64,
    pub(crate) open: Option<OpenSegment>,
}

pub(crate) struct OpenSegment {
    base_seq: u64,
    /// Open during a read, and between reads only with `permit` while reads keep
    /// finding records (see [`FileBudget`]): a reader waiting for records holds no
    /// descriptor.
    file: Option<File>,
    permit: Option<FilePermit>,
    /// Offset of the frame holding `next_seq`, when known.
    offset: u64,
}

impl Reader {
    /// The sequence number the next read starts at.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// Moves the cursor (forward or back) to `seq`.
    pub fn seek(&mut self, seq: u64) {
        self.next_seq = seq;
        self.open = None;
    }

    /// Waits until at least one record at or after the cursor is durable, or the log
    /// is closed.
    pub async fn wait(&self) {
        let mut durable = self.log.durable.subscribe();
        let _ = durable.wait_for(|next| *next > self.next_seq).await;
    }

    /// Reads up to `records_max` durable records and about `bytes_max` bytes from the
    /// cursor and advances it. Returns an empty vector when nothing new is durable.
    /// Blocking: call it from a blocking thread in async code.
    pub fn read(&mut self, records_max: usize, bytes_max: usize) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        let result = match self.read_open(records_max, bytes_max, &mut out) {
            Ok(()) => Ok(out),
            // The cursor has moved past what it read before the failure: those
            // records are handed over (dropping them would lose them from this
            // reader's view), and the failure recurs at the next read, which has
            // nothing to lose yet.
            Err(_) if !out.is_empty() => Ok(out),
            Err(error) => Err(error),
        };
        if let Some(open) = self.open.as_mut() {
            // The position is always kept; the descriptor only while reads find
            // records and a permit is free.
            let busy = result.as_ref().is_ok_and(|records| !records.is_empty());
            if busy && open.file.is_some() && open.permit.is_none() {
                open.permit = self.log.files.try_take();
            }
            if !busy || open.permit.is_none() {
                open.file = None;
                open.permit = None;
            }
        }
        result
    }

    fn read_open(&mut self, records_max: usize, bytes_max: usize, out: &mut Vec<StoredRecord>) -> Result<()> {
        let mut n_bytes = 0usize;
        let payload_max = self.log.options.record_bytes_max + TAG_BYTES;
        while out.len() < records_max && n_bytes < bytes_max {
            let durable_next = self.log.durable_next();
            if self.next_seq >= durable_next {
                break;
            }
            let Some(meta) = self.segment_for(self.next_seq) else { break };
            if self.next_seq < meta.base_seq {
                // Acknowledged and deleted, or cut out by recovery: skip ahead.
                self.seek(meta.base_seq);
                continue;
            }
            if self.open.as_ref().is_none_or(|o| o.base_seq != meta.base_seq) {
                self.open =
                    Some(OpenSegment { base_seq: meta.base_seq, file: None, permit: None, offset: meta.header_len });
            }
            if self.open.as_ref().is_some_and(|o| o.file.is_none()) {
                match File::open(&meta.path) {
                    Ok(file) => self.open.as_mut().expect("set above").file = Some(file),
                    // Deleted since it was looked up (everything in it acknowledged).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.listed(meta.base_seq) => {
                        self.open = None;
                        continue;
                    }
                    Err(e) => return Err(e).at(&meta.path),
                }
            }
            let open = self.open.as_mut().expect("opened above");
            let before = out.len();
            let (next_seq, stream) = (&mut self.next_seq, self.log.id);
            open.offset = segment::read_frames(
                open.file.as_ref().expect("opened above"),
                &meta.path,
                open.offset,
                meta.end,
                &meta.skips,
                payload_max,
                bytes_max - n_bytes,
                |_, header, payload| {
                    if header.seq < *next_seq {
                        return Ok(Visit::Continue);
                    }
                    if header.seq >= durable_next || out.len() >= records_max {
                        return Ok(Visit::Stop);
                    }
                    let encrypted = header.flags & FLAG_ENCRYPTED != 0;
                    let data = match (&meta.key, encrypted) {
                        (Some(key), true) => key
                            .open(header.seq, &header.aad(), payload)
                            .ok_or(Error::Decrypt { stream, seq: header.seq })?,
                        (None, true) => return Err(Error::Decrypt { stream, seq: header.seq }),
                        _ => payload.to_vec(),
                    };
                    n_bytes += data.len();
                    out.push(StoredRecord { seq: header.seq, arrival_ms: header.arrival_ms, encrypted, data });
                    *next_seq = header.seq + 1;
                    Ok(Visit::Continue)
                },
            )?;
            if out.len() > before {
                continue;
            }
            if open.offset < meta.end {
                break; // Stopped at the durable bound.
            }
            // This segment is exhausted: go on in the next one, if any.
            self.next_seq = self.next_seq.max(meta.last_seq + 1);
            match self.next_segment_after(meta.base_seq) {
                Some(base) => self.seek(self.next_seq.max(base)),
                None => break,
            }
        }
        Ok(())
    }

    fn listed(&self, base_seq: u64) -> bool {
        self.log.shared.lock().expect("lock").segments.iter().any(|s| s.base_seq == base_seq)
    }

    fn segment_for(&self, seq: u64) -> Option<SegmentMeta> {
        let shared = self.log.shared.lock().expect("lock");
        let index = shared.segments.partition_point(|s| s.base_seq <= seq);
        match index {
            0 => shared.segments.first().cloned(),
            i => shared.segments.get(i - 1).cloned(),
        }
    }

    fn next_segment_after(&self, base_seq: u64) -> Option<u64> {
        let shared = self.log.shared.lock().expect("lock");
        shared.segments.iter().map(|s| s.base_seq).find(|b| *b > base_seq)
    }
}

/// Used by recovery: the path of a segment's quarantine copy.
pub(crate) fn quarantine_path(quarantine_dir: &Path, stream: u64, base_seq: u64, start: u64) -> PathBuf {
    quarantine_dir.join(format!("{stream:016x}-{base_seq:020}-{start}.bin"))
}
