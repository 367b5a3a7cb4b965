//! The buckets the S3 API serves: the same directories Sluice delivers into, with
//! what S3 keeps beside an object (its ETag, Content-Type, user metadata) in
//! small files of their own. Blocking; the service runs it on tokio's blocking pool.
//!
//! On disk, under the buckets' root (`<data-dir>/buckets`):
//!
//! ```text
//! <bucket>/<key>                     an object: the file at its key, as delivery writes it
//! .sluice-tmp/<uuid>                 a write in progress (never an object; removed at start)
//! .sluice-meta/<bucket>/<sha256(key)>.json
//!                                    an object's metadata, when the S3 API wrote it:
//!                                    {"format_version": 1, "key", "size", "mtime_ns",
//!                                     "etag", "content_type", ..., "metadata": {..}}
//! .sluice-uploads/<upload id>/upload.json
//!                                    a multipart upload: {"format_version": 1, "bucket",
//!                                     "key", "initiated_ms", "headers": {..}}
//! .sluice-uploads/<upload id>/<part number>.part, .json
//!                                    an uploaded part and {"etag", "size"}
//! ```
//!
//! Names starting with a dot are never buckets, so none of this is listed. An
//! object appears only by a rename of a complete, fsynced file, so a listing never
//! shows one half-written. Metadata counts only while the object's size and
//! modification time are still the ones it was written for: an object replaced
//! by delivery (which knows nothing of these files) falls back to the defaults,
//! `application/octet-stream` and an ETag that is the MD5 of its bytes, computed
//! when first asked for and remembered while the file is unchanged.
//!
//! Keys map to paths, so a key that cannot be a path (an empty, `.` or `..`
//! segment, a segment over 255 bytes) is refused, as is a key that is a prefix
//! directory of another (`a` beside `a/b`): S3 allows both, a file system does not.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// Version of the metadata and upload files.
const FORMAT_VERSION: u32 = 1;
/// Where object metadata lives under the root.
const META_DIR: &str = ".sluice-meta";
/// Where multipart uploads live under the root.
const UPLOADS_DIR: &str = ".sluice-uploads";
/// The longest file name most file systems take: the longest key segment.
const KEY_SEGMENT_BYTES_MAX: usize = 255;
/// S3's longest key.
pub const KEY_BYTES_MAX: usize = 1024;
/// S3's largest single upload (PutObject, UploadPart).
pub const OBJECT_BYTES_MAX: u64 = 5 << 30;
/// S3's highest part number.
pub const PART_NUMBER_MAX: i32 = 10_000;
/// ETags of delivered objects remembered at once (32 hex digits and a path each).
const ETAGS_REMEMBERED_MAX: usize = 100_000;

/// Why a store operation failed, in S3's terms.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `NoSuchBucket`.
    #[error("The specified bucket does not exist")]
    NoSuchBucket,
    /// `NoSuchKey`.
    #[error("The specified key does not exist.")]
    NoSuchKey,
    /// `NoSuchUpload`.
    #[error("The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.")]
    NoSuchUpload,
    /// `BucketAlreadyOwnedByYou`.
    #[error("Your previous request to create the named bucket succeeded and you already own it.")]
    BucketExists,
    /// `BucketNotEmpty`.
    #[error("The bucket you tried to delete is not empty")]
    BucketNotEmpty,
    /// `InvalidBucketName`.
    #[error("The specified bucket is not valid.")]
    InvalidBucketName,
    /// `KeyTooLongError` / `InvalidArgument`: a key that cannot be a file.
    #[error("{0}")]
    InvalidKey(String),
    /// `InvalidArgument`: a part number out of range.
    #[error("Part number must be an integer between 1 and 10000, inclusive")]
    PartNumber,
    /// `InvalidPart`.
    #[error("One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.")]
    InvalidPart,
    /// `InvalidPartOrder`.
    #[error("The list of parts was not in ascending order. The parts list must be specified in order by part number.")]
    InvalidPartOrder,
    /// `EntityTooSmall`.
    #[error("Your proposed upload is smaller than the minimum allowed object size.")]
    TooSmall,
    /// `MalformedXML`: a completion naming no parts.
    #[error("The XML you provided was not well-formed or did not validate against our published schema")]
    NoParts,
    /// `BadDigest`.
    #[error("The Content-MD5 you specified did not match what we received.")]
    BadDigest,
    /// `EntityTooLarge`.
    #[error("Your proposed upload exceeds the maximum allowed object size.")]
    TooLarge,
    /// The disk is full: nothing was stored.
    #[error("the disk holding the buckets is full")]
    NoSpace,
    /// Any other failure of the file system.
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> StoreError {
        match error.raw_os_error() {
            Some(28) => StoreError::NoSpace, // ENOSPC
            _ => StoreError::Io(error.to_string()),
        }
    }
}

