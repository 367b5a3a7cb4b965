//! The stream catalog: every delivery stream's definition, tags, version and
//! encryption state, keyed by region and name. Control-plane handlers change it;
//! the put path only looks streams up, in memory. Kept in one of two stores: the
//! file `catalog.json`, replaced atomically after every change (one node,
//! `file.rs`), or a replicated key-value bucket with one entry per stream changed by
//! compare-and-set and watched by every node (cluster mode, `bucket.rs`). Either
//! way a stream that was created is never forgotten.
//!
//! Transitional states are derived from time rather than driven by timers: a stream
//! is `CREATING` until `active_at_ms`, and encryption is `ENABLING`/`DISABLING` until
//! `changed_at_ms + transition_ms`. Nothing needs to run for a state to advance, and a
//! restart cannot leave a stream stuck half-way.

mod bucket;
mod file;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sluice_protocol::destination::Destination;

pub use bucket::BucketStore;

/// A stream's encryption at rest, as last requested.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EncryptionState {
    /// Whether encryption is on (or turning on).
    pub enabled: bool,
    /// `AWS_OWNED_CMK` or `CUSTOMER_MANAGED_CMK`; kept after Stop, as Firehose does.
    pub key_type: Option<String>,
    /// The KMS key ARN for `CUSTOMER_MANAGED_CMK`.
    pub key_arn: Option<String>,
    /// When the last Start or Stop happened (Unix ms); 0 if never.
    pub changed_at_ms: u64,
    /// Times of Start and Stop calls in the last 24 hours, for the 25-per-day limit.
    pub changes_ms: Vec<u64>,
}

impl EncryptionState {
    /// The key reference records are written under, when encrypted.
    pub fn key_ref(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        match self.key_type.as_deref() {
            Some("CUSTOMER_MANAGED_CMK") => self.key_arn.clone(),
            _ => Some(crate::keys::AWS_OWNED_KEY_REF.to_string()),
        }
    }

    /// `ENABLED`, `ENABLING`, `DISABLED` or `DISABLING` at `now_ms`.
    pub fn status(&self, now_ms: u64, transition_ms: u64) -> &'static str {
        let settled = self.changed_at_ms == 0 || now_ms >= self.changed_at_ms + transition_ms;
        match (self.enabled, settled) {
            (true, true) => "ENABLED",
            (true, false) => "ENABLING",
            (false, true) => "DISABLED",
            (false, false) => "DISABLING",
        }
    }
}

/// One delivery stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Identity in the log; never reused, so a re-created name gets a new log.
    pub id: u64,
    /// Region it lives in.
    pub region: String,
    /// Name.
    pub name: String,
    /// `DirectPut` or `KinesisStreamAsSource`.
    pub stream_type: String,
    /// The Kinesis data stream a `KinesisStreamAsSource` stream reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_source: Option<sluice_protocol::dto::KinesisStreamSource>,
    /// Creation time, Unix ms.
    pub created_ms: u64,
    /// The stream is `CREATING` before this time and `ACTIVE` from it.
    pub active_at_ms: u64,
    /// Last UpdateDestination, Unix ms.
    pub last_update_ms: Option<u64>,
    /// `VersionId`, from 1, plus one per UpdateDestination.
    pub version_id: u64,
    /// `destinationId-000000000001`.
    pub destination_id: String,
    /// The destination.
    pub destination: Destination,
    /// `DirectPutSourceConfiguration.ThroughputHintInMBs`, if given.
    pub throughput_hint_mbs: Option<i64>,
    /// Tags, sorted by key.
    pub tags: BTreeMap<String, Option<String>>,
    /// Encryption at rest.
    pub encryption: EncryptionState,
    /// Changes since creation (1 at creation, plus one per change of any kind), so
    /// that of two copies of the definition the newer can be told (see
    /// [`StreamDefinition`]). 0 in catalogs written before it existed.
    #[serde(default)]
    pub revision: u64,
}

