//! The stream catalog: every delivery stream's definition, tags, version and
//! encryption state, keyed by region and name. Control-plane handlers change it;
//! the put path only looks streams up. Persisted atomically to `catalog.json` after
//! every change, so a stream that was created is never forgotten.
//!
//! Transitional states are derived from time rather than driven by timers: a stream
//! is `CREATING` until `active_at_ms`, and encryption is `ENABLING`/`DISABLING` until
//! `changed_at_ms + transition_ms`. Nothing needs to run for a state to advance, and a
//! restart cannot leave a stream stuck half-way.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sluice_protocol::destination::Destination;

/// Version of the `catalog.json` format.
const CATALOG_FORMAT_VERSION: u32 = 1;
const CATALOG_FILE: &str = "catalog.json";

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
    /// `DirectPut`.
    pub stream_type: String,
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    format_version: u32,
    next_stream_id: u64,
    streams: Vec<StreamRecord>,
}

/// The streams of every region.
#[derive(Debug, Default, Clone)]
pub struct CatalogState {
    /// The id the next created stream gets.
    pub next_stream_id: u64,
    /// Streams by `(region, name)`; ordered, so listing is alphabetical.
    pub streams: BTreeMap<(String, String), Arc<StreamRecord>>,
}

/// The catalog and its file.
pub struct Catalog {
    dir: PathBuf,
    /// The next id [`Catalog::reserve_id`] may hand out (at least the state's
    /// `next_stream_id`).
    reserved: std::sync::atomic::AtomicU64,
    state: RwLock<CatalogState>,
    /// Streams by log id, rebuilt after every change: delivery workers look their
    /// stream up by id on every batch.
    by_id: RwLock<HashMap<u64, Arc<StreamRecord>>>,
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
}

impl Catalog {
    /// Whether `dir` holds a catalog file.
    pub fn exists(dir: &Path) -> bool {
        dir.join(CATALOG_FILE).exists()
    }

    /// Loads `catalog.json` from `dir`, or starts empty.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let file = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<CatalogFile>(&bytes)
                .map_err(|e| CatalogError::Format {
                    path: path.clone(),
                    reason: format!(
                        "{e}. Sluice keeps each stream's definition beside its log: move the damaged file aside and start again to rebuild the catalog from them"
                    ),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                CatalogFile { next_stream_id: 1, ..Default::default() }
            }
            Err(source) => return Err(CatalogError::Io { path, source }),
        };
        if file.format_version > CATALOG_FORMAT_VERSION {
            return Err(CatalogError::Format {
                path,
                reason: format!("format version {} is newer than this build", file.format_version),
            });
        }
        let streams = file.streams.into_iter().map(|s| ((s.region.clone(), s.name.clone()), Arc::new(s))).collect();
        let state = CatalogState { next_stream_id: file.next_stream_id.max(1), streams };
        let by_id = RwLock::new(by_id(&state));
        let reserved = std::sync::atomic::AtomicU64::new(state.next_stream_id);
        Ok(Catalog { dir: dir.to_path_buf(), reserved, state: RwLock::new(state), by_id })
    }

    /// An id for a stream about to be created: above every id the catalog has handed
    /// out, and never the same twice in this process (two creates at once each get
    /// their own, and make their logs before the catalog records either).
    pub fn reserve_id(&self) -> u64 {
        let floor = self.state.read().expect("lock").next_stream_id;
        let mut current = self.reserved.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let id = current.max(floor);
            match self.reserved.compare_exchange(
                current,
                id + 1,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            ) {
                Ok(_) => return id,
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

    /// Applies `change` and persists the result; on any error nothing changes.
    /// Blocking (it fsyncs): call it from a blocking context.
    pub fn update<R, E: From<CatalogError>>(
        &self,
        change: impl FnOnce(&mut CatalogState) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut state = self.state.write().expect("lock");
        let mut next = state.clone();
        let result = change(&mut next)?;
        self.persist(&next)?;
        *self.by_id.write().expect("lock") = by_id(&next);
        *state = next;
        Ok(result)
    }

    /// Writes the catalog durably: temp file, fsync, rename, fsync the directory.
    fn persist(&self, state: &CatalogState) -> Result<(), CatalogError> {
        let file = CatalogFile {
            format_version: CATALOG_FORMAT_VERSION,
            next_stream_id: state.next_stream_id,
            streams: state.streams.values().map(|s| (**s).clone()).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the catalog always serialises");
        let path = self.dir.join(CATALOG_FILE);
        let tmp = self.dir.join("catalog.json.tmp");
        let io = |source| CatalogError::Io { path: path.clone(), source };
        let mut out = fs::File::create(&tmp).map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
        out.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
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