/// The headers S3 keeps with an object and sends back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// `Content-Type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Cache-Control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `x-amz-meta-*`, without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MetaFile {
    format_version: u32,
    key: String,
    size: u64,
    mtime_ns: u128,
    etag: String,
    #[serde(default)]
    parts: Option<u32>,
    #[serde(flatten)]
    headers: Headers,
}

#[derive(Debug, Serialize, Deserialize)]
struct UploadFile {
    format_version: u32,
    bucket: String,
    key: String,
    initiated_ms: u64,
    headers: Headers,
}

#[derive(Debug, Serialize, Deserialize)]
struct PartFile {
    etag: String,
    size: u64,
}

/// What is known of an object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
    /// The ETag, without quotes.
    pub etag: String,
    /// Headers kept with it (the defaults for a delivered object).
    pub headers: Headers,
    /// For a completed multipart upload, how many parts.
    pub parts: Option<u32>,
}

/// A bucket as listed.
#[derive(Debug, Clone)]
pub struct BucketInfo {
    /// Its name.
    pub name: String,
    /// When its directory was made.
    pub created: SystemTime,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects, in key order.
    pub objects: Vec<ObjectInfo>,
    /// Prefixes rolled up at the delimiter, in order.
    pub common_prefixes: Vec<String>,
    /// Where the next page starts after (the last key or prefix of this one), if any.
    pub next_marker: Option<String>,
}

/// A part as listed.
#[derive(Debug, Clone)]
pub struct PartInfo {
    /// Its number.
    pub number: i32,
    /// Its ETag, without quotes.
    pub etag: String,
    /// Bytes.
    pub size: u64,
    /// When it was uploaded.
    pub modified: SystemTime,
}

/// The local-directory buckets.
pub struct Buckets {
    root: PathBuf,
    tmp: PathBuf,
    /// MD5 ETags of objects without metadata files, by path, with the size and
    /// modification time they were computed for.
    etags: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

/// Whether `name` is a bucket name S3 accepts (3 to 63 lowercase letters, digits,
/// dots and hyphens, starting and ending with a letter or digit, no `..`), and so
/// a safe directory name. The one rule for every place Sluice makes a bucket.
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mtime_ns(modified: SystemTime) -> u128 {
    modified.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Syncs a directory, so that a rename or a file created in it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A file being written in the temporary directory, removed unless it is kept.
pub struct TempFile {
    path: PathBuf,
    file: Option<fs::File>,
    md5: Md5,
    size: u64,
}

impl TempFile {
    /// Appends bytes, refusing to grow past [`OBJECT_BYTES_MAX`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.size += bytes.len() as u64;
        if self.size > OBJECT_BYTES_MAX {
            return Err(StoreError::TooLarge);
        }
        self.md5.update(bytes);
        self.file.as_mut().expect("open until finished").write_all(bytes)?;
        Ok(())
    }

    /// Bytes written.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Syncs the file and returns its MD5.
    fn finish(&mut self) -> Result<[u8; 16], StoreError> {
        let file = self.file.take().expect("finished once");
        file.sync_all()?;
        Ok(std::mem::take(&mut self.md5).finalize().into())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Kept files were renamed away; this only removes an abandoned write.
        let _ = fs::remove_file(&self.path);
    }
}

impl Buckets {
    /// Buckets under `root`, writes staged in `tmp` (on the same file system).
    pub fn new(root: PathBuf, tmp: PathBuf) -> Buckets {
        Buckets { root, tmp, etags: Mutex::new(HashMap::new()) }
    }

    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, StoreError> {
        if !valid_bucket_name(bucket) {
            return Err(StoreError::NoSuchBucket);
        }
        let dir = self.root.join(bucket);
        if !dir.is_dir() {
            return Err(StoreError::NoSuchBucket);
        }
        Ok(dir)
    }

    fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        let dir = self.bucket_dir(bucket)?;
        check_key(key)?;
        Ok(key.split('/').fold(dir, |path, segment| path.join(segment)))
    }

    fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        self.root.join(META_DIR).join(bucket).join(format!("{}.json", hex(digest.as_ref())))
    }

    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf, StoreError> {
        if upload_id.is_empty() || !upload_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StoreError::NoSuchUpload);
        }
        let dir = self.root.join(UPLOADS_DIR).join(upload_id);
        if !dir.is_dir() {
            return Err(StoreError::NoSuchUpload);
        }
        Ok(dir)
    }

    /// Makes a bucket.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        if !valid_bucket_name(bucket) {
            return Err(StoreError::InvalidBucketName);
        }
        fs::create_dir_all(&self.root)?;
        match fs::create_dir(self.root.join(bucket)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(StoreError::BucketExists),
            Err(e) => return Err(e.into()),
        }
        sync_dir(&self.root)?;
        Ok(())
    }

    /// Whether a bucket exists.
    pub fn head_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.bucket_dir(bucket).map(|_| ())
    }

    /// Removes an empty bucket (and its metadata directory).
    pub fn delete_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let dir = self.bucket_dir(bucket)?;
        if has_files(&dir)? {
            return Err(StoreError::BucketNotEmpty);
        }
        fs::remove_dir_all(&dir)?;
        let _ = fs::remove_dir_all(self.root.join(META_DIR).join(bucket));
        sync_dir(&self.root)?;
        Ok(())
    }

    /// Every bucket, by name.
    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buckets = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid_bucket_name(&name) || !entry.file_type()?.is_dir() {
                continue;
            }
            let meta = entry.metadata()?;
            let created = meta.created().or_else(|_| meta.modified()).unwrap_or(UNIX_EPOCH);
            buckets.push(BucketInfo { name, created });
        }
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(buckets)
    }

    /// A temporary file to write an object or part into.
    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        fs::create_dir_all(&self.tmp)?;
        let path = self.tmp.join(uuid::Uuid::new_v4().simple().to_string());
        let file = fs::File::create(&path)?;
        Ok(TempFile { path, file: Some(file), md5: Md5::new(), size: 0 })
    }

    /// Puts a written temporary file in place as the object at `key`, durably,
    /// with its metadata. `content_md5`: the MD5 the client said it sent.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        mut file: TempFile,
        headers: Headers,
        content_md5: Option<[u8; 16]>,
    ) -> Result<ObjectInfo, StoreError> {
        let path = self.object_path(bucket, key)?;
        let md5 = file.finish()?;
        if content_md5.is_some_and(|expected| expected != md5) {
            return Err(StoreError::BadDigest);
        }
        self.place(bucket, key, &path, &mut file, hex(&md5), None, headers)
    }

    /// Renames `file` to `path` and writes the metadata; syncs what makes both durable.
    #[allow(clippy::too_many_arguments, reason = "the parts of one object, all different")]
    fn place(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        file: &mut TempFile,
        etag: String,
        parts: Option<u32>,
        headers: Headers,
    ) -> Result<ObjectInfo, StoreError> {
        let bucket_dir = self.root.join(bucket);
        let parent = path.parent().expect("inside the bucket").to_path_buf();
        if let Err(e) = fs::create_dir_all(&parent) {
            return Err(match e.kind() {
                std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => StoreError::InvalidKey(
                    format!("Sluice keeps objects as files: a prefix of key {key:?} is an object already"),
                ),
                _ => e.into(),
            });
        }
        if path.is_dir() {
            return Err(StoreError::InvalidKey(format!(
                "Sluice keeps objects as files: key {key:?} is a prefix of other objects' keys"
            )));
        }
        fs::rename(&file.path, path)?;
        let mut dir = parent.as_path();
        loop {
            sync_dir(dir)?;
            if dir == bucket_dir {
                break;
            }
            dir = dir.parent().expect("inside the bucket");
        }
        let stat = fs::metadata(path)?;
        let modified = stat.modified()?;
        let meta = MetaFile {
            format_version: FORMAT_VERSION,
            key: key.to_string(),
            size: stat.len(),
            mtime_ns: mtime_ns(modified),
            etag: etag.clone(),
            parts,
            headers: headers.clone(),
        };
        self.write_meta(bucket, key, &meta)?;
        Ok(ObjectInfo { key: key.to_string(), size: stat.len(), modified, etag, headers, parts })
    }

    fn write_meta(&self, bucket: &str, key: &str, meta: &MetaFile) -> Result<(), StoreError> {
        let path = self.meta_path(bucket, key);
        let dir = path.parent().expect("in the metadata directory");
        fs::create_dir_all(dir)?;
        let mut tmp = self.temp_file()?;
        tmp.write(&serde_json::to_vec(meta).expect("serialises"))?;
        tmp.finish()?;
        fs::rename(&tmp.path, &path)?;
        sync_dir(dir)?;
        Ok(())
    }

    /// An open object and what is known of it, read from the open file (so a
    /// concurrent replacement does not mix two objects).
    pub fn open(&self, bucket: &str, key: &str) -> Result<(fs::File, ObjectInfo), StoreError> {
        let path = self.object_path(bucket, key)?;
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                return Err(StoreError::NoSuchKey)
            }
            Err(e) => return Err(e.into()),
        };
        let stat = file.metadata()?;
        if !stat.is_file() {
            return Err(StoreError::NoSuchKey);
        }
        let info = self.info(bucket, key, &path, stat.len(), stat.modified()?, Some(&file))?;
        Ok((file, info))
    }

    /// What is known of an object.
    pub fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        self.open(bucket, key).map(|(_, info)| info)
    }

    fn info(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        size: u64,
        modified: SystemTime,
        open: Option<&fs::File>,
    ) -> Result<ObjectInfo, StoreError> {
        let meta: Option<MetaFile> =
            fs::read(self.meta_path(bucket, key)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(meta) = meta.filter(|m| m.key == key && m.size == size && m.mtime_ns == mtime_ns(modified)) {
            return Ok(ObjectInfo {
                key: key.to_string(),
                size,
                modified,
                etag: meta.etag,
                headers: meta.headers,
                parts: meta.parts,
            });
        }
        let etag = self.computed_etag(path, size, modified, open)?;
        Ok(ObjectInfo { key: key.to_string(), size, modified, etag, headers: Headers::default(), parts: None })
    }

    fn computed_etag(
        &self,
        path: &Path,
        size: u64,
        modified: SystemTime,
        open: Option<&fs::File>,
    ) -> Result<String, StoreError> {
        if let Some((s, m, etag)) = self.etags.lock().expect("lock").get(path) {
            if *s == size && *m == modified {
                return Ok(etag.clone());
            }
        }
        let mut file = match open {
            Some(file) => file.try_clone()?,
            None => fs::File::open(path)?,
        };
        file.seek(SeekFrom::Start(0))?;
        let mut md5 = Md5::new();
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            md5.update(&buffer[..n]);
        }
        file.seek(SeekFrom::Start(0))?;
        let etag = hex(&md5.finalize());
        let mut etags = self.etags.lock().expect("lock");
        if etags.len() >= ETAGS_REMEMBERED_MAX {
            etags.clear();
        }
        etags.insert(path.to_path_buf(), (size, modified, etag.clone()));
        Ok(etag)
    }

    /// Removes an object (nothing to do if it is absent, as on S3), its metadata and
    /// the directories its key left empty.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let bucket_dir = self.bucket_dir(bucket)?;
        let Ok(path) = self.object_path(bucket, key) else { return Ok(()) };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory | std::io::ErrorKind::IsADirectory
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        let _ = fs::remove_file(self.meta_path(bucket, key));
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir.filter(|d| *d != bucket_dir) {
            if fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    /// Copies an object (a new file: later changes to either do not touch the other).
    pub fn copy_object(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        headers: Option<Headers>,
    ) -> Result<ObjectInfo, StoreError> {
        let (mut source, info) = self.open(from.0, from.1)?;
        let path = self.object_path(to.0, to.1)?;
        let mut tmp = self.temp_file()?;
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let n = source.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            tmp.write(&buffer[..n])?;
        }
        let md5 = tmp.finish()?;
        self.place(to.0, to.1, &path, &mut tmp, hex(&md5), None, headers.unwrap_or(info.headers))
    }

    /// One page of the bucket's objects with keys starting with `prefix`, after
    /// `marker`, rolled up at `delimiter`, at most `keys_max` entries.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        keys_max: usize,
    ) -> Result<Listing, StoreError> {
        let bucket_dir = self.bucket_dir(bucket)?;
        // Walk only the directory the prefix names, if it names one.
        let start = match prefix.rfind('/') {
            Some(end) => &prefix[..end],
            None => "",
        };
        let start_dir = start.split('/').filter(|s| !s.is_empty()).fold(bucket_dir.clone(), |p, s| p.join(s));
        let mut keys = Vec::new();
        walk(&start_dir, start, &mut keys)?;
        keys.retain(|(key, _)| key.starts_with(prefix));
        keys.sort();
        let mut listing = Listing::default();
        let mut entries = 0usize;
        for (key, path) in keys {
            if marker.is_some_and(|m| key.as_str() <= m) {
                continue;
            }
            if let Some(delimiter) = delimiter.filter(|d| !d.is_empty()) {
                if let Some(at) = key[prefix.len()..].find(delimiter) {
                    let common = &key[..prefix.len() + at + delimiter.len()];
                    if marker.is_some_and(|m| m.starts_with(common) || m == common)
                        || listing.common_prefixes.last().is_some_and(|c| c == common)
                    {
                        continue;
                    }
                    if entries == keys_max {
                        listing.next_marker = last_entry(&listing);
                        return Ok(listing);
                    }
                    listing.common_prefixes.push(common.to_string());
                    entries += 1;
                    continue;
                }
            }
            if entries == keys_max {
                listing.next_marker = last_entry(&listing);
                return Ok(listing);
            }
            let stat = match fs::metadata(&path) {
                Ok(stat) => stat,
                // Deleted since the walk.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            listing.objects.push(self.info(bucket, &key, &path, stat.len(), stat.modified()?, None)?);
            entries += 1;
        }
        Ok(listing)
    }

    /// Starts a multipart upload; returns its id.
    pub fn create_upload(&self, bucket: &str, key: &str, headers: Headers) -> Result<String, StoreError> {
        self.object_path(bucket, key)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join(UPLOADS_DIR).join(&id);
        fs::create_dir_all(&dir)?;
        let upload = UploadFile {
            format_version: FORMAT_VERSION,
            bucket: bucket.to_string(),
            key: key.to_string(),
            initiated_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            headers,
        };
        fs::write(dir.join("upload.json"), serde_json::to_vec(&upload).expect("serialises"))?;
        sync_dir(&dir)?;
        Ok(id)
    }

    fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(PathBuf, UploadFile), StoreError> {
        let dir = self.upload_dir(upload_id)?;
        let upload: UploadFile = serde_json::from_slice(&fs::read(dir.join("upload.json"))?)
            .map_err(|e| StoreError::Io(format!("upload {upload_id} is unreadable: {e}")))?;
        if upload.bucket != bucket || upload.key != key {
            return Err(StoreError::NoSuchUpload);
        }
        Ok((dir, upload))
    }

    /// Stores a written part of an upload; returns its ETag.
    pub fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        mut file: TempFile,
        content_md5: Option<[u8; 16]>,
    ) -> Result<String, StoreError> {
        let (dir, _) = self.upload(bucket, key, upload_id)?;
        if !(1..=PART_NUMBER_MAX).contains(&number) {
            return Err(StoreError::PartNumber);
        }
        let md5 = file.finish()?;
        if content_md5.is_some_and(|expected| expected != md5) {
            return Err(StoreError::BadDigest);
        }
        let etag = hex(&md5);
        fs::rename(&file.path, dir.join(format!("{number}.part")))?;
        let part = PartFile { etag: etag.clone(), size: file.size };
        fs::write(dir.join(format!("{number}.json")), serde_json::to_vec(&part).expect("serialises"))?;
        sync_dir(&dir)?;
        Ok(etag)
    }

    /// The upload's parts, by number.
    pub fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, StoreError> {
        let (dir, _) = self.upload(bucket, key, upload_id)?;
        let mut parts = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(number) = name.strip_suffix(".json").and_then(|n| n.parse::<i32>().ok()) else { continue };
            let part: PartFile = match fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(part) => part,
                None => continue,
            };
            let modified = entry.metadata()?.modified()?;
            parts.push(PartInfo { number, etag: part.etag, size: part.size, modified });
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    /// Joins the named parts into the object, in order, and ends the upload.
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        chosen: &[(i32, String)],
    ) -> Result<ObjectInfo, StoreError> {
        let (dir, upload) = self.upload(bucket, key, upload_id)?;
        let path = self.object_path(bucket, key)?;
        if chosen.is_empty() {
            return Err(StoreError::NoParts);
        }
        if chosen.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StoreError::InvalidPartOrder);
        }
        let uploaded: HashMap<i32, PartInfo> =
            self.list_parts(bucket, key, upload_id)?.into_iter().map(|p| (p.number, p)).collect();
        let mut tmp = self.temp_file()?;
        let mut md5s = Md5::new();
        let mut buffer = vec![0u8; 256 << 10];
        for (i, (number, etag)) in chosen.iter().enumerate() {
            let part =
                uploaded.get(number).filter(|p| p.etag == etag.trim_matches('"')).ok_or(StoreError::InvalidPart)?;
            // S3's minimum part size (5 MiB), for every part but the last.
            if i + 1 < chosen.len() && part.size < 5 << 20 {
                return Err(StoreError::TooSmall);
            }
            let mut digest = [0u8; 16];
            for (j, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&part.etag[2 * j..2 * j + 2], 16).unwrap_or(0);
            }
            md5s.update(digest);
            let mut source = fs::File::open(dir.join(format!("{number}.part")))?;
            loop {
                let n = source.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                tmp.write(&buffer[..n])?;
            }
        }
        tmp.finish()?;
        let etag = format!("{}-{}", hex(&md5s.finalize()), chosen.len());
        let info = self.place(bucket, key, &path, &mut tmp, etag, Some(chosen.len() as u32), upload.headers)?;
        fs::remove_dir_all(&dir)?;
        Ok(info)
    }

    /// Ends an upload without an object.
    pub fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let (dir, _) = self.upload(bucket, key, upload_id)?;
        fs::remove_dir_all(dir)?;
        Ok(())
    }
}

fn last_entry(listing: &Listing) -> Option<String> {
    let key = listing.objects.last().map(|o| o.key.clone());
    let prefix = listing.common_prefixes.last().cloned();
    key.into_iter().chain(prefix).max()
}

/// Refuses keys that cannot be paths.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(StoreError::InvalidKey("Your key is too long".into()));
    }
    let bad = key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.len() > KEY_SEGMENT_BYTES_MAX || s.contains('\0'));
    if bad {
        return Err(StoreError::InvalidKey(format!(
            "Sluice keeps objects as files: key {key:?} has an empty, '.' or '..' segment, or one over {KEY_SEGMENT_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Whether a directory holds any file, at any depth.
fn has_files(dir: &Path) -> std::io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() || (kind.is_dir() && has_files(&entry.path())?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every file under `dir`, as (key, path), `dir` being the key prefix `base`.
fn walk(dir: &Path, base: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let key = if base.is_empty() { name } else { format!("{base}/{name}") };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if kind.is_file() {
            out.push((key, entry.path()));
        }
    }
    Ok(())
}
