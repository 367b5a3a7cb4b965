//! The embedded write-ahead log (`sluice-wal`) as a [`RecordLog`]: one node, the
//! default backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Appended, BoxFuture, Encryption, LogCursor, LogError, RecordLog, StoredRecord, TakenOver, Tenure};

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
pub struct WalLog {
    wal: Arc<sluice_wal::Wal>,
    /// Each stream's tenures: one node, so fencing earlier tenures (a delivery
    /// worker restarted while its predecessor winds down) needs no more than this.
    tenures: Mutex<HashMap<u64, Arc<TenureGate>>>,
    tenure_tokens: AtomicU64,
}

/// A stream's latest tenure, and the lock that keeps a take-over from overlapping
/// an append made under a tenure ([`RecordLog::append_under`]).
#[derive(Default)]
struct TenureGate {
    token: AtomicU64,
    appends: Arc<tokio::sync::Mutex<()>>,
}

impl WalLog {
    /// The log as a [`RecordLog`].
    pub fn new(wal: Arc<sluice_wal::Wal>) -> WalLog {
        WalLog { wal, tenures: Mutex::new(HashMap::new()), tenure_tokens: AtomicU64::new(0) }
    }

    fn gate(&self, stream: u64) -> Arc<TenureGate> {
        self.tenures.lock().expect("lock").entry(stream).or_default().clone()
    }
}

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

    fn caught_up(&mut self) -> BoxFuture<'_, Result<bool, LogError>> {
        // The reader sees every record once it is durable: an empty read is the end.
        Box::pin(std::future::ready(Ok(true)))
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
        let wal = self.wal.clone();
        Box::pin(blocking(move || wal.create_stream(stream, &definition)))
    }

    fn define_stream(&self, stream: u64, definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.wal.clone();
        Box::pin(blocking(move || wal.define_stream(stream, &definition)))
    }

    fn delete_stream(&self, stream: u64) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.wal.clone();
        self.tenures.lock().expect("lock").remove(&stream);
        Box::pin(blocking(move || wal.delete_stream(stream)))
    }

    fn append(
        &self,
        stream: u64,
        records: Vec<Vec<u8>>,
        encryption: Encryption,
    ) -> BoxFuture<'_, Result<Appended, LogError>> {
        Box::pin(async move { self.wal.append(stream, records, encryption).await.map_err(log_error) })
    }

    fn cursor(&self, stream: u64, from: u64) -> Result<Box<dyn LogCursor>, LogError> {
        Ok(Box::new(WalCursor(Some(self.wal.reader(stream, from).map_err(log_error)?))))
    }

    fn append_under(&self, tenure: Tenure, records: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Appended, LogError>> {
        let gate = self.gate(tenure.stream);
        let wal = self.wal.clone();
        Box::pin(async move {
            let held = gate.appends.clone().lock_owned().await;
            if gate.token.load(Ordering::Acquire) != tenure.token {
                return Err(LogError::Fenced(tenure.stream));
            }
            // The append finishes, holding the gate, even if its caller goes away
            // (a worker aborted): a take-over then waits for it instead of reading
            // the log while it may still land.
            let append = tokio::spawn(async move {
                let appended = wal.append(tenure.stream, records, Encryption::None).await;
                drop(held);
                appended
            });
            append.await.map_err(|e| LogError::Unavailable(e.to_string()))?.map_err(log_error)
        })
    }

    fn settle_appends(&self, tenure: Tenure) -> BoxFuture<'_, Result<(), LogError>> {
        let gate = self.gate(tenure.stream);
        Box::pin(async move {
            // One process: waiting for appends in flight (an aborted reader's) is
            // all it takes; nobody else appends under this tenure meanwhile.
            let _held = gate.appends.lock().await;
            if gate.token.load(Ordering::Acquire) != tenure.token {
                return Err(LogError::Fenced(tenure.stream));
            }
            Ok(())
        })
    }

    fn take_over(&self, stream: u64) -> BoxFuture<'_, Result<TakenOver, LogError>> {
        let token = self.tenure_tokens.fetch_add(1, Ordering::Relaxed) + 1;
        let gate = self.gate(stream);
        Box::pin(async move {
            // No append under an earlier tenure is in flight once this is held, and
            // none succeeds after the token moved.
            let _held = gate.appends.lock().await;
            gate.token.store(token, Ordering::Release);
            let state = self.wal.state(stream).map_err(log_error)?;
            Ok(TakenOver { tenure: Tenure { stream, token }, state })
        })
    }

    fn commit(&self, tenure: Tenure, seq: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        let wal = self.wal.clone();
        let current = self.tenures.lock().expect("lock").get(&tenure.stream).map(|g| g.token.load(Ordering::Acquire))
            == Some(tenure.token);
        Box::pin(async move {
            if !current {
                return Err(LogError::Fenced(tenure.stream));
            }
            blocking(move || wal.commit(tenure.stream, seq, state)).await
        })
    }

    fn state(&self, stream: u64) -> BoxFuture<'_, Result<Option<Vec<u8>>, LogError>> {
        Box::pin(std::future::ready(self.wal.state(stream).map_err(log_error)))
    }

    fn undelivered_bytes(&self, stream: u64) -> Result<u64, LogError> {
        self.wal.undelivered_bytes(stream).map_err(log_error)
    }

    fn undelivered_bytes_total(&self) -> u64 {
        self.wal.undelivered_bytes_total()
    }

    fn fatal(&self) -> Option<String> {
        self.wal.fatal().borrow().clone()
    }

    fn health(&self) -> Result<(), String> {
        match &*self.wal.fatal().borrow() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
}
