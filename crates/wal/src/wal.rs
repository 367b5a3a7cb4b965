//! `Wal`: the set of stream logs under one directory. Opening it runs recovery;
//! afterwards it routes appends, readers and acknowledgements to the right stream.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::checkpoint;
use crate::crypto::{DataKey, KeyWrapper};
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::meta;
use crate::segment::{self, BadRange};
use crate::stream_log::{self, Appended, Reader, SegmentMeta, Shared, StreamLog, WriterState};

/// A stream's identity in the log. The application assigns it and never reuses it.
pub type StreamId = u64;

/// Limits and sizes of the log. Every field has a unit in its name.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A new segment starts when the next frame would make the current one larger.
    pub segment_bytes_max: u64,
    /// The largest record accepted.
    pub record_bytes_max: usize,
    /// A commit group stops taking queued requests once it holds this many bytes.
    pub group_bytes_max: usize,
    /// Encoded frames are written to the file once this many bytes are pending.
    pub write_chunk_bytes: usize,
    /// Appends queued per stream before callers wait (back-pressure).
    pub queue_depth_max: usize,
    /// Segment files kept open between uses, across all streams (busy writers and
    /// readers); beyond it files are opened for each use. Idle streams hold none.
    pub files_open_max: usize,
    /// Fault injection: after this many successful syncs, every sync fails with EIO.
    #[cfg(any(test, feature = "failpoints"))]
    pub fail_syncs_after: Option<u64>,
    /// Fault injection: the write with this number (from 0) fails with ENOSPC.
    #[cfg(any(test, feature = "failpoints"))]
    pub fail_write_number: Option<u64>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 << 20,
            record_bytes_max: 1_024_000,
            group_bytes_max: 32 << 20,
            write_chunk_bytes: 256 << 10,
            queue_depth_max: 1024,
            files_open_max: 256,
            #[cfg(any(test, feature = "failpoints"))]
            fail_syncs_after: None,
            #[cfg(any(test, feature = "failpoints"))]
            fail_write_number: None,
        }
    }
}

/// How an append is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// In the clear.
    None,
    /// Encrypted under a data key wrapped by the named key-encryption key.
    Key(String),
}

/// A region recovery cut out of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The stream.
    pub stream: StreamId,
    /// The segment file it was in.
    pub segment: PathBuf,
    /// Byte range within the segment.
    pub start: u64,
    /// End of the byte range (exclusive).
    pub end: u64,
    /// Where a copy of the bytes was saved.
    pub copy: PathBuf,
}

/// Records missing from a stream's log: sequence numbers above the acknowledged
/// position that no segment holds (a segment file deleted, or frames in a damaged
/// region). Sequence numbers are dense, so a jump can only mean lost records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The stream.
    pub stream: StreamId,
    /// First missing sequence number.
    pub first_seq: u64,
    /// Last missing sequence number.
    pub last_seq: u64,
}

/// A stream whose log could not be recovered (an unreadable checkpoint, say). Its
/// files are left as they are; it takes no appends or reads.
#[derive(Debug, Clone)]
pub struct FailedStream {
    /// The stream.
    pub stream: StreamId,
    /// Why.
    pub reason: String,
}

/// What recovery did.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Streams found (recovered or not).
    pub n_streams: usize,
    /// Valid records found in segments still holding unacknowledged records.
    pub n_records: u64,
    /// Bytes cut from torn or garbage tails of last segments.
    pub torn_tail_bytes: u64,
    /// Damaged regions kept aside; the records in them are lost.
    pub quarantined: Vec<Quarantine>,
    /// Missing sequence ranges above the acknowledged position.
    pub gaps: Vec<Gap>,
    /// Streams whose logs could not be recovered; the others are served.
    pub failed: Vec<FailedStream>,
}

