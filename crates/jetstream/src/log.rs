//! The record log on JetStream: one stream per delivery stream, records published in
//! commit groups, read back through ordered consumers, delivery progress in a
//! key-value bucket. The same three operations as the embedded log (append, read from
//! a cursor, commit the acknowledged position with the consumer's state), so the
//! server adapts both to one interface.
//!
//! **Appends.** Each node runs one writer task per stream it takes puts for. The
//! writer takes every queued append (up to [`COMMIT_BYTES_MAX`] and
//! [`RECORDS_PER_MESSAGE`]` - 1` records), publishes them as one message with a
//! `Nats-Msg-Id` unique to this process, and answers the appends only after the
//! PubAck, which the servers send once a quorum has stored (and, with
//! `sync_interval: always`, fsynced) the message. A publish whose acknowledgement does
//! not arrive is retried with the same id, which the stream's duplicate window turns
//! into the original's acknowledgement; if it still cannot be confirmed the appends
//! fail as unknown ([`Error::Unconfirmed`]). Up to two messages per writer are in
//! flight, the second only if it is large: a large request then need not wait for
//! the message before it to be stored, while small appends still gather into one.
//!
//! **Progress.** `<prefix>_PROGRESS`, one entry per stream: the acknowledged record
//! sequence and the consumer's opaque state, replaced with compare-and-set on the
//! entry's revision. Only the latest *tenure* commits: [`StreamLogs::take_over`]
//! rewrites the entry (moving its revision, so every earlier writer on any node
//! fails its next compare-and-set) and hands out a token; each commit names its
//! token and uses the revision that tenure itself last wrote, never one another
//! tenure on the same node read. So neither a node that lost a stream's lease nor
//! an earlier delivery worker of the same node (still running a moment after the
//! stream was handed away and back) can commit over the latest one. Messages below
//! the one holding the acknowledged position are purged after each commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::connect::Connection;
use crate::error::Error;
use crate::message::{self, RECORDS_PER_MESSAGE};
use crate::options::{JetStreamOptions, COMMIT_BYTES_MAX};

/// The sequence numbers an append was given, once a quorum has stored them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Sequence number of the last record.
    pub last_seq: u64,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its sequence number (see [`message::record_seq`]).
    pub seq: u64,
    /// When it was accepted, Unix ms.
    pub arrival_ms: u64,
    /// Its bytes.
    pub data: Vec<u8>,
    /// Whether they are sealed (appended with `encrypted`).
    pub encrypted: bool,
}

/// A stream's delivery progress as kept in the progress bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ProgressEntry {
    format_version: u32,
    acked: u64,
    /// The consumer's state, base64-free: JSON arrays of bytes would triple it, so it
    /// is kept as a string when it is UTF-8 (the delivery engine's is JSON) and as
    /// bytes otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_bytes: Option<Vec<u8>>,
}

impl ProgressEntry {
    fn state(&self) -> Option<Vec<u8>> {
        match (&self.state_text, &self.state_bytes) {
            (Some(text), _) => Some(text.clone().into_bytes()),
            (None, Some(bytes)) => Some(bytes.clone()),
            (None, None) => None,
        }
    }

    fn with_state(acked: u64, state: Option<Vec<u8>>) -> ProgressEntry {
        let (state_text, state_bytes) = match state.filter(|s| !s.is_empty()) {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(e) => (None, Some(e.into_bytes())),
            },
        };
        ProgressEntry { format_version: 1, acked, state_text, state_bytes }
    }
}

/// Largest consumer state, as in the embedded log.
pub const STATE_BYTES_MAX: usize = 64 << 10;

struct AppendRequest {
    records: Vec<Vec<u8>>,
    arrival_ms: u64,
    encrypted: bool,
    reply: oneshot::Sender<Result<Appended, Error>>,
}

/// Every stream's log in one JetStream domain, as seen from one node.
pub struct StreamLogs {
    jetstream: jetstream::Context,
    options: Arc<JetStreamOptions>,
    progress: kv::Store,
    /// This process's part of every message id it publishes.
    node_id: String,
    writers: Mutex<HashMap<u64, mpsc::Sender<AppendRequest>>>,
    /// The latest tenure of each stream on this node (see [`StreamLogs::take_over`]).
    tenures: Mutex<HashMap<u64, Tenure>>,
    /// Per stream: held by an exclusive append, so this node makes them one at a time.
    exclusive: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// The last tenure token handed out.
    tenure_tokens: AtomicU64,
    counter: Arc<AtomicU64>,
}

/// One tenure of a stream's progress on this node: its token, the revision of the
/// progress entry it last wrote (`None` while its take-over is in flight), and the
/// stream's last message as this tenure last knew it (for
/// [`StreamLogs::append_exclusive`]; `None`: not known, read it again).
#[derive(Debug, Clone, Copy)]
struct Tenure {
    token: u64,
    revision: Option<u64>,
    last_message: Option<u64>,
}

/// What [`StreamLogs::take_over`] found and the right to commit after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    /// Names this tenure in [`StreamLogs::commit`].
    pub token: u64,
    /// The acknowledged position, as last committed.
    pub acked: u64,
    /// The consumer's state, as last committed.
    pub state: Option<Vec<u8>>,
}

