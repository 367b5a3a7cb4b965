//! NATS JetStream as a [`RecordLog`] (cluster mode): `sluice-jetstream`'s stream logs,
//! with what the put path asks synchronously (bytes held, health) kept up to date by
//! a background task polling the servers every second.
//!
//! Definitions are not kept beside the logs in cluster mode: the catalog itself is
//! replicated. Encryption at rest stays in Sluice: an encrypted stream's records are
//! sealed here before they are published, so no plaintext of theirs reaches NATS.
//!
//! A sealed record (version 1) carries what any node needs to open it, given the
//! same key-encryption keys (every node has the same master key file; start-up
//! checks that):
//!
//! ```text
//! version      u8       1
//! key_ref_len  u16 LE,  key_ref   (aws-owned-cmk or a CMK's ARN)
//! wrapped_len  u16 LE,  wrapped   (the append's data key, wrapped by key_ref)
//! index        u32 LE             (the record's index in its append: the nonce)
//! sealed       [u8]               AES-256-GCM of the data, with its tag; the
//!                                 additional data is the stream id (LE u64)
//! ```
//!
//! Each append has a fresh random data key, so (key, index) never repeats a nonce.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sluice_jetstream::{Error as JsError, StreamLogs};
use sluice_wal::{KeyWrapper, DATA_KEY_BYTES};

use super::{Appended, BoxFuture, Encryption, LogCursor, LogError, RecordLog, StoredRecord, TakenOver, Tenure};

/// How often bytes held and health are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

fn log_error(error: JsError) -> LogError {
    match error {
        JsError::UnknownStream(id) => LogError::UnknownStream(id),
        JsError::Fenced(id) => LogError::Fenced(id),
        JsError::Conflict(reason) => LogError::Changed(reason),
        other @ JsError::Full(_) => LogError::Unavailable(format!("the stream's log is at its size limit: {other}")),
        other => LogError::Unavailable(other.to_string()),
    }
}

/// The stream logs on JetStream, and what this node knows of them.
pub struct JetStreamLog {
    logs: Arc<StreamLogs>,
    /// Wraps and unwraps the appends' data keys.
    keys: Arc<dyn KeyWrapper>,
    /// What this node knows of each stream's log it appended to.
    figures: Arc<RwLock<HashMap<u64, Figures>>>,
    /// `Err(reason)` while JetStream does not answer.
    health: Arc<RwLock<Result<(), String>>>,
}

/// One stream's log as this node knows it, kept up to date by each append (one
/// lock per append) and the poll.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    /// Bytes it holds, as last polled (plus appends since).
    retained_bytes: u64,
    /// The last message a PubAck confirmed to this node: the stream must never be
    /// found to end before it.
    acknowledged_message: u64,
}

