//! The narrow interface between Sluice and its record log: append and get a durable
//! sequence range, read from a cursor, and commit: acknowledge up to a sequence
//! number together with the delivery engine's opaque state (the batches it is
//! delivering, so they are rebuilt identically after a crash). The
//! embedded write-ahead log implements it today; a replicated backend (NATS
//! JetStream) is meant to implement the same trait, so nothing above this module
//! may depend on files or segments.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
}

/// A position in one stream's log, read forward.
pub trait LogCursor: Send {
    /// Up to `records_max` records that are durable, possibly none.
    fn read(&mut self, records_max: usize, bytes_max: usize) -> BoxFuture<'_, Result<Vec<StoredRecord>, LogError>>;
    /// Resolves when a record at or after the cursor may be durable (a backend may
    /// also resolve after a while without one; callers read again either way).
    fn wait(&mut self) -> BoxFuture<'_, ()>;
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
    /// A cursor at `from`, or after the acknowledged records if later.
    fn cursor(&self, stream: u64, from: u64) -> Result<Box<dyn LogCursor>, LogError>;
    /// In one durable, atomic step: acknowledges every record up to and including
    /// `seq` (never moving back; the log may then drop them) and replaces the
    /// delivery state, an opaque blob of at most 64 KiB (empty for none).
    fn commit(&self, stream: u64, seq: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>>;
    /// The delivery state last committed, if any.
    fn state(&self, stream: u64) -> BoxFuture<'_, Result<Option<Vec<u8>>, LogError>>;
    /// Bytes the log holds for a stream's records not yet acknowledged (for
    /// back-pressure; delivered records never count).
    fn undelivered_bytes(&self, stream: u64) -> Result<u64, LogError>;
    /// The same for all streams.
    fn undelivered_bytes_total(&self) -> u64;
    /// `Err(reason)` once the log can no longer be trusted with writes.
    fn health(&self) -> Result<(), String>;
}

fn log_error(error: sluice_wal::Error) -> LogError {
    match error {
        sluice_wal::Error::Poisoned(reason) => LogError::Fatal(reason),
        sluice_wal::Error::Key { key_ref, source } => LogError::Key { key_ref, reason: source },
        sluice_wal::Error::UnknownStream(id) => LogError::UnknownStream(id),
        sluice_wal::Error::StreamUnavailable { reason, .. } => LogError::StreamUnavailable(reason),
        other @ sluice_wal::Error::NoSpace { .. } => LogError::NoSpace(other.to_string()),
        other => LogError::Unavailable(other.to_string()),
    }
}

/// The embedded write-ahead log as a [`RecordLog`].
pub struct WalLog(pub Arc<sluice_wal::Wal>);

struct WalCursor(Option<sluice_wal::Reader>);

impl LogCursor for WalCursor {
    fn read(&mut self, records_max: usize, bytes_max: usize) -> BoxFuture<'_, Result<Vec<StoredRecord>, LogError>> {
        Box::pin(async move {
            // Reads touch files, so they run on the blocking pool.
            let mut reader = self.0.take().expect("cursor used after a failed read");
            let (reader, result) = tokio::task::spawn_blocking(move || {
                let result = reader.read(records_max, bytes_max);
                (reader, result)
            })
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
            self.0 = Some(reader);
            result.map_err(log_error)
        })
    }

    fn wait(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(reader) = &self.0 {
                reader.wait().await;
            }
        })
    }
}

/// Runs a blocking call of the embedded log (it fsyncs) off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, sluice_wal::Error> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(call).await.map_err(|e| LogError::Unavailable(e.to_string()))?.map_err(log_error)
}

impl RecordLog for WalLog {
    fn create_stream(&self, stream: u64, definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.0.clone();
        Box::pin(blocking(move || wal.create_stream(stream, &definition)))
    }

    fn define_stream(&self, stream: u64, definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.0.clone();
        Box::pin(blocking(move || wal.define_stream(stream, &definition)))
    }

    fn delete_stream(&self, stream: u64) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.0.clone();
        Box::pin(blocking(move || wal.delete_stream(stream)))
    }

    fn append(
        &self,
        stream: u64,
        records: Vec<Vec<u8>>,
        encryption: Encryption,
    ) -> BoxFuture<'_, Result<Appended, LogError>> {
        Box::pin(async move { self.0.append(stream, records, encryption).await.map_err(log_error) })
    }

    fn cursor(&self, stream: u64, from: u64) -> Result<Box<dyn LogCursor>, LogError> {
        Ok(Box::new(WalCursor(Some(self.0.reader(stream, from).map_err(log_error)?))))
    }

    fn commit(&self, stream: u64, seq: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.0.clone();
        Box::pin(blocking(move || wal.commit(stream, seq, state)))
    }

    fn state(&self, stream: u64) -> BoxFuture<'_, Result<Option<Vec<u8>>, LogError>> {
        Box::pin(std::future::ready(self.0.state(stream).map_err(log_error)))
    }

    fn undelivered_bytes(&self, stream: u64) -> Result<u64, LogError> {
        self.0.undelivered_bytes(stream).map_err(log_error)
    }

    fn undelivered_bytes_total(&self) -> u64 {
        self.0.undelivered_bytes_total()
    }

    fn health(&self) -> Result<(), String> {
        match &*self.0.fatal().borrow() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
}