impl StreamRecord {
    /// A stream for tests: ACTIVE since 0, delivering to `destination`.
    #[cfg(test)]
    pub(crate) fn for_test(id: u64, name: &str, destination: Destination) -> StreamRecord {
        StreamRecord {
            id,
            region: "us-east-1".into(),
            name: name.into(),
            stream_type: "DirectPut".into(),
            kinesis_source: None,
            created_ms: 0,
            active_at_ms: 0,
            last_update_ms: None,
            version_id: 1,
            destination_id: "destinationId-000000000001".into(),
            destination,
            throughput_hint_mbs: None,
            tags: Default::default(),
            encryption: Default::default(),
            revision: 1,
        }
    }

    /// Whether records come from a Kinesis data stream rather than from puts.
    pub fn reads_kinesis(&self) -> bool {
        self.kinesis_source.is_some()
    }

    /// `CREATING` or `ACTIVE` at `now_ms`.
    pub fn status(&self, now_ms: u64) -> &'static str {
        if now_ms < self.active_at_ms {
            "CREATING"
        } else {
            "ACTIVE"
        }
    }
}

/// Version of the definition kept beside each stream's log.
const DEFINITION_FORMAT_VERSION: u32 = 1;

/// Where a stream's life is, as recorded beside its log. With the catalog this
/// tells, at start, an interrupted create or delete apart from a catalog that was
/// lost or restored from an older copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// The log was made; the catalog may not name the stream yet (a crash here is
    /// an interrupted create, and the log holds no records).
    Creating,
    /// The catalog names the stream.
    Active,
    /// A delete began: the catalog is about to forget the stream, then the log goes.
    Deleting,
}

/// A stream's definition as kept beside its log (the record log's opaque
/// definition blob), a copy of its catalog entry: enough to rebuild the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamDefinition {
    /// [`DEFINITION_FORMAT_VERSION`].
    pub format_version: u32,
    /// Where the stream's life is.
    pub lifecycle: Lifecycle,
    /// The catalog entry.
    pub stream: StreamRecord,
}

impl StreamDefinition {
    /// The blob for `stream` at `lifecycle`.
    pub fn encode(stream: &StreamRecord, lifecycle: Lifecycle) -> Vec<u8> {
        let definition =
            StreamDefinition { format_version: DEFINITION_FORMAT_VERSION, lifecycle, stream: stream.clone() };
        serde_json::to_vec(&definition).expect("definitions always serialise")
    }

    /// Reads a blob; `Err` for one this build cannot read.
    pub fn decode(blob: &[u8]) -> Result<StreamDefinition, String> {
        let definition: StreamDefinition = serde_json::from_slice(blob).map_err(|e| e.to_string())?;
        if definition.format_version > DEFINITION_FORMAT_VERSION {
            return Err(format!("format version {} is newer than this build", definition.format_version));
        }
        Ok(definition)
    }
}

/// The streams of every region.
#[derive(Debug, Default, Clone)]
pub struct CatalogState {
    /// The id the next created stream gets.
    pub next_stream_id: u64,
    /// Streams by `(region, name)`; ordered, so listing is alphabetical.
    pub streams: BTreeMap<(String, String), Arc<StreamRecord>>,
}

/// Where the catalog is kept.
enum Store {
    /// `catalog.json` in this directory.
    File(PathBuf),
    /// A replicated key-value bucket (cluster mode).
    Bucket(Box<BucketStore>),
}

/// The catalog: an in-memory view, and its store.
pub struct Catalog {
    store: Store,
    /// For the file store: the next id [`Catalog::reserve_id`] may hand out (at least
    /// the state's `next_stream_id`).
    reserved: AtomicU64,
    state: RwLock<CatalogState>,
    /// Streams by log id, rebuilt after every change: delivery workers look their
    /// stream up by id on every batch.
    by_id: RwLock<HashMap<u64, Arc<StreamRecord>>>,
    /// Changes made through this node are made one at a time.
    changing: tokio::sync::Mutex<()>,
}