impl JetStreamLog {
    /// The log, and the task that keeps its figures fresh until `shutdown`.
    pub fn new(
        logs: StreamLogs,
        keys: Arc<dyn KeyWrapper>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (JetStreamLog, impl std::future::Future<Output = ()>) {
        let log = JetStreamLog {
            logs: Arc::new(logs),
            keys,
            figures: Arc::new(RwLock::new(HashMap::new())),
            health: Arc::new(RwLock::new(Ok(()))),
        };
        let (logs, figures, health) = (log.logs.clone(), log.figures.clone(), log.health.clone());
        let mut reported: HashMap<u64, u64> = HashMap::new();
        let refresh = async move {
            loop {
                let answer = logs.ping().await.map_err(|e| e.to_string());
                if let Err(reason) = &answer {
                    tracing::warn!(%reason, "JetStream is unreachable: /health answers 503 and puts are refused.");
                }
                *health.write().expect("lock") = answer;
                let known: Vec<(u64, Figures)> =
                    figures.read().expect("lock").iter().map(|(id, f)| (*id, *f)).collect();
                // Read before the requests: every message acknowledged by then is at
                // or before the last one the answer names.
                for (id, Figures { acknowledged_message: confirmed, .. }) in known {
                    match logs.stream_state(id).await {
                        Ok((bytes, last_message)) => {
                            if let Some(known) = figures.write().expect("lock").get_mut(&id) {
                                known.retained_bytes = bytes;
                            }
                            if last_message < confirmed && reported.get(&id) != Some(&confirmed) {
                                reported.insert(id, confirmed);
                                tracing::error!(
                                    stream_id = id,
                                    last_message,
                                    acknowledged_message = confirmed,
                                    "JetStream lost messages it had acknowledged: the stream ends before a message whose PubAck this node received."
                                );
                            }
                        }
                        Err(JsError::UnknownStream(_)) => {
                            figures.write().expect("lock").remove(&id);
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

    /// Counts an append in what this node knows of the stream's log, and answers it.
    fn note_appended(
        &self,
        stream: u64,
        n_bytes: u64,
        appended: sluice_jetstream::Appended,
        encrypted: bool,
    ) -> Appended {
        let message = sluice_jetstream::message::message_seq(appended.last_seq);
        let mut figures = self.figures.write().expect("lock");
        let known = figures.entry(stream).or_default();
        known.retained_bytes += n_bytes;
        known.acknowledged_message = known.acknowledged_message.max(message);
        Appended { first_seq: appended.first_seq, last_seq: appended.last_seq, encrypted }
    }

    fn cursor_to(&self, stream: u64, from: u64, last: Option<u64>) -> Box<dyn LogCursor> {
        Box::new(JetStreamCursor {
            inner: self.logs.cursor(stream, from, last),
            keys: self.keys.clone(),
            stream,
            last_key: None,
            unopened: std::collections::VecDeque::new(),
        })
    }
}

struct JetStreamCursor {
    inner: sluice_jetstream::Cursor,
    keys: Arc<dyn KeyWrapper>,
    stream: u64,
    /// The last data key unwrapped, by its wrapped form (an append's records share it).
    last_key: Option<(Vec<u8>, LessSafeKey)>,
    /// Records read from the log but not handed over, because one could not be
    /// opened (its key unavailable, say): the next read starts with them, so a
    /// failure never skips a record.
    unopened: std::collections::VecDeque<sluice_jetstream::StoredRecord>,
}

impl LogCursor for JetStreamCursor {
    fn read(&mut self, records_max: usize, bytes_max: usize) -> BoxFuture<'_, Result<Vec<StoredRecord>, LogError>> {
        Box::pin(async move {
            if self.unopened.is_empty() {
                let records = self.inner.read(records_max, bytes_max).await.map_err(log_error)?;
                self.unopened.extend(records);
            }
            let mut out = Vec::with_capacity(self.unopened.len());
            while let Some(r) = self.unopened.pop_front() {
                let (seq, arrival_ms, encrypted) = (r.seq, r.arrival_ms, r.encrypted);
                let data = match encrypted {
                    false => r.data,
                    true => match open(self.keys.as_ref(), &mut self.last_key, self.stream, &r.data) {
                        Ok(data) => data,
                        Err(error) => {
                            self.unopened.push_front(r);
                            return if out.is_empty() { Err(error) } else { Ok(out) };
                        }
                    },
                };
                out.push(StoredRecord { seq, arrival_ms, encrypted, data });
            }
            Ok(out)
        })
    }

    fn wait(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.wait(REFRESH_EVERY))
    }

    fn caught_up(&mut self) -> BoxFuture<'_, Result<bool, LogError>> {
        Box::pin(async move {
            if !self.unopened.is_empty() {
                return Ok(false);
            }
            self.inner.caught_up().await.map_err(log_error)
        })
    }
}

const SEALED_VERSION: u8 = 1;

fn cipher(data_key: &[u8; DATA_KEY_BYTES]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).expect("a 32-byte key is valid for AES-256-GCM"))
}

fn nonce(index: u32) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// Seals an append's records under a fresh data key wrapped by `key_ref`.
fn seal(keys: &dyn KeyWrapper, key_ref: &str, stream: u64, records: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, LogError> {
    let mut data_key = [0u8; DATA_KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut data_key);
    let wrapped = keys.wrap(key_ref, &data_key).map_err(|reason| LogError::Key { key_ref: key_ref.into(), reason })?;
    let cipher = cipher(&data_key);
    let mut header = vec![SEALED_VERSION];
    header.extend_from_slice(&(key_ref.len() as u16).to_le_bytes());
    header.extend_from_slice(key_ref.as_bytes());
    header.extend_from_slice(&(wrapped.len() as u16).to_le_bytes());
    header.extend_from_slice(&wrapped);
    records
        .into_iter()
        .enumerate()
        .map(|(index, data)| {
            let index = index as u32;
            let mut out = Vec::with_capacity(header.len() + 4 + data.len() + AES_256_GCM.tag_len());
            out.extend_from_slice(&header);
            out.extend_from_slice(&index.to_le_bytes());
            let at = out.len();
            out.extend_from_slice(&data);
            let tag = cipher
                .seal_in_place_separate_tag(nonce(index), Aad::from(stream.to_le_bytes()), &mut out[at..])
                .map_err(|_| LogError::Unavailable("sealing a record failed".into()))?;
            out.extend_from_slice(tag.as_ref());
            Ok(out)
        })
        .collect()
}

/// Opens a sealed record of `stream`.
fn open(
    keys: &dyn KeyWrapper,
    last_key: &mut Option<(Vec<u8>, LessSafeKey)>,
    stream: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, LogError> {
    let damaged = || LogError::Unavailable(format!("a sealed record of stream {stream:016x} is damaged"));
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], LogError> {
        let part = sealed.get(at..at + n).ok_or_else(damaged)?;
        at += n;
        Ok(part)
    };
    if take(1)? != [SEALED_VERSION] {
        return Err(damaged());
    }
    let key_ref_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let key_ref = std::str::from_utf8(take(key_ref_len)?).map_err(|_| damaged())?;
    let wrapped_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let wrapped = take(wrapped_len)?;
    let index = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let body = &sealed[at..];
    // An append's records share one data key: unwrap it once, not per record.
    if last_key.as_ref().is_none_or(|(w, _)| w.as_slice() != wrapped) {
        let data_key =
            keys.unwrap(key_ref, wrapped).map_err(|reason| LogError::Key { key_ref: key_ref.into(), reason })?;
        *last_key = Some((wrapped.to_vec(), cipher(&data_key)));
    }
    let (_, cipher) = last_key.as_ref().expect("set above");
    let mut buf = body.to_vec();
    let plain = cipher.open_in_place(nonce(index), Aad::from(stream.to_le_bytes()), &mut buf).map_err(|_| damaged())?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

/// Opens a record as read from JetStream, for tools (`sluice dump`): the data of a
/// plain record, or the opened data of a sealed one.
pub fn open_record(keys: &dyn KeyWrapper, stream: u64, data: &[u8], encrypted: bool) -> Result<Vec<u8>, LogError> {
    match encrypted {
        false => Ok(data.to_vec()),
        true => open(keys, &mut None, stream, data),
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
            self.figures.write().expect("lock").entry(stream).or_default();
            Ok(())
        })
    }

    fn define_stream(&self, _stream: u64, _definition: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        // The catalog is replicated in cluster mode: nothing to keep beside the log.
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete_stream(&self, stream: u64) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            self.figures.write().expect("lock").remove(&stream);
            self.logs.delete_stream(stream).await.map_err(log_error)
        })
    }

