//! The narrow interface between Sluice and its record log: append and get a durable
//! sequence range, read from a cursor, and commit: acknowledge up to a sequence
//! number together with the delivery engine's opaque state (the batches it is
//! delivering, so they are rebuilt identically after a crash). Two backends
//! implement it: the embedded write-ahead log (`embedded.rs`, one node) and NATS
//! JetStream (`jetstream.rs`, cluster mode). Nothing above this module depends on
//! files, segments or messages.
//!
//! Sequence numbers are increasing within a stream, and the delivery engine treats
//! them only as ordered positions ("everything up to and including N"): the
//! embedded log numbers records densely, JetStream by message and index.

use std::future::Future;
use std::pin::Pin;

mod embedded;
mod jetstream;

pub use embedded::WalLog;
pub use jetstream::{open_record, JetStreamLog};
pub use sluice_wal::{Appended, Encryption, StoredRecord};

/// A boxed future, so the trait can be used as `dyn RecordLog`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a log operation failed, as the API needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Storage is broken; the process must stop (an fsync failed).
    #[error("fatal storage failure: {0}")]
    Fatal(String),
    /// This call failed, nothing of it was stored; retrying later may work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The disk holding the log is full; nothing of this call was stored. Retrying
    /// works once delivery (or the operator) frees space.
    #[error("disk full: {0}")]
    NoSpace(String),
    /// The stream's log could not be recovered at start; it takes no records until
    /// the operator fixes the cause and restarts.
    #[error("the stream's log is unavailable: {0}")]
    StreamUnavailable(String),
    /// The encryption key cannot be used.
    #[error("encryption key {key_ref}: {reason}")]
    Key {
        /// Which key.
        key_ref: String,
        /// Not found or disabled.
        reason: sluice_wal::KeyError,
    },
    /// The stream has no log.
    #[error("no log for stream {0}")]
    UnknownStream(u64),
    /// A later tenure of the stream's delivery began (see [`RecordLog::take_over`]):
    /// this caller no longer delivers it and must stop.
    #[error("stream {0}: a later delivery of this stream took it over")]
    Fenced(u64),
    /// An append under a tenure ([`RecordLog::append_under`]) found the log changed
    /// since the tenure last read it (someone else appended, or an earlier append's
    /// outcome is unknown): nothing of it was stored; read the log again before
    /// deciding what to append.
    #[error("the log changed since it was read: {0}")]
    Changed(String),
}

/// The most an append under a tenure may hold: its records' bytes plus 16 bytes
/// each (one JetStream message, within the 8 MiB `max_payload` cluster mode needs).
pub const APPEND_UNDER_BYTES_MAX: usize = 7 << 20;

/// The right to commit a stream's delivery progress, from one
/// [`RecordLog::take_over`] until the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    /// The stream.
    pub stream: u64,
    /// Which take-over (the backend's own numbering).
    pub token: u64,
}

/// A tenure begun, and the delivery state last committed before it.
#[derive(Debug)]
pub struct TakenOver {
    /// The right to commit.
    pub tenure: Tenure,
    /// The delivery state, if any was committed.
    pub state: Option<Vec<u8>>,
}

/// A position in one stream's log, read forward.
pub trait LogCursor: Send {
    /// Up to `records_max` records that are durable, possibly none.
    fn read(&mut self, records_max: usize, bytes_max: usize) -> BoxFuture<'_, Result<Vec<StoredRecord>, LogError>>;
    /// Resolves when a record at or after the cursor may be durable (a backend may
    /// also resolve after a while without one; callers read again either way).
    fn wait(&mut self) -> BoxFuture<'_, ()>;
    /// After a read that returned nothing: whether every record durable before this
    /// call has been read. A replicated backend's reader learns of new records a
    /// moment late, so an empty read does not mean that by itself.
    fn caught_up(&mut self) -> BoxFuture<'_, Result<bool, LogError>>;
}

