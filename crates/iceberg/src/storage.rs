//! Where table files go: the local file system (`file://`), durably, and
//! S3-compatible services (`s3://`, `s3a://`) through object_store. A table's
//! own location picks the storage, path by path.
//!
//! Local files: Iceberg's own local storage writes metadata files without
//! syncing them, and a catalog pointer committed to a metadata file a crash then
//! lost would leave the table unreadable; here every file is written to a
//! temporary name, synced, renamed into place and its directory synced before the
//! write returns, so what a commit points to is on disk first.
//!
//! S3: an object exists whole once its PUT (or multipart completion) returns, so
//! a data or metadata file is never seen half-written; where each bucket lives
//! (endpoint, region, addressing, credentials) comes from [`S3Buckets`].

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage, StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::aws::AmazonS3;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sluice_aws_call::S3Place;

/// Where S3 buckets live: one default and per-bucket overrides (as Sluice's
/// `[s3]` section says for its deliveries; no endpoint here means AWS S3 itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Buckets {
    pub default: S3Place,
    pub buckets: BTreeMap<String, S3Place>,
}

/// Builds [`TableStorage`]. A catalog may build one per table it loads (a REST
/// catalog does): they share their S3 clients and so their connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TableStorageFactory {
    buckets: S3Buckets,
    #[serde(skip)]
    clients: S3Clients,
}

impl TableStorageFactory {
    pub fn new(buckets: S3Buckets) -> TableStorageFactory {
        TableStorageFactory { buckets, clients: S3Clients::default() }
    }
}

#[typetag::serde]
impl StorageFactory for TableStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        let s3 = S3Storage { buckets: self.buckets.clone(), clients: self.clients.clone() };
        Ok(Arc::new(TableStorage { fs: DurableFsStorage { reads: LocalFsStorage::new() }, s3 }))
    }
}

/// S3 clients by bucket, built when first used.
type S3Clients = Arc<Mutex<HashMap<String, Arc<AmazonS3>>>>;

/// Local paths durably, S3 paths through object_store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableStorage {
    fs: DurableFsStorage,
    s3: S3Storage,
}

/// Which storage a path is in.
enum Located<'a> {
    Local,
    S3 { bucket: &'a str, key: ObjectPath },
}

fn locate(path: &str) -> Result<Located<'_>> {
    if path.starts_with('/') || path.starts_with("file:") {
        return Ok(Located::Local);
    }
    let rest = ["s3://", "s3a://", "s3n://"].iter().find_map(|scheme| path.strip_prefix(scheme)).ok_or_else(|| {
        Error::new(
            ErrorKind::FeatureUnsupported,
            format!("{path}: Sluice writes Iceberg tables at file:// and s3:// locations"),
        )
    })?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let key = ObjectPath::parse(key).map_err(|e| Error::new(ErrorKind::DataInvalid, format!("{path}: {e}")))?;
    Ok(Located::S3 { bucket, key })
}

#[async_trait]
#[typetag::serde]
impl Storage for TableStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        match locate(path)? {
            Located::Local => self.fs.exists(path).await,
            Located::S3 { bucket, key } => match self.s3.client(bucket)?.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(s3_error(path, e)),
            },
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        match locate(path)? {
            Located::Local => self.fs.metadata(path).await,
            Located::S3 { bucket, key } => {
                let head = self.s3.client(bucket)?.head(&key).await.map_err(|e| s3_error(path, e))?;
                Ok(FileMetadata { size: head.size })
            }
        }
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        match locate(path)? {
            Located::Local => self.fs.read(path).await,
            Located::S3 { bucket, key } => {
                let got = self.s3.client(bucket)?.get(&key).await.map_err(|e| s3_error(path, e))?;
                got.bytes().await.map_err(|e| s3_error(path, e))
            }
        }
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        match locate(path)? {
            Located::Local => self.fs.reader(path).await,
            Located::S3 { bucket, key } => {
                Ok(Box::new(S3Read { client: self.s3.client(bucket)?, key, path: path.to_string() }))
            }
        }
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        match locate(path)? {
            Located::Local => self.fs.write(path, bs).await,
            Located::S3 { bucket, key } => {
                self.s3.client(bucket)?.put(&key, bs.into()).await.map(|_| ()).map_err(|e| s3_error(path, e))
            }
        }
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        match locate(path)? {
            Located::Local => self.fs.writer(path).await,
            Located::S3 { bucket, key } => {
                let client: Arc<dyn ObjectStore> = self.s3.client(bucket)?;
                Ok(Box::new(S3Write {
                    writer: BufWriter::with_capacity(client, key, S3_PART_BYTES),
                    path: path.into(),
                }))
            }
        }
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match locate(path)? {
            Located::Local => self.fs.delete(path).await,
            Located::S3 { bucket, key } => match self.s3.client(bucket)?.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(s3_error(path, e)),
            },
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        match locate(path)? {
            Located::Local => self.fs.delete_prefix(path).await,
            Located::S3 { bucket, key } => {
                let client = self.s3.client(bucket)?;
                let keys = client.list(Some(&key)).map_ok(|meta| meta.location).boxed();
                client.delete_stream(keys).try_collect::<Vec<_>>().await.map(|_| ()).map_err(|e| s3_error(path, e))
            }
        }
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        // Rare (table maintenance, not appends): one at a time.
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Parts of a large data file's multipart upload (smaller files are one PUT).
const S3_PART_BYTES: usize = 8 << 20;

