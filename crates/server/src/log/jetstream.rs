//! NATS JetStream as a [`RecordLog`] (cluster mode): `sluice-jetstream`'s stream logs,
//! with what the put path asks synchronously (bytes held, health) kept up to date by
//! a background task polling the servers every second.
//!
//! Definitions are not kept beside the logs in cluster mode: the catalog itself is
//! replicated. Encryption at rest is not available yet in cluster mode (records of
//! encrypted streams are refused rather than written in the clear).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_jetstream::{Error as JsError, StreamLogs};

use super::{Appended, BoxFuture, Encryption, LogCursor, LogError, RecordLog, StoredRecord};

/// How often bytes held and health are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

fn log_error(error: JsError) -> LogError {
    match error {
        JsError::UnknownStream(id) => LogError::UnknownStream(id),
        other @ JsError::Full(_) => LogError::Unavailable(format!("the stream's log is at its size limit: {other}")),
        other => LogError::Unavailable(other.to_string()),
    }
}

/// The stream logs on JetStream, and what this node knows of them.
pub struct JetStreamLog {
    logs: Arc<StreamLogs>,
    /// Bytes each stream's log holds, as last polled (plus appends since).
    retained: Arc<RwLock<HashMap<u64, u64>>>,
    /// `Err(reason)` while JetStream does not answer.
    health: Arc<RwLock<Result<(), String>>>,
}

impl JetStreamLog {
    /// The log, and the task that keeps its figures fresh until `shutdown`.
    pub fn new(
        logs: StreamLogs,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (JetStreamLog, impl std::future::Future<Output = ()>) {
        let log = JetStreamLog {
            logs: Arc::new(logs),
            retained: Arc::new(RwLock::new(HashMap::new())),
            health: Arc::new(RwLock::new(Ok(()))),
        };
        let (logs, retained, health) = (log.logs.clone(), log.retained.clone(), log.health.clone());
        let refresh = async move {
            loop {
                let answer = logs.ping().await.map_err(|e| e.to_string());
                if let Err(reason) = &answer {
                    tracing::warn!(%reason, "JetStream is unreachable: /health answers 503 and puts are refused.");
                }
                *health.write().expect("lock") = answer;
                let ids: Vec<u64> = retained.read().expect("lock").keys().copied().collect();
                for id in ids {
                    match logs.retained_bytes(id).await {
                        Ok(bytes) => {
                            retained.write().expect("lock").insert(id, bytes);
                        }
                        Err(JsError::UnknownStream(_)) => {
                            retained.write().expect("lock").remove(&id);
                        }
                        Err(_) => {}
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(REFRESH_EVERY) => {}
                    _ = shutdown.changed() => return,
                }
            }
        };
        (log, refresh)
    }

    fn track(&self, stream: u64, bytes: u64) {
        *self.retained.write().expect("lock").entry(stream).or_insert(0) += bytes;
    }
}

struct JetStreamCursor(sluice_jetstream::Cursor);

impl LogCursor for JetStreamCursor {
    fn read(&mut self, records_max: usize, bytes_max: usize) -> BoxFuture<'_, Result<Vec<StoredRecord>, LogError>> {
        Box::pin(async move {
            let records = self.0.read(records_max, bytes_max).await.map_err(log_error)?;
            Ok(records
                .into_iter()
                .map(|r| StoredRecord { seq: r.seq, arrival_ms: r.arrival_ms, encrypted: false, data: r.data })
                .collect())
        })
    }

    fn wait(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.wait(REFRESH_EVERY))
    }
}

impl RecordLog for JetStreamLog {
    fn create_stream(&self, stream: u64, _definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            // No size limit in JetStream: it would reserve the whole per-stream buffer
            // (8 GiB by default) on every replica up front and refuse the tenth
            // stream. Back-pressure comes from the retained bytes polled below, as
            // the put path checks them against `buffer_mib_per_stream_max`.
            self.logs.create_stream(stream, None).await.map_err(log_error)?;
            self.track(stream, 0);
            Ok(())
        })
    }

    fn define_stream(&self, _stream: u64, _definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        // The catalog is replicated in cluster mode: nothing to keep beside the log.
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete_stream(&self, stream: u64) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            self.retained.write().expect("lock").remove(&stream);
            self.logs.delete_stream(stream).await.map_err(log_error)
        })
    }

    fn append(
        &self,
        stream: u64,
        records: Vec<Vec<u8>>,
        encryption: Encryption,
    ) -> BoxFuture<'_, Result<Appended, LogError>> {
        Box::pin(async move {
            if let Encryption::Key(key_ref) = encryption {
                return Err(LogError::Unavailable(format!(
                    "encryption at rest ({key_ref}) is not available in cluster mode yet; records are refused rather than stored in the clear"
                )));
            }
            if let Err(reason) = self.health() {
                return Err(LogError::Unavailable(reason));
            }
            let n_bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            let arrival_ms = crate::api::now_ms();
            let started = std::time::Instant::now();
            let appended = self.logs.append(stream, records, arrival_ms).await.map_err(log_error)?;
            // From the put's arrival in the log to the PubAck of its commit group
            // (waiting for the group included): what cluster mode adds to a put.
            ::metrics::histogram!("sluice_jetstream_publish_seconds").record(started.elapsed().as_secs_f64());
            self.track(stream, n_bytes);
            Ok(Appended { first_seq: appended.first_seq, last_seq: appended.last_seq, encrypted: false })
        })
    }

    fn cursor(&self, stream: u64, from: u64) -> Result<Box<dyn LogCursor>, LogError> {
        Ok(Box::new(JetStreamCursor(self.logs.cursor(stream, from))))
    }

    fn commit(&self, stream: u64, seq: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move { self.logs.commit(stream, seq, Some(state)).await.map_err(log_error) })
    }

    fn take_over(&self, stream: u64) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move { self.logs.take_over(stream).await.map_err(log_error) })
    }

    fn state(&self, stream: u64) -> BoxFuture<'_, Result<Option<Vec<u8>>, LogError>> {
        Box::pin(async move { Ok(self.logs.progress(stream).await.map_err(log_error)?.1) })
    }

    fn undelivered_bytes(&self, stream: u64) -> Result<u64, LogError> {
        Ok(self.retained.read().expect("lock").get(&stream).copied().unwrap_or(0))
    }

    fn undelivered_bytes_total(&self) -> u64 {
        self.retained.read().expect("lock").values().sum()
    }

    fn fatal(&self) -> Option<String> {
        None
    }

    fn health(&self) -> Result<(), String> {
        if !self.logs.connected() {
            return Err("not connected to any NATS server".into());
        }
        self.health.read().expect("lock").clone()
    }
}