/// The catalog could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Reading or writing failed.
    #[error("catalog {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a catalog this build understands.
    #[error("catalog {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The replicated catalog could not be read or written.
    #[error("catalog: {0}")]
    Bucket(String),
    /// Another node changed the same stream at the same time, again and again.
    #[error("catalog: {0}")]
    Contended(String),
}

/// Attempts at a change that keeps losing races to other nodes' changes of the same
/// stream, before it is given up ([`CatalogError::Contended`]).
const CHANGE_ATTEMPTS_MAX: u32 = 8;
/// The pause after the first lost race, doubled after each next one (about 1.3 s in
/// all). A compare-and-set can lose to a write the servers have accepted but not
/// yet stored, so reading back at once may still show the old record: deciding on
/// it again without a pause lost every attempt within a few milliseconds (a CI run
/// saw that as "kept changing" instead of the stale VersionId's error).
const CHANGE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl Catalog {
    /// Whether `dir` holds a catalog file.
    pub fn exists(dir: &Path) -> bool {
        file::exists(dir)
    }

    /// Loads `catalog.json` from `dir`, or starts empty.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let state = file::load(dir)?;
        Ok(Catalog::with(Store::File(dir.to_path_buf()), state))
    }

    /// Loads the catalog from a replicated bucket. Call [`Catalog::follow`] to keep
    /// the view up to date with other nodes' changes.
    pub async fn open_bucket(store: BucketStore) -> Result<Catalog, CatalogError> {
        let state = store.load().await?;
        Ok(Catalog::with(Store::Bucket(Box::new(store)), state))
    }

    fn with(store: Store, state: CatalogState) -> Catalog {
        Catalog {
            store,
            reserved: AtomicU64::new(state.next_stream_id),
            by_id: RwLock::new(by_id(&state)),
            state: RwLock::new(state),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// With a replicated store: applies every other node's change to this node's
    /// view as it happens, until `shutdown` turns true. A no-op for the file store.
    pub async fn follow(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        if let Store::Bucket(store) = &self.store {
            store.follow(&self, shutdown).await;
        }
    }

    /// With a replicated store: waits (briefly) until this node's view includes
    /// every change made through any node before the call, so that reads through
    /// any node see what a client did through another. A no-op for the file store.
    pub async fn catch_up(&self) {
        if let Store::Bucket(store) = &self.store {
            store.catch_up(CATCH_UP_WAIT).await;
        }
    }

    /// An id for a stream about to be created: above every id handed out before,
    /// never the same twice (in cluster mode, across nodes).
    pub async fn reserve_id(&self) -> Result<u64, CatalogError> {
        if let Store::Bucket(store) = &self.store {
            return store.reserve_id().await;
        }
        let floor = self.state.read().expect("lock").next_stream_id;
        let mut current = self.reserved.load(Ordering::Relaxed);
        loop {
            let id = current.max(floor);
            match self.reserved.compare_exchange(current, id + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(id),
                Err(actual) => current = actual,
            }
        }
    }

    /// The stream named `name` in `region`.
    pub fn get(&self, region: &str, name: &str) -> Option<Arc<StreamRecord>> {
        let state = self.state.read().expect("lock");
        state.streams.get(&(region.to_string(), name.to_string())).cloned()
    }

    /// The stream whose log id is `id`, in whatever region.
    pub fn get_by_id(&self, id: u64) -> Option<Arc<StreamRecord>> {
        self.by_id.read().expect("lock").get(&id).cloned()
    }

    /// The log ids of every stream.
    pub fn ids(&self) -> std::collections::HashSet<u64> {
        self.by_id.read().expect("lock").keys().copied().collect()
    }

    /// A snapshot of every stream.
    pub fn snapshot(&self) -> CatalogState {
        self.state.read().expect("lock").clone()
    }

    /// Applies `change` to a copy of the catalog and stores the result; on any error
    /// nothing changes. In cluster mode each changed stream is written with
    /// compare-and-set: when another node changed it meanwhile, the view is brought
    /// up to date and `change` runs again on it, so it decides on what is true now
    /// (a create of a name another node just took fails as "already exists").
    pub async fn update<R, E: From<CatalogError>>(
        &self,
        change: impl Fn(&mut CatalogState) -> Result<R, E>,
    ) -> Result<R, E> {
        let _one_at_a_time = self.changing.lock().await;
        for attempt in 0..CHANGE_ATTEMPTS_MAX {
            let before = self.snapshot();
            let mut next = before.clone();
            let result = change(&mut next)?;
            let stored = match &self.store {
                Store::File(dir) => {
                    let (dir, to_write) = (dir.clone(), next.clone());
                    tokio::task::spawn_blocking(move || file::persist(&dir, &to_write))
                        .await
                        .map_err(|e| CatalogError::Bucket(e.to_string()))?
                }
                Store::Bucket(store) => store.persist(&before, &next).await,
            };
            match stored {
                Ok(()) => {
                    self.apply_local(&before, next);
                    return Ok(result);
                }
                Err(Conflict::Lost(keys)) => {
                    // Another node won: read what it wrote, then decide again.
                    tokio::time::sleep(CHANGE_RETRY_PAUSE * 2u32.pow(attempt)).await;
                    if let Store::Bucket(store) = &self.store {
                        for (region, name) in keys {
                            store.refresh(self, &region, &name).await?;
                        }
                    }
                }
                Err(Conflict::Failed(error)) => return Err(error.into()),
            }
        }
        Err(CatalogError::Contended("the stream kept changing under this change; try again".into()).into())
    }

    /// Applies what this node changed (`before` to `next`) to the view: only those
    /// streams, so that another node's change applied meanwhile is kept.
    fn apply_local(&self, before: &CatalogState, next: CatalogState) {
        let mut state = self.state.write().expect("lock");
        for key in before.streams.keys().filter(|k| !next.streams.contains_key(*k)) {
            state.streams.remove(key);
        }
        for (key, stream) in next.streams {
            if !before.streams.get(&key).is_some_and(|old| Arc::ptr_eq(old, &stream)) {
                state.streams.insert(key, stream);
            }
        }
        state.next_stream_id = state.next_stream_id.max(next.next_stream_id);
        *self.by_id.write().expect("lock") = by_id(&state);
    }

    /// Applies a change another node made (`None`: the stream was deleted).
    fn apply_remote(&self, region: &str, name: &str, stream: Option<Arc<StreamRecord>>) {
        let mut state = self.state.write().expect("lock");
        let key = (region.to_string(), name.to_string());
        match stream {
            Some(stream) => {
                state.next_stream_id = state.next_stream_id.max(stream.id + 1);
                state.streams.insert(key, stream);
            }
            None => {
                state.streams.remove(&key);
            }
        }
        *self.by_id.write().expect("lock") = by_id(&state);
    }
}

/// The longest a read waits for this node's view of the catalog to catch up.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a store did not take a change.
enum Conflict {
    /// Other nodes changed these streams since they were read.
    Lost(Vec<(String, String)>),
    /// The store failed.
    Failed(CatalogError),
}

impl From<CatalogError> for Conflict {
    fn from(error: CatalogError) -> Conflict {
        Conflict::Failed(error)
    }
}

/// Streams per region, for the quota check.
pub fn count_in_region(state: &CatalogState, region: &str) -> usize {
    state.streams.keys().filter(|(r, _)| r == region).count()
}

/// The streams by log id.
fn by_id(state: &CatalogState) -> HashMap<u64, Arc<StreamRecord>> {
    state.streams.values().map(|s| (s.id, s.clone())).collect()
}
