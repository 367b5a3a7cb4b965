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
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};

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
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> Result<PathBuf, StoreError> {
        let bucket_dir = self.root.join(bucket);
        if bucket.is_empty() || bucket.contains('/') || !bucket_dir.is_dir() {
            return Err(StoreError::NoSuchBucket(bucket.to_string()));
        }
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

/// Buckets on an S3-compatible service (`[s3] endpoint`), through `object_store`.
/// Credentials come from the standard AWS environment variables. A missing bucket
/// fails the upload, which is retried; it is never created.
#[derive(Clone)]
pub struct S3Buckets {
    endpoint: String,
    region: String,
    clients: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl S3Buckets {
    /// Buckets at `endpoint` (path-style addressing, as S3-compatible servers expect).
    pub fn new(endpoint: &str, region: &str) -> S3Buckets {
        S3Buckets { endpoint: endpoint.to_string(), region: region.to_string(), clients: Arc::default() }
    }

    fn client(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let mut clients = self.clients.lock().expect("lock");
        if let Some(client) = clients.get(bucket) {
            return Ok(client.clone());
        }
        let client = AmazonS3Builder::from_env()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(self.endpoint.starts_with("http://"))
            .build()
            .map_err(|e| e.to_string())?;
        let client: Arc<dyn ObjectStore> = Arc::new(client);
        clients.insert(bucket.to_string(), client.clone());
        Ok(client)
    }

    /// Uploads `body` to `key` with `Content-Type: application/octet-stream`, as
    /// Firehose does.
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), String> {
        let client = self.client(bucket)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        let options = PutOptions { attributes, ..PutOptions::default() };
        let payload = PutPayload::from(body);
        client.put_opts(&ObjectPath::from(key), payload, options).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Where delivered objects go.
#[derive(Clone)]
pub enum Store {
    /// `<data-dir>/buckets/NAME/` (the default).
    Local(LocalBuckets),
    /// An S3-compatible service.
    S3(S3Buckets),
}

impl Store {
    /// Stores one object, replacing any object at the same key.
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), String> {
        match self {
            Store::Local(local) => {
                let (local, bucket, key) = (local.clone(), bucket.to_string(), key.to_string());
                tokio::task::spawn_blocking(move || local.put(&bucket, &key, &body).map(|_| ()))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Store::S3(s3) => s3.put(bucket, key, body).await,
        }
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