/// A durable, per-stream record log. Calls that a replicated backend serves over
/// the network are asynchronous; the ones on the put path's hot loop
/// (`undelivered_bytes`, `health`) answer from what the backend already knows.
pub trait RecordLog: Send + Sync + 'static {
    /// Prepares an empty log for a new stream, with the stream's definition (an
    /// opaque blob kept with the log, so the log can be told apart without the
    /// catalog).
    fn create_stream(&self, stream: u64, definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>>;
    /// Replaces the stream's definition kept with its log.
    fn define_stream(&self, stream: u64, definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>>;
    /// Removes a stream's log and its records.
    fn delete_stream(&self, stream: u64) -> BoxFuture<'_, Result<(), LogError>>;
    /// Appends records; resolves only once they are durable.
    fn append(
        &self,
        stream: u64,
        records: Vec<Vec<u8>>,
        encryption: Encryption,
    ) -> BoxFuture<'_, Result<Appended, LogError>>;
    /// Appends records (unencrypted, at most [`APPEND_UNDER_BYTES_MAX`], all or none
    /// of them) only while `tenure` is the stream's latest:
    /// for a source the stream's delivery owner reads into the log (a Kinesis data
    /// stream), so that a former owner's late append cannot add records the new
    /// owner, which derived where to read from the log, reads again. Once
    /// [`RecordLog::take_over`] returned, no append under an earlier tenure is in
    /// flight or can succeed ([`LogError::Fenced`]).
    fn append_under(&self, tenure: Tenure, records: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Appended, LogError>>;
    /// Prepares appends under `tenure` ([`RecordLog::append_under`]): waits until
    /// none is in flight, and notes where the log ends. The caller then reads the
    /// log to decide what to append; an append then lands only if nobody else
    /// appended since ([`LogError::Changed`] otherwise: settle and read again).
    fn settle_appends(&self, tenure: Tenure) -> BoxFuture<'_, Result<(), LogError>>;
    /// A cursor at `from`, or after the acknowledged records if later.
    fn cursor(&self, stream: u64, from: u64) -> Result<Box<dyn LogCursor>, LogError>;
    /// A cursor for reading records `from..=last` back (a decided batch): a
    /// backend that reads ahead need not read past `last`.
    fn cursor_range(&self, stream: u64, from: u64, _last: u64) -> Result<Box<dyn LogCursor>, LogError> {
        self.cursor(stream, from)
    }
    /// Begins a tenure of the stream's delivery: from now on the log accepts commits
    /// only under the returned tenure, so a former owner (another node that has
    /// not noticed yet that it lost the stream, or an earlier delivery worker of
    /// this node still winding down) fails its next commit with
    /// [`LogError::Fenced`]. Returns the delivery state last committed, read
    /// after every earlier tenure was fenced.
    fn take_over(&self, stream: u64) -> BoxFuture<'_, Result<TakenOver, LogError>>;
    /// In one durable, atomic step: acknowledges every record up to and including
    /// `seq` (never moving back; the log may then drop them) and replaces the
    /// delivery state, an opaque blob of at most 64 KiB (empty for none).
    /// [`LogError::Fenced`] if a later tenure of the stream began.
    fn commit(&self, tenure: Tenure, seq: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>>;
    /// The delivery state last committed, if any (a read; it begins no tenure).
    fn state(&self, stream: u64) -> BoxFuture<'_, Result<Option<Vec<u8>>, LogError>>;
    /// Bytes the log holds for a stream's records not yet acknowledged (for
    /// back-pressure; delivered records never count).
    fn undelivered_bytes(&self, stream: u64) -> Result<u64, LogError>;
    /// The same for all streams.
    fn undelivered_bytes_total(&self) -> u64;
    /// `Err(reason)` while the log cannot take writes.
    fn health(&self) -> Result<(), String>;
    /// `Some(reason)` once storage failed for good (an fsync error): the process must
    /// stop. A replicated backend that cannot reach its servers is unhealthy, not
    /// failed.
    fn fatal(&self) -> Option<String>;
}
