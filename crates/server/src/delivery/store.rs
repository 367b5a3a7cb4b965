//! Object stores for delivered batches. The default: bucket `arn:aws:s3:::NAME` is the directory
//! `<data-dir>/buckets/NAME/`, and an object is the file at its key, so delivered
//! data can be read with `ls` and `cat`. Written durably (temp file, fsync, rename,
//! fsync of the directories) before delivery acknowledges the records in the log:
//! the log may then delete them, so the object must survive a power loss too.
//!
//! Temporary files are written to `<data-dir>/buckets/.sluice-tmp/`, outside every
//! bucket (a name starting with a dot is never a bucket) and on the buckets'
//! filesystem, so the rename is atomic. A reader listing a bucket never sees a
//! half-written object; a failed write removes its temporary file, and start-up
//! empties the directory of whatever a crash left.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3ConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStoreExt, PutPayload};

use crate::config::{S3Config, S3Target};

/// Why an object could not be stored. Every case is retried: a missing bucket is
/// a delivery failure (as on S3), never created on the user's behalf.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bucket directory does not exist.
    #[error("bucket {0} does not exist (S3.NoSuchBucket)")]
    NoSuchBucket(String),
    /// The key has a segment that cannot be a file name (`.`, `..`, empty).
    #[error("key {0:?} cannot be stored as a file")]
    InvalidKey(String),
    /// The bucket directory is on another filesystem than the temporary directory,
    /// so an object cannot be put in place atomically.
    #[error("bucket directory {bucket} is not on the filesystem of {tmp}; objects cannot be renamed into it atomically (put the bucket directory on the same filesystem as {tmp}'s parent)")]
    OtherFilesystem {
        /// The bucket directory.
        bucket: PathBuf,
        /// The temporary directory.
        tmp: PathBuf,
    },
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Buckets as directories under one root.
#[derive(Clone)]
pub struct LocalBuckets {
    root: PathBuf,
    /// Where objects are written before they are renamed into place.
    tmp: PathBuf,
}

/// The temporary directory's name under the buckets' root.
const TMP_DIR: &str = ".sluice-tmp";

impl LocalBuckets {
    /// Buckets live under `root` (`<data-dir>/buckets`).
    pub fn new(root: PathBuf) -> LocalBuckets {
        let tmp = root.join(TMP_DIR);
        LocalBuckets { root, tmp }
    }

    /// Buckets under `root` shared by the nodes of a cluster: each node writes its
    /// temporary files in its own directory, so that one starting up never removes
    /// another's write in progress.
    pub fn shared(root: PathBuf, node_id: &str) -> LocalBuckets {
        let tmp = root.join(TMP_DIR).join(node_id);
        LocalBuckets { root, tmp }
    }

    /// The local buckets `config` names: in cluster mode only the directory every
    /// node shares (with this node's own temporary directory).
    pub fn of(config: &crate::config::Config) -> LocalBuckets {
        match &config.cluster {
            Some(crate::config::ClusterConfig { shared_buckets_dir: Some(dir), node_id, .. }) => {
                LocalBuckets::shared(dir.clone(), node_id)
            }
            _ => LocalBuckets::new(config.data_dir.join("buckets")),
        }
    }