    fn settle_appends(&self, tenure: Tenure) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move { self.logs.settle_exclusive(tenure.stream, tenure.token).await.map_err(log_error) })
    }

    fn append_under(&self, tenure: Tenure, records: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Appended, LogError>> {
        Box::pin(async move {
            if let Err(reason) = self.health() {
                return Err(LogError::Unavailable(reason));
            }
            let stream = tenure.stream;
            let n_bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            let arrival_ms = crate::api::now_ms();
            let appended =
                self.logs.append_exclusive(stream, tenure.token, records, arrival_ms).await.map_err(log_error)?;
            Ok(self.note_appended(stream, n_bytes, appended, false))
        })
    }

    fn append(
        &self,
        stream: u64,
        records: Vec<Vec<u8>>,
        encryption: Encryption,
    ) -> BoxFuture<'_, Result<Appended, LogError>> {
        Box::pin(async move {
            if let Err(reason) = self.health() {
                return Err(LogError::Unavailable(reason));
            }
            let n_bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            let arrival_ms = crate::api::now_ms();
            let started = std::time::Instant::now();
            let sealed = matches!(encryption, Encryption::Key(_));
            let records = match &encryption {
                Encryption::None => records,
                Encryption::Key(key_ref) => seal(self.keys.as_ref(), key_ref, stream, records)?,
            };
            let appended = self.logs.append(stream, records, arrival_ms, sealed).await.map_err(log_error)?;
            // From the put's arrival in the log to the PubAck of its commit group
            // (waiting for the group included): what cluster mode adds to a put.
            ::metrics::histogram!("sluice_jetstream_publish_seconds").record(started.elapsed().as_secs_f64());
            Ok(self.note_appended(stream, n_bytes, appended, sealed))
        })
    }

    fn cursor(&self, stream: u64, from: u64) -> Result<Box<dyn LogCursor>, LogError> {
        Ok(self.cursor_to(stream, from, None))
    }

    fn cursor_range(&self, stream: u64, from: u64, last: u64) -> Result<Box<dyn LogCursor>, LogError> {
        Ok(self.cursor_to(stream, from, Some(last)))
    }

    fn take_over(&self, stream: u64) -> BoxFuture<'_, Result<TakenOver, LogError>> {
        Box::pin(async move {
            let taken = self.logs.take_over(stream).await.map_err(log_error)?;
            Ok(TakenOver { tenure: Tenure { stream, token: taken.token }, state: taken.state })
        })
    }

    fn commit(&self, tenure: Tenure, seq: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(
            async move { self.logs.commit(tenure.stream, tenure.token, seq, Some(state)).await.map_err(log_error) },
        )
    }

    fn state(&self, stream: u64) -> BoxFuture<'_, Result<Option<Vec<u8>>, LogError>> {
        Box::pin(async move { Ok(self.logs.progress(stream).await.map_err(log_error)?.1) })
    }

    fn undelivered_bytes(&self, stream: u64) -> Result<u64, LogError> {
        Ok(self.figures.read().expect("lock").get(&stream).map_or(0, |f| f.retained_bytes))
    }

    fn undelivered_bytes_total(&self) -> u64 {
        self.figures.read().expect("lock").values().map(|f| f.retained_bytes).sum()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use sluice_jetstream::{connect, StreamLogs};
    use sluice_nats_testing::{when_ready, Cluster, Setup};
    use sluice_wal::{KeyError, KeyWrapper, DATA_KEY_BYTES};

    use super::JetStreamLog;
    use crate::log::{Encryption, RecordLog};

    /// Wraps by XOR with a fixed key; unwrapping fails while `down` is set (a key
    /// service that does not answer for a while).
    struct FlakyKeys {
        down: AtomicBool,
    }

    impl KeyWrapper for FlakyKeys {
        fn wrap(&self, _: &str, data_key: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
            Ok(data_key.iter().map(|b| b ^ 0x5a).collect())
        }
        fn unwrap(&self, _: &str, wrapped: &[u8]) -> Result<[u8; DATA_KEY_BYTES], KeyError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(KeyError::NotFound);
            }
            let raw: Vec<u8> = wrapped.iter().map(|b| b ^ 0x5a).collect();
            raw.try_into().map_err(|_| KeyError::Unwrap)
        }
    }

    async fn stream_logs(cluster: &Cluster) -> StreamLogs {
        let options = cluster.options();
        when_ready(|| async { StreamLogs::open(&connect(&options).await?, options.clone(), "node".into()).await }).await
    }

    /// A record that cannot be opened for now stops the read before it; the records
    /// read after it from NATS are kept for the next reads, not dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_cannot_be_opened_yet_holds_back_the_read_and_loses_nothing() {
        let cluster = Cluster::start(Setup::default());
        let keys = Arc::new(FlakyKeys { down: AtomicBool::new(false) });
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (log, _refresh) = JetStreamLog::new(stream_logs(&cluster).await, keys.clone(), shutdown);
        log.create_stream(1, Vec::new()).await.unwrap();
        log.append(1, vec![b"plain-1".to_vec()], Encryption::None).await.unwrap();
        log.append(1, vec![b"sealed".to_vec()], Encryption::Key("k".into())).await.unwrap();
        log.append(1, vec![b"plain-2".to_vec()], Encryption::None).await.unwrap();
        keys.down.store(true, Ordering::SeqCst);
        let mut cursor = log.cursor(1, 0).unwrap();
        let mut read = Vec::new();
        while read.is_empty() {
            read.extend(cursor.read(1000, 1 << 20).await.unwrap().into_iter().map(|r| r.data));
        }
        assert_eq!(read, vec![b"plain-1".to_vec()]);
        assert!(cursor.read(1000, 1 << 20).await.is_err(), "the sealed record cannot be opened yet");
        keys.down.store(false, Ordering::SeqCst);
        for _ in 0..20 {
            read.extend(cursor.read(1000, 1 << 20).await.unwrap().into_iter().map(|r| r.data));
            if read.len() == 3 {
                break;
            }
            cursor.wait().await;
        }
        assert_eq!(read, vec![b"plain-1".to_vec(), b"sealed".to_vec(), b"plain-2".to_vec()]);
    }
}
