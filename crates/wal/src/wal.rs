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
use crate::error::{Error, IoContext, Result};
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

/// What recovery did.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Streams found.
    pub n_streams: usize,
    /// Valid records found.
    pub n_records: u64,
    /// Bytes cut from torn or garbage tails of last segments.
    pub torn_tail_bytes: u64,
    /// Damaged regions kept aside; the records in them are lost.
    pub quarantined: Vec<Quarantine>,
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
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    poison: Arc<Poison>,
    /// Where writer tasks run; captured at open so streams can be created from any thread.
    runtime: tokio::runtime::Handle,
    /// Bytes of all segments of all streams.
    total_retained_bytes: Arc<std::sync::atomic::AtomicU64>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn stream_dir_name(id: StreamId) -> String {
    format!("{id:016x}")
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers every stream in it.
    /// Must be called inside a Tokio runtime: it starts one writer task per stream.
    pub fn open(dir: &Path, options: WalOptions, keys: Arc<dyn KeyWrapper>) -> Result<(Wal, RecoveryReport)> {
        fs::create_dir_all(dir).at(dir)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            options: Arc::new(options),
            keys,
            streams: Mutex::new(HashMap::new()),
            writers: Mutex::new(Vec::new()),
            poison: Arc::new(Poison {
                reason: watch::channel(None).0,
                #[cfg(any(test, feature = "failpoints"))]
                n_syncs: std::sync::atomic::AtomicU64::new(0),
                #[cfg(any(test, feature = "failpoints"))]
                n_writes: std::sync::atomic::AtomicU64::new(0),
            }),
            runtime: tokio::runtime::Handle::current(),
            total_retained_bytes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let mut report = RecoveryReport::default();
        for entry in fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = u64::from_str_radix(&name, 16) else { continue };
            if name.len() != 16 || !entry.path().is_dir() {
                continue;
            }
            let log = wal.recover_stream(id, &entry.path(), &mut report)?;
            report.n_streams += 1;
            wal.streams.lock().expect("lock").insert(id, log);
        }
        Ok((wal, report))
    }

    /// A receiver that turns `Some(reason)` when the log is poisoned by a failed sync.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.poison.reason.subscribe()
    }

    /// Creates an empty log for a new stream. The stream directory is durable when
    /// this returns.
    pub fn create_stream(&self, id: StreamId) -> Result<()> {
        let mut streams = self.streams.lock().expect("lock");
        if streams.contains_key(&id) {
            return Err(Error::StreamExists(id));
        }
        let path = self.dir.join(stream_dir_name(id));
        fs::create_dir_all(&path).at(&path)?;
        segment::sync_dir(&self.dir)?;
        let shared = Shared { segments: Vec::new(), acked: 0, state: None };
        let log = self.start_stream(id, path, shared, 1);
        streams.insert(id, log);
        Ok(())
    }

    /// Deletes a stream's log and everything in it.
    pub fn delete_stream(&self, id: StreamId) -> Result<()> {
        let log = self.streams.lock().expect("lock").remove(&id).ok_or(Error::UnknownStream(id))?;
        log.requests.lock().expect("lock").take();
        log.retain(-(log.retained_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64));
        fs::remove_dir_all(&log.dir).at(&log.dir)?;
        segment::sync_dir(&self.dir)
    }

    /// The streams that have a log.
    pub fn streams(&self) -> Vec<StreamId> {
        self.streams.lock().expect("lock").keys().copied().collect()
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

    /// Bytes of segment files held for a stream (records not yet acknowledged, plus
    /// the rest of the segments they share), for back-pressure.
    pub fn retained_bytes(&self, id: StreamId) -> Result<u64> {
        Ok(self.stream(id)?.retained_bytes.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// [`Wal::retained_bytes`] summed over every stream.
    pub fn retained_bytes_total(&self) -> u64 {
        self.total_retained_bytes.load(std::sync::atomic::Ordering::Relaxed)
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
        self.streams.lock().expect("lock").get(&id).cloned().ok_or(Error::UnknownStream(id))
    }

    fn start_stream(&self, id: StreamId, dir: PathBuf, shared: Shared, next_seq: u64) -> Arc<StreamLog> {
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
            retained_bytes: std::sync::atomic::AtomicU64::new(0),
            total_retained_bytes: self.total_retained_bytes.clone(),
        });
        let retained: u64 = log.shared.lock().expect("lock").segments.iter().map(|s| s.end).sum();
        log.retain(retained as i64);
        let state = WriterState { next_seq, active: None };
        let writer = self.runtime.spawn(stream_log::run_writer(log.clone(), state, receiver));
        self.writers.lock().expect("lock").push(writer);
        log
    }

    fn recover_stream(&self, id: StreamId, dir: &Path, report: &mut RecoveryReport) -> Result<Arc<StreamLog>> {
        let checkpoint::Checkpoint { acked, state } = checkpoint::read(dir)?;
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
        for (i, base) in bases.iter().enumerate() {
            let path = dir.join(segment::segment_file_name(*base));
            let is_last = i + 1 == bases.len();
            let data = fs::read(&path).at(&path)?;
            let scan = match segment::scan(&data, &path, last_seq.min(base.saturating_sub(1)), payload_max) {
                Ok(scan) => scan,
                Err(Error::Corrupt { reason, .. }) => {
                    let whole = BadRange { start: 0, end: data.len() as u64 };
                    self.quarantine(id, &path, *base, &data, &whole, report)?;
                    tracing::error!(segment = %path.display(), %reason, "Segment header is corrupt; the whole segment was quarantined.");
                    fs::remove_file(&path).at(&path)?;
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
            let segment_last = scan.last_seq.unwrap_or(base.saturating_sub(1));
            last_seq = last_seq.max(segment_last);
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
        let next_seq =
            segments.last().map(|s| s.last_seq.max(s.base_seq.saturating_sub(1))).unwrap_or(0).max(acked) + 1;
        Ok(self.start_stream(id, dir.to_path_buf(), Shared { segments, acked, state }, next_seq))
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