/// Fatal-error state shared by all stream logs.
pub(crate) struct Poison {
    reason: watch::Sender<Option<String>>,
    /// Syncs done so far, for the `fail_syncs_after` fault hook.
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) n_syncs: std::sync::atomic::AtomicU64,
    /// Writes done so far, for the `fail_write_number` fault hook.
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) n_writes: std::sync::atomic::AtomicU64,
}

impl Poison {
    pub(crate) fn check(&self) -> Result<()> {
        match self.reason() {
            Some(reason) => Err(Error::Poisoned(reason)),
            None => Ok(()),
        }
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    pub(crate) fn set(&self, reason: String) {
        tracing::error!(error = %reason, "Write-ahead log poisoned; refusing all further writes.");
        self.reason.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// The write-ahead log. Cheap to share behind an `Arc`.
pub struct Wal {
    dir: PathBuf,
    options: Arc<WalOptions>,
    keys: Arc<dyn KeyWrapper>,
    streams: Mutex<HashMap<StreamId, Arc<StreamLog>>>,
    /// Streams whose logs failed recovery.
    failed: Mutex<HashMap<StreamId, Unrecovered>>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    poison: Arc<Poison>,
    /// Where writer tasks run; captured at open so streams can be created from any thread.
    runtime: tokio::runtime::Handle,
    /// Undelivered bytes of all streams.
    total_undelivered_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Descriptors kept open between uses.
    files: Arc<stream_log::FileBudget>,
}

/// A stream whose log failed recovery: why, and its definition if readable.
struct Unrecovered {
    reason: String,
    definition: Option<Vec<u8>>,
}

/// Where logs moved out of the way by [`Wal::set_aside`] go.
const SET_ASIDE_DIR: &str = "set-aside";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn stream_dir_name(id: StreamId) -> String {
    format!("{id:016x}")
}

fn check_definition(definition: &[u8]) -> Result<()> {
    if definition.len() > meta::META_BYTES_MAX {
        return Err(Error::StateTooLarge { bytes: definition.len(), limit: meta::META_BYTES_MAX });
    }
    Ok(())
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers every stream in it.
    /// Must be called inside a Tokio runtime with its time driver enabled: it starts
    /// one writer task per stream, and writers close idle files on a timer.
    ///
    /// A stream whose log cannot be recovered (its checkpoint unreadable, a file
    /// that cannot be read) is left as it is on disk and reported in
    /// [`RecoveryReport::failed`]; the others are served. A data key that cannot be
    /// unwrapped fails the whole open ([`Error::Key`]): the key-encryption key is
    /// missing or wrong, which the operator must fix, never a reason to go on.
    pub fn open(dir: &Path, options: WalOptions, keys: Arc<dyn KeyWrapper>) -> Result<(Wal, RecoveryReport)> {
        fs::create_dir_all(dir).at(dir)?;
        let files = stream_log::FileBudget::new(options.files_open_max);
        let wal = Wal {
            files,
            dir: dir.to_path_buf(),
            options: Arc::new(options),
            keys,
            streams: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            writers: Mutex::new(Vec::new()),
            poison: Arc::new(Poison {
                reason: watch::channel(None).0,
                #[cfg(any(test, feature = "failpoints"))]
                n_syncs: std::sync::atomic::AtomicU64::new(0),
                #[cfg(any(test, feature = "failpoints"))]
                n_writes: std::sync::atomic::AtomicU64::new(0),
            }),
            runtime: tokio::runtime::Handle::current(),
            total_undelivered_bytes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let mut report = RecoveryReport::default();
        let mut entries: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = u64::from_str_radix(&name, 16) else { continue };
            if name.len() != 16 || !entry.path().is_dir() {
                continue;
            }
            entries.push((id, entry.path()));
        }
        entries.sort();
        for (id, path) in entries {
            report.n_streams += 1;
            match wal.recover_stream(id, &path, &mut report) {
                Ok(log) => {
                    wal.streams.lock().expect("lock").insert(id, log);
                }
                Err(error @ Error::Key { .. }) => return Err(error),
                Err(error) => {
                    let reason = error.to_string();
                    tracing::error!(stream = id, %reason, "The stream's log could not be recovered; its files are left as they are and it is unavailable until this is fixed.");
                    let definition = meta::read(&path).ok().flatten();
                    report.failed.push(FailedStream { stream: id, reason: reason.clone() });
                    wal.failed.lock().expect("lock").insert(id, Unrecovered { reason, definition });
                }
            }
        }
        Ok((wal, report))
    }

    /// A receiver that turns `Some(reason)` when the log is poisoned by a failed sync.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.poison.reason.subscribe()
    }

    /// Creates an empty log for a new stream, with the stream's definition (an
    /// opaque blob, see [`Wal::definition`]). The stream directory is durable when
    /// this returns. Refuses an id that has a log, or a directory, already.
    pub fn create_stream(&self, id: StreamId, definition: &[u8]) -> Result<()> {
        let mut streams = self.streams.lock().expect("lock");
        let path = self.dir.join(stream_dir_name(id));
        if streams.contains_key(&id) || self.failed.lock().expect("lock").contains_key(&id) || path.exists() {
            return Err(Error::StreamExists(id));
        }
        check_definition(definition)?;
        fs::create_dir_all(&path).at(&path)?;
        meta::write(&path, definition)?;
        durable::sync_dir(&self.dir)?;
        let shared = Shared { segments: Vec::new(), acked: 0, state: None };
        let log = self.start_stream(id, path, shared, 1, Default::default(), Some(definition.to_vec()));
        streams.insert(id, log);
        Ok(())
    }

    /// Durably replaces a stream's definition (also of a stream whose log failed
    /// recovery).
    pub fn define_stream(&self, id: StreamId, definition: &[u8]) -> Result<()> {
        check_definition(definition)?;
        let path = self.dir.join(stream_dir_name(id));
        if let Some(log) = self.streams.lock().expect("lock").get(&id).cloned() {
            meta::write(&path, definition)?;
            *log.definition.lock().expect("lock") = Some(definition.to_vec());
            return Ok(());
        }
        let mut failed = self.failed.lock().expect("lock");
        let unrecovered = failed.get_mut(&id).ok_or(Error::UnknownStream(id))?;
        meta::write(&path, definition)?;
        unrecovered.definition = Some(definition.to_vec());
        Ok(())
    }

    /// The stream's definition as last written; `None` for a log written before
    /// definitions were kept, or whose definition file is unreadable.
    pub fn definition(&self, id: StreamId) -> Option<Vec<u8>> {
        if let Some(log) = self.streams.lock().expect("lock").get(&id) {
            return log.definition.lock().expect("lock").clone();
        }
        self.failed.lock().expect("lock").get(&id).and_then(|unrecovered| unrecovered.definition.clone())
    }

    /// Deletes a stream's log and everything in it (also of a stream whose log
    /// failed recovery).
    pub fn delete_stream(&self, id: StreamId) -> Result<()> {
        let path = self.forget_stream(id)?;
        fs::remove_dir_all(&path).at(&path)?;
        durable::sync_dir(&self.dir)
    }

    /// Moves a stream's log, whole, out of the way (to `set-aside/` in the log's
    /// directory, named by the stream id and the time) and forgets it: for a log
    /// that nothing can be delivered from, which must not be deleted either.
    /// Returns where it went.
    pub fn set_aside(&self, id: StreamId) -> Result<PathBuf> {
        let path = self.forget_stream(id)?;
        let aside = self.dir.join(SET_ASIDE_DIR);
        fs::create_dir_all(&aside).at(&aside)?;
        let target = aside.join(format!("{}-{}", stream_dir_name(id), now_ms()));
        fs::rename(&path, &target).at(&target)?;
        durable::sync_dir(&aside)?;
        durable::sync_dir(&self.dir)?;
        Ok(target)
    }

    /// Stops a stream's writer (no more appends) and forgets the stream, also one
    /// whose log failed recovery; returns its directory, left as it is.
    fn forget_stream(&self, id: StreamId) -> Result<PathBuf> {
        if let Some(log) = self.streams.lock().expect("lock").remove(&id) {
            log.requests.lock().expect("lock").take();
            log.forget();
            return Ok(log.dir.clone());
        }
        self.failed.lock().expect("lock").remove(&id).ok_or(Error::UnknownStream(id))?;
        Ok(self.dir.join(stream_dir_name(id)))
    }

    /// The streams that have a usable log.
    pub fn streams(&self) -> Vec<StreamId> {
        self.streams.lock().expect("lock").keys().copied().collect()
    }

    /// The streams whose logs failed recovery, and why.
    pub fn failed_streams(&self) -> Vec<FailedStream> {
        let failed = self.failed.lock().expect("lock");
        failed
            .iter()
            .map(|(id, unrecovered)| FailedStream { stream: *id, reason: unrecovered.reason.clone() })
            .collect()
    }

    /// Appends records; resolves once they are durable.
    pub async fn append(&self, id: StreamId, records: Vec<Vec<u8>>, encryption: Encryption) -> Result<Appended> {
        let key_ref = match encryption {
            Encryption::None => None,
            Encryption::Key(key_ref) => Some(key_ref),
        };
        self.stream(id)?.append(records, key_ref, now_ms()).await
    }

    /// A reader positioned at `from`, or just after the acknowledged records if later.
    pub fn reader(&self, id: StreamId, from: u64) -> Result<Reader> {
        let log = self.stream(id)?;
        let acked = log.shared.lock().expect("lock").acked;
        Ok(Reader { log, next_seq: from.max(acked + 1), open: None })
    }

    /// Durably acknowledges every record up to and including `seq`, and deletes
    /// segments that hold nothing newer. The consumer state is kept. Blocking.
    pub fn acknowledge(&self, id: StreamId, seq: u64) -> Result<()> {
        self.stream(id)?.commit(seq, None)
    }

    /// Durably acknowledges every record up to `seq` (never moving back) and
    /// replaces the consumer's state (an opaque blob of at most 64 KiB; empty for
    /// none) in one atomic write. The delivery engine records there the batch it is
    /// about to upload, so that after a crash it rebuilds exactly that batch.
    /// Blocking.
    pub fn commit(&self, id: StreamId, seq: u64, state: Vec<u8>) -> Result<()> {
        self.stream(id)?.commit(seq, Some(state))
    }

    /// The consumer state last committed, if any.
    pub fn state(&self, id: StreamId) -> Result<Option<Vec<u8>>> {
        Ok(self.stream(id)?.shared.lock().expect("lock").state.clone())
    }

    /// The highest acknowledged sequence number (0 when none).
    pub fn acknowledged(&self, id: StreamId) -> Result<u64> {
        Ok(self.stream(id)?.shared.lock().expect("lock").acked)
    }

    /// The next sequence number to be assigned: everything below it is durable.
    pub fn durable_next(&self, id: StreamId) -> Result<u64> {
        Ok(self.stream(id)?.durable_next())
    }

    /// Records appended and not yet acknowledged.
    pub fn undelivered_records(&self, id: StreamId) -> Result<u64> {
        let log = self.stream(id)?;
        let acked = log.shared.lock().expect("lock").acked;
        Ok(log.durable_next().saturating_sub(1).saturating_sub(acked))
    }

    /// Bytes the log holds for records not yet acknowledged (their frames), for
    /// back-pressure. Delivered records never count, even while their segment is
    /// still on disk.
    pub fn undelivered_bytes(&self, id: StreamId) -> Result<u64> {
        Ok(self.stream(id)?.undelivered_bytes.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// [`Wal::undelivered_bytes`] summed over every stream.
    pub fn undelivered_bytes_total(&self) -> u64 {
        self.total_undelivered_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting appends and waits for every queued append to be answered.
    pub async fn shutdown(&self) {
        for log in self.streams.lock().expect("lock").values() {
            log.requests.lock().expect("lock").take();
        }
        let writers = std::mem::take(&mut *self.writers.lock().expect("lock"));
        for writer in writers {
            let _ = writer.await;
        }
    }

    fn stream(&self, id: StreamId) -> Result<Arc<StreamLog>> {
        if let Some(log) = self.streams.lock().expect("lock").get(&id) {
            return Ok(log.clone());
        }
        match self.failed.lock().expect("lock").get(&id) {
            Some(unrecovered) => Err(Error::StreamUnavailable { stream: id, reason: unrecovered.reason.clone() }),
            None => Err(Error::UnknownStream(id)),
        }
    }

    fn start_stream(
        &self,
        id: StreamId,
        dir: PathBuf,
        shared: Shared,
        next_seq: u64,
        slots: checkpoint::Slots,
        definition: Option<Vec<u8>>,
    ) -> Arc<StreamLog> {
        let (sender, receiver) = mpsc::channel(self.options.queue_depth_max);
        let log = Arc::new(StreamLog {
            id,
            dir,
            options: self.options.clone(),
            keys: self.keys.clone(),
            shared: Mutex::new(shared),
            durable: watch::channel(next_seq).0,
            requests: Mutex::new(Some(sender)),
            poison: self.poison.clone(),
            checkpoint_slots: Mutex::new(slots),
            definition: Mutex::new(definition),
            files: self.files.clone(),
            undelivered_bytes: std::sync::atomic::AtomicU64::new(0),
            total_undelivered_bytes: self.total_undelivered_bytes.clone(),
        });
        log.account(&log.shared.lock().expect("lock"));
        let state = WriterState { next_seq, active: None };
        let writer = self.runtime.spawn(stream_log::run_writer(log.clone(), state, receiver));
        self.writers.lock().expect("lock").push(writer);
        log
    }

    fn recover_stream(&self, id: StreamId, dir: &Path, report: &mut RecoveryReport) -> Result<Arc<StreamLog>> {
        let definition = meta::read(dir)?;
        let (checkpoint::Checkpoint { acked, state }, slots) = checkpoint::read(dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).at(dir)? {
            let path = entry.at(dir)?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.ends_with(".tmp") {
                // An unfinished segment creation or checkpoint write: never acknowledged.
                fs::remove_file(&path).at(&path)?;
            } else if let Some(base) = segment::parse_segment_file_name(&name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let payload_max = self.options.record_bytes_max + crate::crypto::TAG_BYTES;
        let mut segments = Vec::new();
        let mut last_seq = acked;
        // The next sequence number a record must have; a higher one means records
        // between were lost.
        let mut expected = acked + 1;
        let mut removed_any = false;
        for (i, base) in bases.iter().enumerate() {
            let path = dir.join(segment::segment_file_name(*base));
            let is_last = i + 1 == bases.len();
            // Every record of a segment whose successor starts at or below the
            // acknowledged position is delivered: it is deleted without being read
            // (a commit interrupted before deleting it, say).
            if bases.get(i + 1).is_some_and(|next| *next <= acked + 1) {
                fs::remove_file(&path).at(&path)?;
                removed_any = true;
                continue;
            }
            let data = fs::read(&path).at(&path)?;
            let scan = match segment::scan(&data, &path, last_seq.min(base.saturating_sub(1)), payload_max) {
                Ok(scan) => scan,
                Err(Error::Corrupt { reason, .. }) => {
                    let whole = BadRange { start: 0, end: data.len() as u64 };
                    self.quarantine(id, &path, *base, &data, &whole, report)?;
                    tracing::error!(segment = %path.display(), %reason, "Segment header is corrupt; the whole segment was quarantined.");
                    fs::remove_file(&path).at(&path)?;
                    removed_any = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for bad in &scan.bad_ranges {
                self.quarantine(id, &path, *base, &data, bad, report)?;
            }
            let end = scan.valid_end;
            if let Some(tail) = &scan.garbage_tail {
                if is_last {
                    report.torn_tail_bytes += tail.end - tail.start;
                    tracing::warn!(segment = %path.display(), offset = tail.start, "Cut a torn tail from the last segment.");
                } else {
                    // A sealed segment was synced before its successor was created, so
                    // damage at its end is corruption, not an interrupted write.
                    self.quarantine(id, &path, *base, &data, tail, report)?;
                }
            }
            let mut missing: Vec<(u64, u64)> = Vec::new();
            // A segment's base (in its checksummed header) says every sequence number
            // below it was written, even when the segment has no readable frame.
            if *base > expected {
                missing.push((expected, base - 1));
                expected = *base;
            }
            if let Some(first) = scan.first_seq {
                if first > expected {
                    missing.push((expected, first - 1));
                }
            }
            for (before, after) in &scan.jumps {
                let from = (before + 1).max(acked + 1);
                if from < *after {
                    missing.push((from, after - 1));
                }
            }
            for (first_seq, last_seq) in missing {
                let gap = Gap { stream: id, first_seq, last_seq };
                tracing::error!(
                    stream = id,
                    first_seq,
                    last_seq,
                    n_records = last_seq - first_seq + 1,
                    before_segment = %path.display(),
                    "Records missing from the write-ahead log (a segment file deleted, or lost in a damaged region); they cannot be delivered."
                );
                report.gaps.push(gap);
            }
            let segment_last = scan.last_seq.unwrap_or(base.saturating_sub(1));
            last_seq = last_seq.max(segment_last);
            expected = expected.max(last_seq + 1);
            if segment_last <= acked {
                // Everything in it is delivered (the last segment of a fully
                // delivered stream): the next append starts a new segment anyway.
                fs::remove_file(&path).at(&path)?;
                removed_any = true;
                continue;
            }
            if is_last && (data.len() as u64) > end {
                // Cut the tail (torn bytes or unused preallocation) so the segment is sealed as-is.
                let file = fs::OpenOptions::new().write(true).open(&path).at(&path)?;
                file.set_len(end).at(&path)?;
                file.sync_all().at(&path)?;
            }
            report.n_records += scan.n_records;
            let key = match &scan.header.key_ref {
                Some(key_ref) => {
                    let raw = self
                        .keys
                        .unwrap(key_ref, &scan.header.wrapped_key)
                        .map_err(|source| Error::Key { key_ref: key_ref.clone(), source })?;
                    Some(DataKey::from_raw(&raw))
                }
                None => None,
            };
            let mut skips = scan.bad_ranges.clone();
            skips.extend(scan.garbage_tail.filter(|_| !is_last));
            segments.push(SegmentMeta {
                base_seq: *base,
                path,
                header_len: scan.header_len,
                end,
                last_seq: segment_last,
                key,
                skips: Arc::from(skips),
            });
        }
        if removed_any {
            durable::sync_dir(dir)?;
        }
        let next_seq = last_seq.max(acked) + 1;
        let shared = Shared { segments, acked, state };
        Ok(self.start_stream(id, dir.to_path_buf(), shared, next_seq, slots, definition))
    }

    fn quarantine(
        &self,
        id: StreamId,
        path: &Path,
        base: u64,
        data: &[u8],
        bad: &BadRange,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        let quarantine_dir = self.dir.join("quarantine");
        fs::create_dir_all(&quarantine_dir).at(&quarantine_dir)?;
        let copy = stream_log::quarantine_path(&quarantine_dir, id, base, bad.start);
        fs::write(&copy, &data[bad.start as usize..bad.end as usize]).at(&copy)?;
        tracing::error!(
            stream = id,
            segment = %path.display(),
            start = bad.start,
            end = bad.end,
            copy = %copy.display(),
            "Quarantined a corrupt region of the write-ahead log; the records in it are lost."
        );
        report.quarantined.push(Quarantine {
            stream: id,
            segment: path.to_path_buf(),
            start: bad.start,
            end: bad.end,
            copy,
        });
        Ok(())
    }
}