fn s3_error(path: &str, error: object_store::Error) -> Error {
    let kind = match error {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, format!("{path}: {error}"))
}

/// Where buckets live, and their clients.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct S3Storage {
    buckets: S3Buckets,
    #[serde(skip)]
    clients: S3Clients,
}

impl S3Storage {
    fn client(&self, bucket: &str) -> Result<Arc<AmazonS3>> {
        let mut clients = self.clients.lock().expect("lock");
        if let Some(client) = clients.get(bucket) {
            return Ok(client.clone());
        }
        let at = self.buckets.buckets.get(bucket).unwrap_or(&self.buckets.default);
        let client = at.client_builder(bucket).build().map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
        let client = Arc::new(client);
        clients.insert(bucket.to_string(), client.clone());
        Ok(client)
    }
}

struct S3Read {
    client: Arc<AmazonS3>,
    key: ObjectPath,
    path: String,
}

#[async_trait]
impl FileRead for S3Read {
    async fn read(&self, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.client.get_range(&self.key, range).await.map_err(|e| s3_error(&self.path, e))
    }
}

/// A file uploaded as it is written (one PUT when small, multipart when large);
/// the object appears whole, at close.
struct S3Write {
    writer: BufWriter,
    path: String,
}

#[async_trait]
impl FileWrite for S3Write {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.writer.put(bs).await.map_err(|e| s3_error(&self.path, e))
    }

    async fn close(&mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.writer.shutdown().await.map_err(|e| Error::new(ErrorKind::Unexpected, format!("{}: {e}", self.path)))
    }
}

/// Local files, each synced with its directory before a write returns. Reads and
/// deletes are Iceberg's own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DurableFsStorage {
    reads: LocalFsStorage,
}

/// `file:///a/b` (and the other spellings Iceberg accepts) as a path.
fn local_path(path: &str) -> PathBuf {
    let rest = path.strip_prefix("file://").or_else(|| path.strip_prefix("file:")).unwrap_or(path);
    if rest.starts_with('/') {
        PathBuf::from(rest)
    } else {
        PathBuf::from(format!("/{rest}"))
    }
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{what} {}: {error}", path.display()))
}

/// Writes `bytes` at `path` durably: a temporary file beside it, synced, renamed
/// over it, and the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::new(ErrorKind::DataInvalid, "a file path has a directory"))?;
    fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    let temporary = dir.join(format!(".{}.sluice-tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = fs::File::create(&temporary).map_err(|e| io_error("creating", &temporary, e))?;
        file.write_all(bytes).map_err(|e| io_error("writing", &temporary, e))?;
        file.sync_all().map_err(|e| io_error("syncing", &temporary, e))?;
        fs::rename(&temporary, path).map_err(|e| io_error("renaming into", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("syncing the directory", dir, e))
}

#[async_trait]
#[typetag::serde]
impl Storage for DurableFsStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        self.reads.exists(path).await
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        self.reads.metadata(path).await
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        self.reads.read(path).await
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        self.reads.reader(path).await
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let path = local_path(path);
        tokio::task::spawn_blocking(move || write_durably(&path, &bs))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        Ok(Box::new(BufferedWrite { path: local_path(path), buffer: Vec::new(), closed: false }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.reads.delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        self.reads.delete_prefix(path).await
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> Result<()> {
        self.reads.delete_stream(paths).await
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// A data file's bytes, gathered and written durably on close: nothing is at the
/// final name until it is complete (a data file is one batch's rows, bounded by
/// the batch).
struct BufferedWrite {
    path: PathBuf,
    buffer: Vec<u8>,
    closed: bool,
}

#[async_trait]
impl FileWrite for BufferedWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        if self.closed {
            return Err(Error::new(ErrorKind::DataInvalid, "write after close"));
        }
        self.buffer.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Err(Error::new(ErrorKind::DataInvalid, "closed twice"));
        }
        let (path, bytes) = (self.path.clone(), std::mem::take(&mut self.buffer));
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
    }
}