    /// The buckets' root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where writes are staged before they are renamed into a bucket.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Removes whatever temporary files a crash left (none of them was ever an
    /// object). Run at start, before delivery.
    pub fn clean_temporary_files(&self) -> std::io::Result<usize> {
        let entries = match fs::read_dir(&self.tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            fs::remove_file(entry?.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes the temporary files earlier versions of Sluice left *inside* buckets
    /// (`.<32 hex digits>.sluice-tmp`, next to the objects): never objects, but a
    /// reader listing the bucket would take them for data. Walks every local
    /// bucket, so it runs in the background after start. Returns how many it removed.
    pub fn sweep_legacy_temporary_files(&self) -> std::io::Result<usize> {
        fn is_legacy_temporary(name: &str) -> bool {
            name.strip_prefix('.')
                .and_then(|n| n.strip_suffix(".sluice-tmp"))
                .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        fn sweep(dir: &Path) -> std::io::Result<usize> {
            let mut removed = 0;
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    removed += sweep(&entry.path())?;
                } else if kind.is_file() && is_legacy_temporary(&entry.file_name().to_string_lossy()) {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
            Ok(removed)
        }
        let mut removed = 0;
        let buckets = match fs::read_dir(&self.root) {
            Ok(buckets) => buckets,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for bucket in buckets {
            let bucket = bucket?;
            if bucket.file_type()?.is_dir() && !bucket.file_name().to_string_lossy().starts_with('.') {
                removed += sweep(&bucket.path())?;
            }
        }
        Ok(removed)
    }

    /// The directory of `bucket`, if it exists.
    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, StoreError> {
        let bucket_dir = self.root.join(bucket);
        if bucket.is_empty() || bucket.starts_with('.') || bucket.contains('/') || !bucket_dir.is_dir() {
            return Err(StoreError::NoSuchBucket(bucket.to_string()));
        }
        Ok(bucket_dir)
    }

    /// Stores `body` at `key`, replacing any object there. Blocking.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> Result<PathBuf, StoreError> {
        let bucket_dir = self.bucket_dir(bucket)?;
        let segments: Vec<&str> = key.split('/').collect();
        if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        let path = segments.iter().fold(bucket_dir.clone(), |p, s| p.join(s));
        let parent = path.parent().expect("a key has at least one segment").to_path_buf();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        fs::create_dir_all(&self.tmp).map_err(io(&self.tmp))?;
        let tmp = self.tmp.join(uuid::Uuid::new_v4().simple().to_string());
        let written = write_synced(&tmp, body).and_then(|()| fs::rename(&tmp, &path));
        if let Err(source) = written {
            // Nothing half-written is left behind, in the bucket or beside it.
            let _ = fs::remove_file(&tmp);
            if source.raw_os_error() == Some(EXDEV) {
                return Err(StoreError::OtherFilesystem { bucket: bucket_dir, tmp: self.tmp.clone() });
            }
            return Err(StoreError::Io { path: path.clone(), source });
        }
        // The rename, and any directory created for the key, are durable only once
        // every directory from the object's up to the bucket is synced.
        let mut dir = parent.as_path();
        loop {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
            if dir == bucket_dir {
                break;
            }
            dir = dir.parent().expect("inside the bucket");
        }
        Ok(path)
    }
}

/// `rename` across filesystems.
const EXDEV: i32 = 18;

/// Writes a new file and fsyncs it.
fn write_synced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    #[cfg(feature = "failpoints")]
    failpoints::object_write(&mut file, body)?;
    file.write_all(body)?;
    file.sync_all()
}

/// Fault injection for the end-to-end tests (`failpoints` builds only).
#[cfg(feature = "failpoints")]
mod failpoints {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WRITES: AtomicU64 = AtomicU64::new(0);

    /// With `SLUICE_CRASH_AFTER_UPLOAD_PARTS=N`, the process aborts (as a crash
    /// would end it) once N parts of multipart uploads were sent.
    pub(super) fn after_part() {
        static PARTS: AtomicU64 = AtomicU64::new(0);
        let limit: Option<u64> = std::env::var("SLUICE_CRASH_AFTER_UPLOAD_PARTS").ok().and_then(|v| v.parse().ok());
        if limit.is_some_and(|n| PARTS.fetch_add(1, Ordering::SeqCst) + 1 >= n) {
            eprintln!("failpoint: crashing after {} uploaded parts", limit.unwrap_or(0));
            std::process::abort();
        }
    }

    /// With `SLUICE_FAIL_OBJECT_WRITES_EVERY=N`, every N-th local object write
    /// fails with EIO after writing half of the object.
    pub(super) fn object_write(file: &mut std::fs::File, body: &[u8]) -> std::io::Result<()> {
        let every: u64 = match std::env::var("SLUICE_FAIL_OBJECT_WRITES_EVERY").ok().and_then(|v| v.parse().ok()) {
            Some(n) if n > 0 => n,
            _ => return Ok(()),
        };
        if (WRITES.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every) {
            file.write_all(&body[..body.len() / 2])?;
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

/// Where delivered objects go: each bucket to the place `[s3]` (or its
/// `[s3.buckets.NAME]` override) names, by default a local directory. Clients for
/// S3-compatible services are built once per bucket and reused.
pub struct Store {
    local: LocalBuckets,
    s3: S3Config,
    clients: Mutex<HashMap<String, Arc<AmazonS3>>>,
    /// Where Sluice's own S3 API answers, for the hint how to make a local bucket.
    api_endpoint: Option<String>,
}

impl Store {
    /// Local buckets are `local`; the others where `s3` says.
    pub fn new(local: LocalBuckets, s3: S3Config) -> Store {
        Store { local, s3, clients: Mutex::default(), api_endpoint: None }
    }

    /// Names the S3 API's endpoint (`http://HOST:PORT`) in hints.
    pub fn with_api_endpoint(mut self, endpoint: String) -> Store {
        self.api_endpoint = Some(endpoint);
        self
    }

    /// Removes the temporary files of local writes a crash interrupted.
    pub fn clean_temporary_files(&self) -> std::io::Result<usize> {
        self.local.clean_temporary_files()
    }

    /// The local buckets, for maintenance.
    pub fn local(&self) -> &LocalBuckets {
        &self.local
    }

    /// The command that creates `bucket` where this store looks for it, for the log
    /// line that says it is missing.
    pub fn create_bucket_command(&self, bucket: &str) -> String {
        match (&self.s3.target(bucket).endpoint, &self.api_endpoint) {
            (Some(endpoint), _) => format!("aws --endpoint-url {endpoint} s3 mb s3://{bucket}"),
            // Local buckets are served by Sluice's own S3 API.
            (None, Some(api)) => format!(
                "aws --endpoint-url {api} s3 mb s3://{bucket} (or mkdir -p '{}')",
                self.local.root.join(bucket).display()
            ),
            (None, None) => format!("mkdir -p '{}'", self.local.root.join(bucket).display()),
        }
    }

    /// Fails at once, without a request, when `bucket` is a local directory that does
    /// not exist: delivery then skips reading and encoding a batch it cannot store.
    pub fn check_bucket(&self, bucket: &str) -> Result<(), String> {
        if self.s3.target(bucket).endpoint.is_some() {
            return Ok(());
        }
        self.local.bucket_dir(bucket).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Stores one object, replacing any object at the same key (see
    /// [`Store::put_recorded`]; multipart uploads are not recorded).
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), String> {
        self.put_recorded(bucket, key, body, |_| async { Ok(()) }).await
    }

    /// Stores one object, replacing any object at the same key. On an S3-compatible
    /// service, a body larger than one part is uploaded in parts (multipart upload,
    /// aborted if a part fails), with `Content-Type: application/octet-stream` as
    /// Firehose writes it. `record` is given the upload id before the first part
    /// is sent and must make it durable: after a crash mid-upload, the caller
    /// aborts it ([`Store::abort_upload`]) so that no parts are left in the bucket.
    pub async fn put_recorded<F, Fut>(&self, bucket: &str, key: &str, body: Bytes, record: F) -> Result<(), String>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let target = self.s3.target(bucket);
        if target.endpoint.is_none() {
            let (local, bucket, key) = (self.local.clone(), bucket.to_string(), key.to_string());
            return tokio::task::spawn_blocking(move || local.put(&bucket, &key, &body).map(|_| ()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string());
        }
        let client = self.client(bucket, target)?;
        let path = ObjectPath::from(key);
        let part_bytes = self.s3.multipart_part_bytes as usize;
        if body.len() <= part_bytes {
            return client.put(&path, PutPayload::from(body)).await.map(|_| ()).map_err(|e| e.to_string());
        }
        let upload_id = client.create_multipart(&path).await.map_err(|e| e.to_string())?;
        if let Err(error) = record(upload_id.clone()).await {
            let _ = client.abort_multipart(&path, &upload_id).await;
            return Err(error);
        }
        // Parts are slices of `body` (no copies), sent one after the other; any
        // failure aborts the upload so that no orphaned parts stay in the bucket.
        let mut parts = Vec::new();
        let mut result = Ok(());
        for (index, offset) in (0..body.len()).step_by(part_bytes).enumerate() {
            let part = body.slice(offset..(offset + part_bytes).min(body.len()));
            match client.put_part(&path, &upload_id, index, PutPayload::from(part)).await {
                Ok(part) => parts.push(part),
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
            #[cfg(feature = "failpoints")]
            failpoints::after_part();
        }
        let result = match result {
            Ok(()) => client.complete_multipart(&path, &upload_id, parts).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            let _ = client.abort_multipart(&path, &upload_id).await;
            return Err(error.to_string());
        }
        Ok(())
    }

    /// Aborts a multipart upload an earlier attempt recorded. An upload that no
    /// longer exists (completed, or already aborted) is not an error.
    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), String> {
        let target = self.s3.target(bucket);
        if target.endpoint.is_none() {
            return Ok(());
        }
        let client = self.client(bucket, target)?;
        match client.abort_multipart(&ObjectPath::from(key), &upload_id.to_string()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }

    fn client(&self, bucket: &str, target: &S3Target) -> Result<Arc<AmazonS3>, String> {
        let mut clients = self.clients.lock().expect("lock");
        if let Some(client) = clients.get(bucket) {
            return Ok(client.clone());
        }
        let builder = target
            .client_builder(bucket)
            // Every object, multipart ones included, as Firehose writes them.
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::DefaultContentType), "application/octet-stream");
        let client = Arc::new(builder.build().map_err(|e| e.to_string())?);
        clients.insert(bucket.to_string(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_files_at_their_keys_and_buckets_are_not_created() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalBuckets::new(root.path().to_path_buf());
        assert!(matches!(store.put("logs", "a/b.txt", b"x"), Err(StoreError::NoSuchBucket(_))));
        fs::create_dir(root.path().join("logs")).unwrap();
        let path = store.put("logs", "2026/07/13/14/object", b"first").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        store.put("logs", "2026/07/13/14/object", b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second", "a repeated upload overwrites");
        for bad in ["../escape", "a//b", "a/./b", "/abs", "trailing/"] {
            assert!(matches!(store.put("logs", bad, b"x"), Err(StoreError::InvalidKey(_))), "{bad}");
        }
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
        assert!(matches!(store.put(".sluice-tmp", "x", b"x"), Err(StoreError::NoSuchBucket(_))), "never a bucket");
    }

    #[test]
    fn temporary_files_are_outside_buckets_and_removed_on_failure_and_at_start() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalBuckets::new(root.path().to_path_buf());
        fs::create_dir(root.path().join("logs")).unwrap();
        store.put("logs", "dir/object", b"x").unwrap();
        // Renaming over a non-empty directory fails after the temporary file is written.
        assert!(matches!(store.put("logs", "dir", b"y"), Err(StoreError::Io { .. })));
        let tmp = root.path().join(TMP_DIR);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the failed write's temporary file is gone");
        fs::write(tmp.join("left-by-a-crash"), b"half").unwrap();
        assert_eq!(store.clean_temporary_files().unwrap(), 1);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        let in_bucket: Vec<_> = walk(&root.path().join("logs"));
        assert_eq!(in_bucket, vec![root.path().join("logs/dir/object")], "only the object is in the bucket");
        // What earlier versions left beside objects is swept; objects, however named, are not.
        let legacy = root.path().join("logs/dir").join(format!(".{}.sluice-tmp", "ab12".repeat(8)));
        fs::write(&legacy, b"half").unwrap();
        store.put("logs", "dir/.not-a-temporary.sluice-tmp", b"an object").unwrap();
        assert_eq!(store.sweep_legacy_temporary_files().unwrap(), 1);
        assert!(!legacy.exists());
        assert_eq!(walk(&root.path().join("logs")).len(), 2);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
