//! The catalog in a replicated key-value bucket (cluster mode): one entry per stream,
//! `s.<region>.<name>` = the stream's JSON with a `format_version`, and the id counter
//! `next-id`. Every write is conditional on the revision this node read (create for
//! a new stream), so two nodes changing one stream at once produce exactly one
//! winner; the loser reads again and decides again (see [`super::Catalog::update`]).
//! Every node watches the bucket and applies the others' changes to its in-memory
//! view, within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_jetstream::{Bucket, Change, Error as JsError};

use super::{Catalog, CatalogError, CatalogState, Conflict, StreamRecord};

/// Version of a stream entry's format.
const ENTRY_FORMAT_VERSION: u32 = 1;
/// The key of the stream id counter.
const NEXT_ID_KEY: &str = "next-id";

#[derive(Serialize, Deserialize)]
struct Entry {
    format_version: u32,
    stream: StreamRecord,
}

fn key_of(region: &str, name: &str) -> String {
    format!("s.{region}.{name}")
}

fn parse_key(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("s.")?;
    let (region, name) = rest.split_once('.')?;
    Some((region.to_string(), name.to_string()))
}

/// What this node knows of an entry's revision, for a record it read.
enum Known {
    /// The record was read at this revision, the latest this node saw.
    At(u64),
    /// The entry was never seen (a stream this node's view got otherwise).
    Never,
    /// The node has seen a later revision than the record's: the decision is stale.
    Other,
}

fn bucket_error(error: JsError) -> CatalogError {
    CatalogError::Bucket(error.to_string())
}

fn decode(key: &str, value: &[u8]) -> Result<StreamRecord, CatalogError> {
    let entry: Entry =
        serde_json::from_slice(value).map_err(|e| CatalogError::Bucket(format!("entry {key} is unreadable: {e}")))?;
    if entry.format_version > ENTRY_FORMAT_VERSION {
        return Err(CatalogError::Bucket(format!(
            "entry {key} has format version {}, newer than this build",
            entry.format_version
        )));
    }
    Ok(entry.stream)
}

/// The bucket, and the revision of each entry as this node last saw it.
pub struct BucketStore {
    /// The latest bucket revision this node's view includes (see `catch_up`).
    applied: tokio::sync::watch::Sender<u64>,
    bucket: Bucket,
    /// Each entry's last seen revision, with the record read at that revision (the
    /// very object the view holds). A change is written conditionally on a
    /// revision only if the record it was decided on is that object: the watch
    /// may have recorded a newer revision before the view shows its record, and a
    /// decision made on the older record must not be written over it.
    revisions: Mutex<HashMap<String, (u64, Arc<StreamRecord>)>>,
    /// The highest revision of each entry applied to the view, deletions included:
    /// the watch may deliver a change after this node already applied a newer one
    /// (read back after a lost race, or written itself), and must not put the
    /// view back (the older record would be decided on again and lose again).
    latest: Mutex<HashMap<String, u64>>,
}