/// Appends queued per stream and node before callers wait.
const QUEUE_DEPTH_MAX: usize = 1024;
/// Messages a cursor's consumer pulls ahead of its reader. The client asks for
/// this many again when half is left, and each pins the read buffer it arrived
/// in (up to twice its size) until it is decoded: with 16, a delivering node held
/// 250 MiB more than the others under PutRecordBatch load; with 4, a reader still
/// takes several thousand messages per second.
const CURSOR_MESSAGES_AHEAD_MAX: i64 = 4;
/// The longest a commit group waits for more appends before it is published (see
/// `Writer::run`). Measured with `bench/cluster.sh` (64 PutRecord connections over
/// three nodes): 4 ms gave 17.0 records per message and 4.6x one publish per
/// request, 8 ms 19.5 and 5.6x with a lower p99 (fewer, fuller messages leave the
/// servers more of the cores). A lone caller never waits for it.
const COMMIT_LINGER: Duration = Duration::from_millis(8);
/// Messages one writer has published and not yet seen acknowledged. One at a time,
/// a large request waited for the message before it to be stored before its own
/// was sent, and that wait was most of its latency (see `bench/cluster.sh`).
const PUBLISHES_IN_FLIGHT_MAX: usize = 2;
/// The least a commit group holds to be published while another is in flight; a
/// smaller one waits and grows (what commit groups are for).
const PIPELINED_GROUP_BYTES_MIN: usize = 256 << 10;
/// How long the stream's duplicate window is: publish retries within it are
/// recognised as the message they repeat.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl StreamLogs {
    /// Opens the logs, creating the progress bucket if needed. `node_id` names the
    /// node in message ids, which also carry a random id of this process: a node
    /// restarted under the same name must never reuse an id of its former life, or
    /// JetStream would take its new commit groups for retries of the old ones
    /// (within the duplicate window) and acknowledge records it never stored.
    pub async fn open(
        connection: &Connection,
        options: JetStreamOptions,
        node_id: String,
    ) -> Result<StreamLogs, Error> {
        let bucket = format!("{}_PROGRESS", options.prefix);
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "Sluice: each stream's acknowledged position and delivery state".into(),
            history: 1,
            num_replicas: options.replicas,
            storage: stream::StorageType::File,
            ..kv::Config::default()
        };
        let progress = crate::bucket::open_consistent(connection, config).await?;
        Ok(StreamLogs {
            jetstream: connection.jetstream.clone(),
            options: Arc::new(options),
            progress,
            node_id: format!("{node_id}-{}", uuid::Uuid::new_v4().simple()),
            writers: Mutex::new(HashMap::new()),
            tenures: Mutex::new(HashMap::new()),
            exclusive: Mutex::new(HashMap::new()),
            tenure_tokens: AtomicU64::new(0),
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The JetStream stream that holds delivery stream `id`'s log.
    pub fn stream_name(&self, id: u64) -> String {
        format!("{}_LOG_{id:016x}", self.options.prefix)
    }

    fn subject(&self, id: u64) -> String {
        format!("{}.log.{id:016x}", self.options.prefix)
    }

    fn progress_key(id: u64) -> String {
        format!("{id:016x}")
    }

    /// Creates the stream's log: a file-backed JetStream stream replicated as
    /// configured, refusing new messages (never dropping old ones) past `bytes_max`
    /// if given. JetStream reserves a limited stream's whole `bytes_max` in every
    /// replica's storage up front, so a limit is only for streams known to be few.
    pub async fn create_stream(&self, id: u64, bytes_max: Option<u64>) -> Result<(), Error> {
        let config = stream::Config {
            name: self.stream_name(id),
            description: Some(format!("Sluice: records of delivery stream {id:016x}")),
            subjects: vec![self.subject(id)],
            storage: stream::StorageType::File,
            num_replicas: self.options.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_bytes: bytes_max.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            max_message_size: COMMIT_BYTES_MAX as i32,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            deny_delete: true,
            persist_mode: Some(stream::PersistenceMode::Default),
            ..stream::Config::default()
        };
        // A cluster that is forming or has just lost its meta leader refuses the
        // create for a moment ("temporarily unavailable", "no suitable peers" while
        // the peers have not reported in) or leaves it unanswered: asked again, with
        // the same configuration (which JetStream takes as the same create), within
        // the timeout, each time waiting a quarter of it for an answer.
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let mut jetstream = self.jetstream.clone();
        jetstream.set_timeout((self.options.timeout / 4).max(Duration::from_millis(500)));
        loop {
            match jetstream.create_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if passing(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "JetStream refused a stream for now; asking again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(Error::Request(format!("creating stream {id:016x}: {e}"))),
            }
        }
        // A stream just created has no leader for a moment: wait until it answers,
        // within the timeout, before the first appends (which `Writer::publish` also
        // retries while no server takes them).
        loop {
            match self.stream_state(id).await {
                Ok(_) => return Ok(()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Deletes the stream's log and progress.
    pub async fn delete_stream(&self, id: u64) -> Result<(), Error> {
        self.writers.lock().expect("lock").remove(&id);
        self.tenures.lock().expect("lock").remove(&id);
        self.exclusive.lock().expect("lock").remove(&id);
        match self.jetstream.delete_stream(self.stream_name(id)).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(Error::Request(format!("deleting stream {id:016x}: {e}"))),
        }
        self.progress
            .purge(Self::progress_key(id))
            .await
            .map_err(|e| Error::Request(format!("deleting the progress of {id:016x}: {e}")))
    }

    /// Appends records; resolves once a quorum has stored them. `encrypted`: the
    /// records are sealed (they share messages only with other sealed records).
    pub async fn append(
        &self,
        id: u64,
        records: Vec<Vec<u8>>,
        arrival_ms: u64,
        encrypted: bool,
    ) -> Result<Appended, Error> {
        let sender = self.writer(id);
        let (reply, answer) = oneshot::channel();
        sender.send(AppendRequest { records, arrival_ms, encrypted, reply }).await.map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    fn writer(&self, id: u64) -> mpsc::Sender<AppendRequest> {
        let mut writers = self.writers.lock().expect("lock");
        if let Some(sender) = writers.get(&id).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH_MAX);
        tokio::spawn(self.writer_for(id).run(receiver));
        writers.insert(id, sender.clone());
        sender
    }

    fn writer_for(&self, id: u64) -> Writer {
        Writer {
            jetstream: self.jetstream.clone(),
            subject: self.subject(id),
            stream_name: self.stream_name(id),
            node_id: self.node_id.clone(),
            counter: self.counter.clone(),
            timeout: self.options.timeout,
        }
    }

    /// A cursor at the first record with a sequence number at or above `from`.
    /// A cursor at `from`; with `last`, the reader wants nothing after that record
    /// (a batch read back), so no more messages are pulled ahead than it spans.
    pub fn cursor(&self, id: u64, from: u64, last: Option<u64>) -> Cursor {
        let span =
            last.map_or(u64::MAX, |last| message::message_seq(last).saturating_sub(message::message_seq(from)) + 1);
        Cursor {
            until: last,
            ahead_max: i64::try_from(span).unwrap_or(i64::MAX).min(CURSOR_MESSAGES_AHEAD_MAX),
            jetstream: self.jetstream.clone(),
            stream_name: self.stream_name(id),
            next_seq: from,
            consumed: message::message_seq(from).saturating_sub(1),
            pending: None,
            timeout: self.options.timeout,
            messages: None,
            ready: std::collections::VecDeque::new(),
            recent_ids: (std::collections::VecDeque::new(), std::collections::HashSet::new()),
        }
    }

    /// The acknowledged position and the consumer's state, as last committed.
    pub async fn progress(&self, id: u64) -> Result<(u64, Option<Vec<u8>>), Error> {
        let (_, progress) = self.read_progress(id).await?;
        Ok((progress.acked, progress.state()))
    }

    /// The progress entry and its revision (0: none yet).
    async fn read_progress(&self, id: u64) -> Result<(u64, ProgressEntry), Error> {
        let entry = self
            .progress
            .entry(Self::progress_key(id))
            .await
            .map_err(|e| Error::Request(format!("reading the progress of {id:016x}: {e}")))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok((0, ProgressEntry::default()));
        };
        let progress = serde_json::from_slice(&entry.value)
            .map_err(|e| Error::Request(format!("the progress of {id:016x} is unreadable: {e}")))?;
        Ok((entry.revision, progress))
    }

    /// Begins a new tenure of the stream's progress on this node, before delivering
    /// it: reads the entry afresh and writes it back unchanged, which moves its
    /// revision, so whoever committed before (a node that may not know yet that it
    /// lost the stream, or an earlier tenure on this node) fails its next commit
    /// with [`Error::Fenced`]. Earlier tenures on this node are refused at once,
    /// before the servers are asked anything.
    pub async fn take_over(&self, id: u64) -> Result<TakenOver, Error> {
        let token = self.tenure_tokens.fetch_add(1, Ordering::Relaxed) + 1;
        self.tenures.lock().expect("lock").insert(id, Tenure { token, revision: None, last_message: None });
        let (revision, current) = self.read_progress(id).await?;
        let unchanged = ProgressEntry::with_state(current.acked, current.state());
        let value = Bytes::from(serde_json::to_vec(&unchanged).expect("serialises"));
        let written = match revision {
            0 => self.progress.create(Self::progress_key(id), value).await.map_err(|e| e.to_string()),
            _ => self.progress.update(Self::progress_key(id), value, revision).await.map_err(|e| e.to_string()),
        };
        let revision = written.map_err(|reason| Self::commit_error(id, reason))?;
        match self.tenures.lock().expect("lock").get_mut(&id) {
            Some(tenure) if tenure.token == token => tenure.revision = Some(revision),
            _ => return Err(Error::Fenced(id)),
        }
        Ok(TakenOver { token, acked: current.acked, state: current.state() })
    }

    /// Prepares exclusive appends under tenure `token`: waits until none of this
    /// node's is in flight, then notes the stream's last message. The caller then
    /// reads the log to decide what to append; [`StreamLogs::append_exclusive`]
    /// succeeds only onto the log as it was here (plus the tenure's own appends).
    pub async fn settle_exclusive(&self, id: u64, token: u64) -> Result<(), Error> {
        let lock = self.exclusive_lock(id);
        let _held = lock.lock().await;
        let (_, last_message) = self.stream_state(id).await?;
        match self.tenures.lock().expect("lock").get_mut(&id) {
            Some(tenure) if tenure.token == token => tenure.last_message = Some(last_message),
            _ => return Err(Error::Fenced(id)),
        }
        Ok(())
    }

    fn exclusive_lock(&self, id: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.exclusive.lock().expect("lock").entry(id).or_default().clone()
    }

    /// Appends records as one message of their own, and only if the stream's last
    /// message is still the one tenure `token` last knew of (JetStream's
    /// `Nats-Expected-Last-Sequence`; see [`StreamLogs::settle_exclusive`]): for a
    /// source the stream's delivery owner reads into the log, deciding what to
    /// append from what the log holds, so that an append by anyone else since (a
    /// former owner still reading) makes this one fail instead of landing twice.
    /// This node's exclusive appends to a stream are made one at a time.
    /// [`Error::Conflict`] if the log changed, or an earlier append's outcome is
    /// unknown: every later one fails too until the log is settled and read again.
    /// [`Error::Fenced`] if a later tenure began on this node.
    pub async fn append_exclusive(
        &self,
        id: u64,
        token: u64,
        records: Vec<Vec<u8>>,
        arrival_ms: u64,
    ) -> Result<Appended, Error> {
        if records.is_empty() {
            return Err(Error::Request("an exclusive append needs records".into()));
        }
        let mut payload = Vec::new();
        message::encode(records.iter().map(|r| (r.as_slice(), arrival_ms)), false, &mut payload);
        if payload.len() > COMMIT_BYTES_MAX - 4096 {
            return Err(Error::Refused(format!("{} bytes are more than one message holds", payload.len())));
        }
        let lock = self.exclusive_lock(id);
        let _held = lock.lock().await;
        let known = match self.tenures.lock().expect("lock").get(&id) {
            Some(tenure) if tenure.token == token => tenure.last_message,
            _ => return Err(Error::Fenced(id)),
        };
        let set_known = |last_message: Option<u64>| {
            if let Some(tenure) = self.tenures.lock().expect("lock").get_mut(&id).filter(|t| t.token == token) {
                tenure.last_message = last_message;
            }
        };
        let Some(expected) = known else {
            return Err(Error::Conflict("the log may have changed since it was read; settle and read it again".into()));
        };
        let writer = self.writer_for(id);
        let message_id = format!("{}-{}", self.node_id, self.counter.fetch_add(1, Ordering::Relaxed));
        match writer.publish(&message_id, Bytes::from(payload), Some(expected), None).await {
            Ok(message_seq) => {
                set_known(Some(message_seq));
                let first_seq = message::record_seq(message_seq, 0);
                Ok(Appended { first_seq, last_seq: first_seq + records.len() as u64 - 1 })
            }
            Err(error) => {
                // Stored or not, or someone else's stored: the log must be read again.
                set_known(None);
                Err(error)
            }
        }
    }

    fn commit_error(id: u64, reason: String) -> Error {
        if reason.contains("wrong last sequence") || reason.contains("already exists") {
            Error::Fenced(id)
        } else {
            Error::Request(format!("committing {id:016x}: {reason}"))
        }
    }

    /// Acknowledges every record up to `seq` (never moving back) and, with `state`,
    /// replaces the consumer's state, in one compare-and-set on the progress entry
    /// against the revision the tenure `token` (from [`StreamLogs::take_over`]) last
    /// wrote; then purges the messages below the one holding the acknowledged
    /// position. [`Error::Fenced`] if a later tenure began, here or on another node.
    pub async fn commit(&self, id: u64, token: u64, seq: u64, state: Option<Vec<u8>>) -> Result<(), Error> {
        if state.as_ref().is_some_and(|s| s.len() > STATE_BYTES_MAX) {
            return Err(Error::Request(format!("consumer state over {STATE_BYTES_MAX} bytes")));
        }
        let revision = match self.tenures.lock().expect("lock").get(&id) {
            Some(Tenure { token: latest, revision: Some(revision), .. }) if *latest == token => *revision,
            _ => return Err(Error::Fenced(id)),
        };
        let (read, current) = self.read_progress(id).await?;
        if read != revision {
            return Err(Error::Fenced(id));
        }
        let acked = current.acked.max(seq);
        let state = state.or_else(|| current.state());
        let value = Bytes::from(serde_json::to_vec(&ProgressEntry::with_state(acked, state)).expect("serialises"));
        let written = self.progress.update(Self::progress_key(id), value, revision).await;
        let revision = written.map_err(|e| Self::commit_error(id, e.to_string()))?;
        if let Some(tenure) = self.tenures.lock().expect("lock").get_mut(&id).filter(|t| t.token == token) {
            tenure.revision = Some(revision);
        }
        let keep_from = message::message_seq(acked);
        if keep_from > 1 {
            let stream = self.stream(id).await?;
            stream
                .purge()
                .sequence(keep_from)
                .await
                .map_err(|e| Error::Request(format!("purging {id:016x} below message {keep_from}: {e}")))?;
        }
        Ok(())
    }

    /// Whether the servers answer JetStream requests (a quorum of the meta group is
    /// reachable).
    pub async fn ping(&self) -> Result<(), Error> {
        match tokio::time::timeout(self.options.timeout, self.jetstream.query_account()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Request(format!("JetStream does not answer: {e}"))),
            Err(_) => Err(Error::Request(format!("JetStream did not answer within {:?}", self.options.timeout))),
        }
    }

    /// Whether the client is connected to a NATS server now (no request: for the
    /// put path and `/health`, which must not wait for a timeout to notice that
    /// every server is gone).
    pub fn connected(&self) -> bool {
        self.jetstream.client().connection_state() == async_nats::connection::State::Connected
    }

    /// Bytes the stream's log holds (its messages not yet purged).
    pub async fn retained_bytes(&self, id: u64) -> Result<u64, Error> {
        Ok(self.stream_state(id).await?.0)
    }

    /// Bytes the stream's log holds, and the sequence of its last message.
    pub async fn stream_state(&self, id: u64) -> Result<(u64, u64), Error> {
        let info = self.stream(id).await?.get_info().await.map_err(|e| Error::Request(e.to_string()))?;
        Ok((info.state.bytes, info.state.last_sequence))
    }

    async fn stream(&self, id: u64) -> Result<stream::Stream, Error> {
        self.jetstream.get_stream(self.stream_name(id)).await.map_err(|e| match e.to_string() {
            reason if reason.contains("not found") => Error::UnknownStream(id),
            reason => Error::Request(reason),
        })
    }
}

/// One stream's publisher on this node: the group-commit loop.
struct Writer {
    jetstream: jetstream::Context,
    subject: String,
    stream_name: String,
    node_id: String,
    counter: Arc<AtomicU64>,
    timeout: Duration,
}

/// A publish sent, its acknowledgement still to come.
type Sent = Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>;

/// The appends one message will hold.
#[derive(Default)]
struct Group {
    requests: Vec<AppendRequest>,
    n_bytes: usize,
    n_records: usize,
}

impl Group {
    fn push(&mut self, request: AppendRequest) {
        self.n_bytes += request.records.iter().map(|r| r.len() + message::RECORD_OVERHEAD_BYTES).sum::<usize>();
        self.n_records += request.records.len();
        self.requests.push(request);
    }

    /// Whether `request` may join: within a message's bytes and records, and sealed
    /// only with sealed records.
    fn fits(&self, request: &AppendRequest) -> bool {
        let bytes: usize = request.records.iter().map(|r| r.len() + message::RECORD_OVERHEAD_BYTES).sum();
        self.n_bytes + bytes <= COMMIT_BYTES_MAX - 4096
            && ((self.n_records + request.records.len()) as u64) < RECORDS_PER_MESSAGE
            && self.requests.first().is_none_or(|first| first.encrypted == request.encrypted)
    }
}

impl Writer {
    async fn run(self, mut requests: mpsc::Receiver<AppendRequest>) {
        let writer = Arc::new(self);
        // Messages published and not yet acknowledged: each answers its own appends.
        let mut in_flight = tokio::task::JoinSet::new();
        // How many appends the previous message held: their callers are about to
        // append again.
        let mut answered = 1usize;
        while let Some(first) = requests.recv().await {
            let mut group = Group::default();
            group.push(first);
            let linger_until = tokio::time::Instant::now() + COMMIT_LINGER;
            loop {
                let request = match requests.try_recv() {
                    Ok(request) => request,
                    Err(_) => {
                        // Nothing queued. Wait a moment for the callers the previous
                        // message answered (over loaded cores they are back a little
                        // after the publish starts, and would make a message of their
                        // own), but never past the linger, and not at all for a lone
                        // caller. A small group also waits behind a publish in flight,
                        // gathering what arrives meanwhile: fewer, fuller messages are
                        // what bounds PutRecord in cluster mode (the servers' work per
                        // message). A large one goes at once beside it.
                        let for_callers = group.requests.len() < answered;
                        let behind = group.n_bytes < PIPELINED_GROUP_BYTES_MIN && !in_flight.is_empty();
                        if !for_callers && !behind {
                            break;
                        }
                        tokio::select! {
                            request = requests.recv() => match request {
                                Some(request) => request,
                                None => break,
                            },
                            _ = in_flight.join_next(), if behind => continue,
                            _ = tokio::time::sleep_until(linger_until), if !behind => break,
                        }
                    }
                };
                if !group.fits(&request) {
                    // Too much for this message: it opens the next group.
                    answered = group.requests.len();
                    writer.launch(&mut in_flight, std::mem::take(&mut group)).await;
                }
                group.push(request);
            }
            answered = group.requests.len();
            writer.launch(&mut in_flight, group).await;
        }
        // The appends in flight are still answered.
        while in_flight.join_next().await.is_some() {}
    }

    /// Publishes one group as one message, once fewer than
    /// [`PUBLISHES_IN_FLIGHT_MAX`] are in flight, and leaves its acknowledgement
    /// (and any retry) to a task that then answers the group's appends. The message
    /// is sent here, in the writer's order, so records of groups formed one after
    /// the other are stored in that order unless a publish has to be retried.
    async fn launch(self: &Arc<Self>, in_flight: &mut tokio::task::JoinSet<()>, group: Group) {
        if group.requests.is_empty() {
            return;
        }
        while in_flight.len() >= PUBLISHES_IN_FLIGHT_MAX {
            in_flight.join_next().await;
        }
        let mut payload = Vec::with_capacity(group.n_bytes + 64);
        message::encode(
            group.requests.iter().flat_map(|r| r.records.iter().map(move |d| (d.as_slice(), r.arrival_ms))),
            group.requests[0].encrypted,
            &mut payload,
        );
        let payload = Bytes::from(payload);
        let id = format!("{}-{}", self.node_id, self.counter.fetch_add(1, Ordering::Relaxed));
        let sent = self.send(&id, payload.clone(), None).await;
        let writer = self.clone();
        in_flight.spawn(async move {
            let result = writer.publish(&id, payload, None, Some(sent)).await;
            let mut index = 0usize;
            for request in group.requests {
                let answer = result.as_ref().map_err(Error::clone_of).map(|message_seq| {
                    let first_seq = message::record_seq(*message_seq, index);
                    Appended { first_seq, last_seq: first_seq + request.records.len() as u64 - 1 }
                });
                index += request.records.len();
                let _ = request.reply.send(answer);
            }
        });
    }

    /// Sends one publish (its acknowledgement is awaited by [`Writer::publish`]).
    async fn send(&self, id: &str, payload: Bytes, expected_last: Option<u64>) -> Sent {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id)
            .expected_stream(&self.stream_name);
        if let Some(last) = expected_last {
            publish = publish.expected_last_sequence(last);
        }
        self.jetstream.send_publish(self.subject.clone(), publish).await
    }

    /// Publishes with retries under one message id until acknowledged, or until
    /// twice the timeout has passed: then the outcome is unknown. With
    /// `expected_last`, only if the stream's last message is that one
    /// ([`Error::Conflict`] otherwise).
    /// `sent`: the first attempt, if the caller sent it.
    async fn publish(
        &self,
        id: &str,
        payload: Bytes,
        expected_last: Option<u64>,
        mut sent: Option<Sent>,
    ) -> Result<u64, Error> {
        let deadline = tokio::time::Instant::now() + self.timeout * 2;
        let mut last_error = String::new();
        // Whether an attempt may have been stored (sent, then no answer): only then is
        // the outcome unknown at the deadline.
        let mut maybe_stored = false;
        while tokio::time::Instant::now() < deadline {
            let sent = match sent.take() {
                Some(sent) => sent,
                None => self.send(id, payload.clone(), expected_last).await,
            };
            let acked = match sent {
                Ok(ack) => tokio::time::timeout(self.timeout, std::future::IntoFuture::into_future(ack)).await,
                Err(e) => Ok(Err(e)),
            };
            match acked {
                Ok(Ok(ack)) => return Ok(ack.sequence),
                Ok(Err(e)) => {
                    use jetstream::context::PublishErrorKind;
                    match e.kind() {
                        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                            maybe_stored = true;
                            last_error = e.to_string();
                        }
                        // No server took it (nothing stored): a stream just created, or
                        // its leader just moved, is not yet known to the server this
                        // client talks to. Tried again until the deadline (CI saw the
                        // first append after a create refused so).
                        PublishErrorKind::StreamNotFound => last_error = "no such stream".into(),
                        PublishErrorKind::WrongLastSequence => return Err(Error::Conflict(e.to_string())),
                        _ => {
                            let reason = e.to_string();
                            if reason.contains("maximum bytes") || reason.contains("resource limits") {
                                return Err(Error::Full(reason));
                            }
                            return Err(Error::Refused(reason));
                        }
                    }
                }
                Err(_) => {
                    maybe_stored = true;
                    last_error = "no acknowledgement in time".into();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if maybe_stored {
            Err(Error::Unconfirmed(last_error))
        } else {
            Err(Error::Refused(last_error))
        }
    }
}

/// Reads a stream's stored records in order from a position, through an ordered
/// consumer started at the message holding that position.
pub struct Cursor {
    jetstream: jetstream::Context,
    stream_name: String,
    next_seq: u64,
    /// The last message taken from the consumer (or the one before the start).
    consumed: u64,
    /// How many messages the stream held after that one when it was sent; `None`
    /// before the first (then the stream is asked).
    pending: Option<u64>,
    /// How long a message known to be stored may take to arrive.
    timeout: Duration,
    /// For a batch read back, its last record: everything up to it is known to be
    /// stored, so the cursor waits for it rather than ending early.
    until: Option<u64>,
    /// Messages the consumer pulls ahead of the reader.
    ahead_max: i64,
    messages: Option<consumer::pull::Ordered>,
    ready: std::collections::VecDeque<StoredRecord>,
    /// The `Nats-Msg-Id`s of the last messages taken (at most
    /// [`RECENT_IDS_MAX`]): a message stored twice under one id is taken once.
    recent_ids: (std::collections::VecDeque<String>, std::collections::HashSet<String>),
}

/// Whether JetStream refused to create a stream only for the moment: its meta group
/// has no leader, or too few peers have reported in to place the replicas.
fn passing(error: &async_nats::jetstream::context::CreateStreamError) -> bool {
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    use async_nats::jetstream::ErrorCode;
    match error.kind() {
        Kind::JetStreamUnavailable | Kind::TimedOut => true,
        Kind::JetStream(e) => [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NO_PEERS,
            ErrorCode::CLUSTER_NOT_ACTIVE,
            ErrorCode::CLUSTER_INCOMPLETE,
        ]
        .contains(&e.error_code()),
        _ => false,
    }
}

/// Message ids a cursor remembers. A publish retried after its PubAck was lost
/// carries the id of the first attempt; the stream's duplicate window should drop
/// it, yet the fault test saw one commit group stored twice, back to back, after a
/// NATS server lost its disk. The copy lands within moments of the original, so a
/// short memory suffices; its records were never acknowledged under the copy's
/// sequence numbers, so dropping it loses nothing.
const RECENT_IDS_MAX: usize = 4096;

impl Cursor {
    async fn consumer(&mut self) -> Result<&mut consumer::pull::Ordered, Error> {
        if self.messages.is_none() {
            let stream =
                self.jetstream.get_stream(&self.stream_name).await.map_err(|e| Error::Request(e.to_string()))?;
            let start = message::message_seq(self.next_seq).max(1);
            let config = consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                // Not the client's default (500 messages ahead) and not a byte budget
                // (a pull whose budget a message exceeds can stall the consumer).
                max_batch: self.ahead_max,
                ..consumer::pull::OrderedConfig::default()
            };
            let consumer = stream.create_consumer(config).await.map_err(|e| Error::Request(format!("reading: {e}")))?;
            self.messages = Some(consumer.messages().await.map_err(|e| Error::Request(format!("reading: {e}")))?);
        }
        Ok(self.messages.as_mut().expect("set above"))
    }

    /// Takes one message into `ready`, waiting at most `wait`. `false` if none came.
    async fn receive(&mut self, wait: Duration) -> Result<bool, Error> {
        let messages = self.consumer().await?;
        let message = match tokio::time::timeout(wait, messages.next()).await {
            Err(_) | Ok(None) => return Ok(false),
            Ok(Some(Err(e))) => {
                self.messages = None;
                return Err(Error::Request(format!("reading: {e}")));
            }
            Ok(Some(Ok(message))) => message,
        };
        let (message_seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => {
                // Taken from the consumer but not read: a new consumer brings it again.
                self.messages = None;
                return Err(Error::Request(e.to_string()));
            }
        };
        if message_seq <= self.consumed {
            // Taken already: its records are read or still in `ready`. A consumer
            // made again after an error starts at the reader's position, which may
            // be before messages already taken; taking one twice would hand its
            // records out twice.
            return Ok(true);
        }
        if message_seq > self.consumed + 1 {
            // The consumer stepped over messages. A stream's sequences have no holes
            // above the purged ones (deletes are denied), but a consumer reads the
            // store of whichever replica JetStream placed it on, and steps over
            // what that store lacks: a replica being rebuilt can lack messages its
            // leader holds. Read them from the leader instead; never skip one.
            if let Err(error) = self.fill_from_leader(message_seq).await {
                self.messages = None;
                return Err(error);
            }
        }
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
        self.take(message_seq, &message.payload, id)?;
        self.pending = Some(pending);
        Ok(true)
    }

    /// Takes the messages after the last one taken and before `message_seq` from
    /// the stream's leader; those it no longer holds must have been purged (below
    /// every reader's position), or the read fails.
    async fn fill_from_leader(&mut self, message_seq: u64) -> Result<(), Error> {
        let (from, to) = (self.consumed + 1, message_seq - 1);
        let mut stream =
            self.jetstream.get_stream(&self.stream_name).await.map_err(|e| Error::Request(e.to_string()))?;
        let first_seq = stream.info().await.map_err(|e| Error::Request(e.to_string()))?.state.first_sequence;
        if from < first_seq {
            self.consumed = (first_seq - 1).min(to);
        }
        let mut filled = 0u64;
        for seq in from.max(first_seq)..=to {
            match stream.get_raw_message(seq).await {
                Ok(stored) => {
                    let id = stored.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string());
                    self.take(seq, &stored.payload, id)?;
                    filled += 1;
                }
                Err(e) => {
                    return Err(Error::Request(format!(
                        "message {seq} of {} was stepped over by its consumer and cannot be read from the \
                         stream's leader: {e}",
                        self.stream_name
                    )));
                }
            }
        }
        if filled > 0 {
            tracing::warn!(stream = %self.stream_name, from, to, filled,
                "The consumer stepped over messages its replica lacks; they were read from the stream's leader.");
        }
        Ok(())
    }

    /// Takes message `message_seq` (its records at or after the reader's position
    /// into `ready`), unless a message under the same id was just taken.
    fn take(&mut self, message_seq: u64, payload: &[u8], id: Option<String>) -> Result<(), Error> {
        let next_seq = self.next_seq;
        let records = message::decode(payload)
            .map_err(|reason| Error::Request(format!("message {message_seq} of {}: {reason}", self.stream_name)))?;
        self.consumed = message_seq;
        if let Some(id) = id {
            let (order, ids) = &mut self.recent_ids;
            if ids.contains(&id) {
                tracing::warn!(stream = %self.stream_name, message_seq, %id, "A message stored twice under one id: its copy is skipped.");
                return Ok(());
            }
            if order.len() == RECENT_IDS_MAX {
                if let Some(oldest) = order.pop_front() {
                    ids.remove(&oldest);
                }
            }
            order.push_back(id.clone());
            ids.insert(id);
        }
        for (index, record) in records.into_iter().enumerate() {
            let seq = message::record_seq(message_seq, index);
            if seq >= next_seq {
                self.ready.push_back(StoredRecord {
                    seq,
                    arrival_ms: record.arrival_ms,
                    data: record.data.to_vec(),
                    encrypted: record.encrypted,
                });
            }
        }
        Ok(())
    }

    /// Up to `records_max` records and about `bytes_max` bytes that are stored now.
    /// None only when nothing was stored past the position before the last message
    /// taken was sent (or, before any, before this call): a message the stream holds
    /// but the consumer has not brought yet is waited for (up to the timeout, then an
    /// error), so that a reader never takes "not here yet" for "not there" (a batch
    /// read back short would be committed short). The count of messages after each
    /// one comes with it, so only a fresh cursor asks the stream.
    pub async fn read(&mut self, records_max: usize, bytes_max: usize) -> Result<Vec<StoredRecord>, Error> {
        let mut out = Vec::new();
        let mut n_bytes = 0usize;
        loop {
            while let Some(record) = self.ready.front() {
                if out.len() >= records_max || (n_bytes >= bytes_max && !out.is_empty()) {
                    return Ok(out);
                }
                n_bytes += record.data.len();
                let record = self.ready.pop_front().expect("checked above");
                self.next_seq = record.seq + 1;
                out.push(record);
            }
            if out.len() >= records_max || n_bytes >= bytes_max {
                return Ok(out);
            }
            match self.receive(Duration::from_millis(1)).await {
                Ok(true) => continue,
                Ok(false) => {}
                // The position has moved past the records in `out`: hand them over
                // (dropping them would lose them from this reader's view); the
                // failure recurs at the next read, which has nothing to lose yet.
                Err(_) if !out.is_empty() => return Ok(out),
                Err(error) => return Err(error),
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let stored_past = match (self.until, self.pending) {
                // A batch read back: its records were handed out before, so they are
                // there, whatever a consumer on a replica behind its leader says.
                (Some(until), _) => self.next_seq <= until,
                (None, Some(pending)) => pending > 0,
                (None, None) => last_message(self.jetstream.clone(), self.stream_name.clone()).await? > self.consumed,
            };
            if !stored_past {
                return Ok(out);
            }
            if !self.receive(self.timeout).await? {
                return Err(Error::Request(format!(
                    "{} holds messages after {} that did not arrive within {:?}",
                    self.stream_name, self.consumed, self.timeout
                )));
            }
        }
    }

    /// Whether every message the stream held when asked has been read. A read that
    /// returned nothing judged by the pending count of the last message it took,
    /// which does not know of messages stored after that one was sent: a caller
    /// about to act on "nothing more" (a shutdown, a flush) asks the stream itself.
    pub async fn caught_up(&mut self) -> Result<bool, Error> {
        if !self.ready.is_empty() {
            return Ok(false);
        }
        let last = last_message(self.jetstream.clone(), self.stream_name.clone()).await?;
        if last > self.consumed {
            // The next read waits for them rather than trusting the stale count.
            self.pending = Some(last - self.consumed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Drops the consumer as a read error does: the next read makes a new one at the
    /// reader's position. For tests (a method, not a feature: a feature the tests
    /// turn on would build this crate and the server twice in CI).
    #[doc(hidden)]
    pub fn drop_consumer(&mut self) {
        self.messages = None;
    }

    /// Resolves when a record at or after the cursor is stored (or after `wait`).
    pub async fn wait(&mut self, wait: Duration) {
        if self.ready.is_empty() {
            let _ = self.receive(wait).await;
        }
    }
}

/// The sequence of a stream's last message (owned arguments: the cursor is only
/// `Send`, and its futures must be too).
async fn last_message(jetstream: jetstream::Context, stream_name: String) -> Result<u64, Error> {
    let mut stream = jetstream.get_stream(&stream_name).await.map_err(|e| Error::Request(e.to_string()))?;
    let info = stream.info().await.map_err(|e| Error::Request(e.to_string()))?;
    Ok(info.state.last_sequence)
}
