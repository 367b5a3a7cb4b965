//! Object stores for delivered batches. The default: bucket `arn:aws:s3:::NAME` is the directory
//! `<data-dir>/buckets/NAME/`, and an object is the file at its key, so delivered
//! data can be read with `ls` and `cat`. Written durably (temp file, fsync, rename,
//! fsync of the directories) before delivery acknowledges the records in the log:
//! the log may then delete them, so the object must survive a power loss too.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload};

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
}

impl LocalBuckets {
    /// Buckets live under `root` (`<data-dir>/buckets`).
    pub fn new(root: PathBuf) -> LocalBuckets {
        LocalBuckets { root }
    }

    /// Stores `body` at `key`, replacing any object there. Blocking.
    /// The directory of `bucket`, if it exists.
    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, StoreError> {
        let bucket_dir = self.root.join(bucket);
        if bucket.is_empty() || bucket.contains('/') || !bucket_dir.is_dir() {
            return Err(StoreError::NoSuchBucket(bucket.to_string()));
        }
        Ok(bucket_dir)
    }

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
        let tmp = parent.join(format!(".{}.sluice-tmp", uuid::Uuid::new_v4().simple()));
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(body).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
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

/// Where delivered objects go: each bucket to the place `[s3]` (or its
/// `[s3.buckets.NAME]` override) names, by default a local directory. Clients for
/// S3-compatible services are built once per bucket and reused.
pub struct Store {
    local: LocalBuckets,
    s3: S3Config,
    clients: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Store {
    /// Local buckets live under `local_root`; the others where `s3` says.
    pub fn new(local_root: PathBuf, s3: S3Config) -> Store {
        Store { local: LocalBuckets::new(local_root), s3, clients: Mutex::default() }
    }

    /// Fails at once, without a request, when `bucket` is a local directory that does
    /// not exist: delivery then skips reading and encoding a batch it cannot store.
    pub fn check_bucket(&self, bucket: &str) -> Result<(), String> {
        if self.s3.target(bucket).endpoint.is_some() {
            return Ok(());
        }
        self.local.bucket_dir(bucket).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Stores one object, replacing any object at the same key. On an S3-compatible
    /// service, a body larger than one part is uploaded in parts (multipart upload,
    /// aborted if a part fails), with `Content-Type: application/octet-stream` as
    /// Firehose writes it.
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), String> {
        let target = self.s3.target(bucket);
        let Some(endpoint) = &target.endpoint else {
            let (local, bucket, key) = (self.local.clone(), bucket.to_string(), key.to_string());
            return tokio::task::spawn_blocking(move || local.put(&bucket, &key, &body).map(|_| ()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string());
        };
        let client = self.client(bucket, endpoint, target)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        let path = ObjectPath::from(key);
        let part_bytes = self.s3.multipart_part_bytes as usize;
        if body.len() <= part_bytes {
            let options = PutOptions { attributes, ..PutOptions::default() };
            return client
                .put_opts(&path, PutPayload::from(body), options)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
        let mut upload = client.put_multipart_opts(&path, options).await.map_err(|e| e.to_string())?;
        // Parts are slices of `body` (no copies), sent one after the other; any
        // failure aborts the upload so that no orphaned parts stay in the bucket.
        let mut result = Ok(());
        for offset in (0..body.len()).step_by(part_bytes) {
            let part = body.slice(offset..(offset + part_bytes).min(body.len()));
            result = upload.put_part(PutPayload::from(part)).await;
            if result.is_err() {
                break;
            }
        }
        let result = match result {
            Ok(()) => upload.complete().await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            let _ = upload.abort().await;
            return Err(error.to_string());
        }
        Ok(())
    }

    fn client(&self, bucket: &str, endpoint: &str, target: &S3Target) -> Result<Arc<dyn ObjectStore>, String> {
        let mut clients = self.clients.lock().expect("lock");
        if let Some(client) = clients.get(bucket) {
            return Ok(client.clone());
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_endpoint(endpoint)
            .with_region(&target.region)
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(!target.path_style)
            .with_allow_http(endpoint.starts_with("http://"));
        if let Some((id, secret)) = &target.credentials {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        let client: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| e.to_string())?);
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
    }
}