impl BucketStore {
    /// The catalog in `bucket`.
    pub fn new(bucket: Bucket) -> BucketStore {
        BucketStore {
            bucket,
            revisions: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }

    pub(super) async fn load(&self) -> Result<CatalogState, CatalogError> {
        let mut state = CatalogState { next_stream_id: 1, streams: Default::default() };
        for value in self.bucket.load().await.map_err(bucket_error)? {
            self.advance(value.revision);
            let Some((region, name)) = parse_key(&value.key) else { continue };
            let stream = Arc::new(decode(&value.key, &value.value)?);
            state.next_stream_id = state.next_stream_id.max(stream.id + 1);
            self.revisions.lock().expect("lock").insert(value.key.clone(), (value.revision, stream.clone()));
            self.latest.lock().expect("lock").insert(value.key.clone(), value.revision);
            state.streams.insert((region, name), stream);
        }
        Ok(state)
    }

    /// The stream as the bucket holds it now (`None`: there is none).
    pub(super) async fn refresh(&self, catalog: &Catalog, region: &str, name: &str) -> Result<(), CatalogError> {
        let key = key_of(region, name);
        match self.bucket.get(&key).await.map_err(bucket_error)? {
            Some(value) => {
                let stream = Arc::new(decode(&key, &value.value)?);
                self.apply_newer(catalog, &key, value.revision, Some(stream));
            }
            None => {
                self.revisions.lock().expect("lock").remove(&key);
                catalog.apply_remote(region, name, None);
            }
        }
        Ok(())
    }

    /// The stream as the bucket holds it now, its revision recorded as the watch
    /// records it, without touching a view (tests of the revision rules).
    #[cfg(test)]
    async fn fetch(&self, region: &str, name: &str) -> Result<Option<Arc<StreamRecord>>, CatalogError> {
        let key = key_of(region, name);
        let Some(value) = self.bucket.get(&key).await.map_err(bucket_error)? else { return Ok(None) };
        let stream = Arc::new(decode(&key, &value.value)?);
        self.revisions.lock().expect("lock").insert(key, (value.revision, stream.clone()));
        Ok(Some(stream))
    }

    /// Applies an entry read at `revision` (`None`: deleted) to the view, unless
    /// the view already has a newer one.
    fn apply_newer(&self, catalog: &Catalog, key: &str, revision: u64, stream: Option<Arc<StreamRecord>>) {
        let Some((region, name)) = parse_key(key) else { return };
        let mut latest = self.latest.lock().expect("lock");
        if latest.get(key).is_some_and(|known| *known >= revision) {
            return;
        }
        latest.insert(key.to_string(), revision);
        match &stream {
            Some(stream) => {
                self.revisions.lock().expect("lock").insert(key.to_string(), (revision, stream.clone()));
            }
            None => {
                self.revisions.lock().expect("lock").remove(key);
            }
        }
        // Still under `latest`: an older change cannot be applied in between.
        catalog.apply_remote(&region, &name, stream);
    }

    /// Writes what changed between `before` and `after`, each stream conditionally.
    pub(super) async fn persist(&self, before: &CatalogState, after: &CatalogState) -> Result<(), Conflict> {
        let mut lost = Vec::new();
        for (key, stream) in &after.streams {
            let unchanged = before.streams.get(key).is_some_and(|old| Arc::ptr_eq(old, stream));
            if unchanged {
                continue;
            }
            let name = key_of(&key.0, &key.1);
            let value = Bytes::from(
                serde_json::to_vec(&Entry { format_version: ENTRY_FORMAT_VERSION, stream: (**stream).clone() })
                    .expect("entries serialise"),
            );
            let written = match before.streams.get(key) {
                None => self.bucket.create(&name, value).await,
                Some(read) => match self.revision_of(&name, read) {
                    Known::At(revision) => self.bucket.update(&name, value, revision).await,
                    Known::Never => self.bucket.create(&name, value).await,
                    Known::Other => {
                        lost.push(key.clone());
                        continue;
                    }
                },
            };
            match written {
                Ok(revision) => {
                    self.latest.lock().expect("lock").insert(name.clone(), revision);
                    self.revisions.lock().expect("lock").insert(name, (revision, stream.clone()));
                }
                Err(JsError::Conflict(_)) => lost.push(key.clone()),
                Err(other) => return Err(Conflict::Failed(bucket_error(other))),
            }
        }
        for (key, read) in before.streams.iter().filter(|(k, _)| !after.streams.contains_key(*k)) {
            let name = key_of(&key.0, &key.1);
            let revision = match self.revision_of(&name, read) {
                Known::At(revision) => revision,
                Known::Never => continue,
                Known::Other => {
                    lost.push(key.clone());
                    continue;
                }
            };
            match self.bucket.delete(&name, revision).await {
                Ok(()) => {
                    self.revisions.lock().expect("lock").remove(&name);
                }
                Err(JsError::Conflict(_)) => lost.push(key.clone()),
                Err(other) => return Err(Conflict::Failed(bucket_error(other))),
            }
        }
        match lost.is_empty() {
            true => Ok(()),
            false => Err(Conflict::Lost(lost)),
        }
    }

    /// The revision at which `read` was read, if it is still the one this node
    /// knows for the entry.
    fn revision_of(&self, name: &str, read: &Arc<StreamRecord>) -> Known {
        match self.revisions.lock().expect("lock").get(name) {
            None => Known::Never,
            Some((revision, record)) if Arc::ptr_eq(record, read) => Known::At(*revision),
            Some(_) => Known::Other,
        }
    }

    /// The next stream id, from the counter every node advances with
    /// compare-and-set: no two nodes ever get the same id.
    pub(super) async fn reserve_id(&self) -> Result<u64, CatalogError> {
        loop {
            let current = self.bucket.get(NEXT_ID_KEY).await.map_err(bucket_error)?;
            let (id, written) = match current {
                None => (1, self.bucket.create(NEXT_ID_KEY, Bytes::from("2")).await),
                Some(value) => {
                    let id: u64 = std::str::from_utf8(&value.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| CatalogError::Bucket("the stream id counter is unreadable".into()))?;
                    (id, self.bucket.update(NEXT_ID_KEY, Bytes::from((id + 1).to_string()), value.revision).await)
                }
            };
            match written {
                Ok(_) => return Ok(id),
                Err(JsError::Conflict(_)) => continue,
                Err(other) => return Err(bucket_error(other)),
            }
        }
    }

    fn advance(&self, revision: u64) {
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        });
    }

    /// Waits (at most `wait`) until the view includes every change any node made
    /// before this call: a stream created through one node is then described and
    /// listed by every other, as one Firehose endpoint would. On a failure or past
    /// `wait`, the view stays as it is (it follows within moments anyway).
    pub(super) async fn catch_up(&self, wait: std::time::Duration) {
        let Ok(last) = self.bucket.last_revision().await else { return };
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(wait, applied.wait_for(|a| *a >= last)).await;
    }

    /// Applies other nodes' changes to `catalog`'s view until `shutdown`. Changes
    /// this node made itself arrive too, and are applied again harmlessly.
    pub(super) async fn follow(&self, catalog: &Arc<Catalog>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut from = self.revisions.lock().expect("lock").values().map(|(revision, _)| *revision).max().unwrap_or(0);
        loop {
            let mut changes = match self.bucket.watch(from).await {
                Ok(changes) => changes,
                Err(error) => {
                    tracing::warn!(%error, "Cannot watch the catalog; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            loop {
                let change = tokio::select! {
                    change = changes.next() => change,
                    _ = shutdown.changed() => return,
                };
                match change {
                    Some(Ok(Change::Put(value))) => {
                        from = from.max(value.revision);
                        self.advance(value.revision);
                        // The id counter and the master key's check share the
                        // bucket; only `s.` keys are streams (as in `load`).
                        if parse_key(&value.key).is_none() {
                            continue;
                        }
                        match decode(&value.key, &value.value) {
                            Ok(stream) => {
                                self.apply_newer(catalog, &value.key, value.revision, Some(Arc::new(stream)));
                            }
                            Err(error) => tracing::error!(%error, "Skipping a catalog entry this node cannot read."),
                        }
                    }
                    Some(Ok(Change::Deleted { key, revision })) => {
                        from = from.max(revision);
                        self.advance(revision);
                        if parse_key(&key).is_some() {
                            self.apply_newer(catalog, &key, revision, None);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "The catalog watch failed; watching again.");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Two nodes' catalogs on one bucket of a real three-node NATS cluster.

    use std::sync::Arc;
    use std::time::Duration;

    use sluice_jetstream::{connect, Bucket};
    use sluice_nats_testing::{when_ready, Cluster, Setup};
    use sluice_protocol::destination::{Destination, DestinationKind};

    use super::BucketStore;
    use crate::catalog::{Catalog, CatalogError, StreamRecord};

    #[derive(Debug, PartialEq)]
    enum Refusal {
        Exists,
        Stale,
        Catalog(String),
    }

    impl From<CatalogError> for Refusal {
        fn from(error: CatalogError) -> Refusal {
            Refusal::Catalog(error.to_string())
        }
    }

    fn record(id: u64, name: &str) -> StreamRecord {
        let config = serde_json::json!({"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"});
        let destination =
            Destination { kind: DestinationKind::ExtendedS3, config: config.as_object().unwrap().clone() };
        StreamRecord::for_test(id, name, destination)
    }

    async fn open_bucket(cluster: &Cluster) -> Bucket {
        let options = cluster.options();
        when_ready(|| async { Bucket::open(&connect(&options).await?, &options, "CATALOG", None).await }).await
    }

    /// The watch records an entry's new revision a moment before the view shows
    /// the record: a change decided on the record the view still showed must not
    /// be written at the new revision (it was, and two racing UpdateDestination
    /// calls with one VersionId both won).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_decided_on_an_older_record_is_refused_whatever_revision_is_known() {
        let cluster = Cluster::start(Setup::default());
        let ours = BucketStore::new(open_bucket(&cluster).await);
        let theirs = BucketStore::new(open_bucket(&cluster).await);
        let key = ("us-east-1".to_string(), "s".to_string());
        let state = |stream: &Arc<StreamRecord>| {
            let mut state = crate::catalog::CatalogState { next_stream_id: 2, streams: Default::default() };
            state.streams.insert(key.clone(), stream.clone());
            state
        };
        let empty = crate::catalog::CatalogState { next_stream_id: 1, streams: Default::default() };
        let v1 = Arc::new(record(1, "s"));
        assert!(ours.persist(&empty, &state(&v1)).await.is_ok());
        // Another node moves the stream to version 2 ...
        let seen_by_them = theirs.fetch("us-east-1", "s").await.unwrap().unwrap();
        let v2 = Arc::new(StreamRecord { version_id: 2, ..(*seen_by_them).clone() });
        assert!(theirs.persist(&state(&seen_by_them), &state(&v2)).await.is_ok());
        // ... and this node learns the new revision (as its watch does) while its
        // view still holds version 1, on which it decides.
        ours.fetch("us-east-1", "s").await.unwrap();
        let decided_on_v1 = Arc::new(StreamRecord { version_id: 3, ..(*v1).clone() });
        let written = ours.persist(&state(&v1), &state(&decided_on_v1)).await;
        assert!(
            matches!(written, Err(super::Conflict::Lost(ref keys)) if keys == std::slice::from_ref(&key)),
            "must lose"
        );
        let stored = theirs.fetch("us-east-1", "s").await.unwrap().unwrap();
        assert_eq!(stored.version_id, 2, "the other node's change stands");
    }

    /// Under load the watch lagged: it applied a stream's older revision after this
    /// node had read back the newer one (having lost a race), so the node decided
    /// on the older record again and lost again, until it gave up with "kept
    /// changing" instead of answering with the stale VersionId's error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_view_never_goes_back_to_an_older_revision() {
        let cluster = Cluster::start(Setup::default());
        let catalog = Catalog::open_bucket(BucketStore::new(open_bucket(&cluster).await)).await.unwrap();
        let crate::catalog::Store::Bucket(store) = &catalog.store else { panic!("a bucket catalog") };
        let key = super::key_of("us-east-1", "s");
        let v2 = Arc::new(StreamRecord { version_id: 2, ..record(1, "s") });
        store.apply_newer(&catalog, &key, 10, Some(v2));
        store.apply_newer(&catalog, &key, 5, Some(Arc::new(record(1, "s"))));
        assert_eq!(catalog.get("us-east-1", "s").unwrap().version_id, 2, "an older change arriving late is ignored");
        store.apply_newer(&catalog, &key, 11, None);
        store.apply_newer(&catalog, &key, 9, Some(Arc::new(record(1, "s"))));
        assert!(catalog.get("us-east-1", "s").is_none(), "nor brings a deleted stream back");
    }

    async fn node(cluster: &Cluster) -> (Arc<Catalog>, tokio::sync::watch::Sender<bool>) {
        let bucket = open_bucket(cluster).await;
        let catalog = Arc::new(Catalog::open_bucket(BucketStore::new(bucket)).await.unwrap());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(catalog.clone().follow(shutdown));
        (catalog, stop)
    }

    async fn create(catalog: &Catalog, name: &str) -> Result<u64, Refusal> {
        let id = catalog.reserve_id().await?;
        let stream = Arc::new(record(id, name));
        catalog
            .update(|state| {
                let key = ("us-east-1".to_string(), name.to_string());
                if state.streams.contains_key(&key) {
                    return Err(Refusal::Exists);
                }
                state.streams.insert(key, stream.clone());
                Ok(id)
            })
            .await
    }

    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_racing_get_one_winner_and_see_each_others_changes() {
        let cluster = Cluster::start(Setup::default());
        let (a, _stop_a) = node(&cluster).await;
        let (b, _stop_b) = node(&cluster).await;
        for round in 0..8 {
            let name = format!("raced-{round}");
            let (ra, rb) = tokio::join!(create(&a, &name), create(&b, &name));
            assert!(ra.is_ok() != rb.is_ok(), "exactly one create wins: {ra:?} {rb:?}");
            assert_eq!(ra.as_ref().err().or(rb.as_ref().err()), Some(&Refusal::Exists), "the other is told it exists");
            let winner = ra.or(rb).unwrap();
            assert!(eventually(|| a.get("us-east-1", &name).is_some_and(|s| s.id == winner)).await);
            assert!(eventually(|| b.get("us-east-1", &name).is_some_and(|s| s.id == winner)).await);
            // UpdateDestination's rule: only from the version read. Both read 1.
            let bump = |catalog: Arc<Catalog>, name: String| async move {
                catalog
                    .update(|state| {
                        let key = ("us-east-1".to_string(), name.clone());
                        let mut stream = (**state.streams.get(&key).expect("created")).clone();
                        if stream.version_id != 1 {
                            return Err(Refusal::Stale);
                        }
                        stream.version_id = 2;
                        state.streams.insert(key, Arc::new(stream));
                        Ok(())
                    })
                    .await
            };
            let (ua, ub) = tokio::join!(bump(a.clone(), name.clone()), bump(b.clone(), name.clone()));
            assert!(ua.is_ok() != ub.is_ok(), "exactly one update from version 1 wins: {ua:?} {ub:?}");
            assert_eq!(ua.err().or(ub.err()), Some(Refusal::Stale), "the other sees version 2 and refuses");
        }
        // A delete through one node disappears from the other.
        a.update(|state| {
            state.streams.remove(&("us-east-1".to_string(), "raced-0".to_string()));
            Ok::<(), Refusal>(())
        })
        .await
        .unwrap();
        assert!(eventually(|| b.get("us-east-1", "raced-0").is_none()).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_ids_are_unique_across_nodes_and_a_new_node_loads_everything() {
        let cluster = Cluster::start(Setup::default());
        let (a, _stop_a) = node(&cluster).await;
        let (b, _stop_b) = node(&cluster).await;
        let reserve = |catalog: Arc<Catalog>| async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                ids.push(catalog.reserve_id().await.unwrap());
            }
            ids
        };
        let (ia, ib) = tokio::join!(reserve(a.clone()), reserve(b.clone()));
        let all: std::collections::BTreeSet<u64> = ia.iter().chain(&ib).copied().collect();
        assert_eq!(all.len(), 50, "no id handed out twice");
        for i in 0..5 {
            create(&a, &format!("s{i}")).await.unwrap();
        }
        let (c, _stop_c) = node(&cluster).await;
        assert_eq!(c.snapshot().streams.len(), 5);
        assert!(c.reserve_id().await.unwrap() > *all.iter().max().unwrap());
    }
}
