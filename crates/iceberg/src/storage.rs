//! Where table files go for `file://` warehouses: the local file system, durably.
//! Iceberg's own local storage writes metadata files without syncing them, and a
//! catalog pointer committed to a metadata file a crash then lost would leave the
//! table unreadable; here every file is written to a temporary name, synced,
//! renamed into place and its directory synced before the write returns, so what
//! a commit points to is on disk first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage, StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Builds [`DurableFsStorage`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DurableFsFactory;

#[typetag::serde]
impl StorageFactory for DurableFsFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(DurableFsStorage { reads: LocalFsStorage::new() }))
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
