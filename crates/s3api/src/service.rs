//! The S3 operations over [`Buckets`]: `s3s` parses each request into its typed
//! input and writes the typed output (or error) as S3's XML; this file decides
//! what each operation does. Store calls run on the blocking pool; bodies stream
//! to and from files, never whole in memory.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::store::{Buckets, Headers, ObjectInfo, StoreError, TempFile};

/// Bytes gathered from a request body before they are written out.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// Bytes read from a file per chunk of a response body.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// The most keys one listing returns, as on S3.
const LIST_KEYS_MAX: i32 = 1000;

/// The S3 API over local-directory buckets.
pub struct LocalS3 {
    buckets: Arc<Buckets>,
    /// What GetBucketLocation answers.
    region: String,
}

impl LocalS3 {
    /// The API over `buckets`, in `region`.
    pub fn new(buckets: Arc<Buckets>, region: String) -> LocalS3 {
        LocalS3 { buckets, region }
    }

    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Buckets) -> Result<T, StoreError> + Send + 'static,
    ) -> S3Result<T> {
        let buckets = self.buckets.clone();
        match tokio::task::spawn_blocking(move || call(&buckets)).await {
            Ok(result) => result.map_err(s3_error),
            Err(error) => Err(S3Error::with_message(S3ErrorCode::InternalError, error.to_string())),
        }
    }

    /// Writes a request body into a temporary file, computing the checksum the
    /// client sends (in a header or a trailer) on the way, and refuses the body
    /// with `BadDigest` if they differ.
    async fn receive<T>(&self, body: Option<StreamingBlob>, req: &S3Request<T>, headers: Sums) -> S3Result<TempFile> {
        let mut file = self.run(|b| b.temp_file()).await?;
        let algorithm = headers.algorithm(req);
        let mut hasher = algorithm.map(Algorithm::hasher);
        if let Some(mut body) = body {
            let mut pending: Vec<Bytes> = Vec::new();
            let mut pending_bytes = 0usize;
            loop {
                let chunk = body.next().await;
                let end = chunk.is_none();
                if let Some(chunk) = chunk {
                    let chunk = chunk.map_err(|e| S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()))?;
                    pending_bytes += chunk.len();
                    pending.push(chunk);
                }
                if pending_bytes >= WRITE_CHUNK_BYTES || (end && pending_bytes > 0) {
                    let chunks = std::mem::take(&mut pending);
                    pending_bytes = 0;
                    let mut sum = hasher.take();
                    (file, hasher) = self
                        .run(move |_| {
                            for chunk in chunks {
                                if let Some(sum) = sum.as_mut() {
                                    sum.update(&chunk);
                                }
                                file.write(&chunk)?;
                            }
                            Ok((file, sum))
                        })
                        .await?;
                }
                if end {
                    break;
                }
            }
        }
        if let (Some(algorithm), Some(hasher)) = (algorithm, hasher) {
            let expected = headers.value(algorithm).or_else(|| trailer(req, algorithm));
            let computed = algorithm.pick(hasher.finalize());
            if expected.is_some_and(|expected| Some(expected) != computed) {
                return Err(S3Error::with_message(
                    S3ErrorCode::BadDigest,
                    format!("The {} you specified did not match the calculated checksum.", algorithm.name()),
                ));
            }
        }
        Ok(file)
    }
}

/// The checksum headers of an upload.
#[derive(Default)]
struct Sums {
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64nvme: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    /// `x-amz-sdk-checksum-algorithm`: which one a trailer will carry.
    algorithm: Option<ChecksumAlgorithm>,
}

/// The checksums S3 takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    const ALL: [Algorithm; 5] =
        [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme, Algorithm::Sha1, Algorithm::Sha256];

    fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name().to_ascii_lowercase())
    }

    fn hasher(self) -> s3s::checksum::ChecksumHasher {
        let mut hasher = s3s::checksum::ChecksumHasher::default();
        match self {
            Algorithm::Crc32 => hasher.crc32 = Some(Default::default()),
            Algorithm::Crc32c => hasher.crc32c = Some(Default::default()),
            Algorithm::Crc64Nvme => hasher.crc64nvme = Some(Default::default()),
            Algorithm::Sha1 => hasher.sha1 = Some(Default::default()),
            Algorithm::Sha256 => hasher.sha256 = Some(Default::default()),
        }
        hasher
    }

    fn pick(self, sums: Checksum) -> Option<String> {
        match self {
            Algorithm::Crc32 => sums.checksum_crc32,
            Algorithm::Crc32c => sums.checksum_crc32c,
            Algorithm::Crc64Nvme => sums.checksum_crc64nvme,
            Algorithm::Sha1 => sums.checksum_sha1,
            Algorithm::Sha256 => sums.checksum_sha256,
        }
    }
}

impl Sums {
    fn value(&self, algorithm: Algorithm) -> Option<String> {
        match algorithm {
            Algorithm::Crc32 => self.crc32.clone(),
            Algorithm::Crc32c => self.crc32c.clone(),
            Algorithm::Crc64Nvme => self.crc64nvme.clone(),
            Algorithm::Sha1 => self.sha1.clone(),
            Algorithm::Sha256 => self.sha256.clone(),
        }
    }

    /// The algorithm of a checksum header, else of the trailer the request
    /// announces, else the one the SDK says it uses.
    fn algorithm<T>(&self, req: &S3Request<T>) -> Option<Algorithm> {
        if let Some(algorithm) = Algorithm::ALL.into_iter().find(|a| self.value(*a).is_some()) {
            return Some(algorithm);
        }
        let trailer = req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
        if let Some(algorithm) = Algorithm::ALL.into_iter().find(|a| trailer.as_deref() == Some(a.header().as_str())) {
            return Some(algorithm);
        }
        let named = self.algorithm.as_ref()?.as_str().to_ascii_uppercase();
        Algorithm::ALL.into_iter().find(|a| a.name() == named)
    }
}

/// The checksum a trailer carried, once the body is read (decoded by `s3s` when it
/// verified the chunk signatures, else by `unsigned`).
fn trailer<T>(req: &S3Request<T>, algorithm: Algorithm) -> Option<String> {
    let name = algorithm.header();
    let read = |headers: &http::HeaderMap| headers.get(&name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(value) = req.trailing_headers.as_ref().and_then(|t| t.read(read)).flatten() {
        return Some(value);
    }
    req.extensions.get::<crate::unsigned::Trailers>().and_then(|t| t.0.lock().expect("lock").as_ref().and_then(read))
}

/// The checksum headers of an upload's input (PutObject and UploadPart name them alike).
macro_rules! sums_of {
    ($input:expr) => {
        Sums {
            crc32: $input.checksum_crc32.clone(),
            crc32c: $input.checksum_crc32c.clone(),
            crc64nvme: $input.checksum_crc64nvme.clone(),
            sha1: $input.checksum_sha1.clone(),
            sha256: $input.checksum_sha256.clone(),
            algorithm: $input.checksum_algorithm.clone(),
        }
    };
}

/// The headers S3 keeps, taken from an input that sets them (PutObject, CopyObject
/// with REPLACE, CreateMultipartUpload name them alike).
macro_rules! headers_from {
    ($input:expr) => {
        headers_of(
            $input.content_type,
            $input.content_encoding,
            $input.content_disposition,
            $input.content_language,
            $input.cache_control,
            $input.metadata,
        )
    };
}

/// The one mapping from store failures to S3's error codes.
fn s3_error(error: StoreError) -> S3Error {
    let code = match &error {
        StoreError::NoSuchBucket => S3ErrorCode::NoSuchBucket,
        StoreError::NoSuchKey => S3ErrorCode::NoSuchKey,
        StoreError::NoSuchUpload => S3ErrorCode::NoSuchUpload,
        StoreError::BucketExists => S3ErrorCode::BucketAlreadyOwnedByYou,
        StoreError::BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
        StoreError::InvalidBucketName => S3ErrorCode::InvalidBucketName,
        StoreError::InvalidKey(message) if message.contains("too long") => S3ErrorCode::KeyTooLongError,
        StoreError::InvalidKey(_) | StoreError::PartNumber => S3ErrorCode::InvalidArgument,
        StoreError::InvalidPart => S3ErrorCode::InvalidPart,
        StoreError::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        StoreError::TooSmall => S3ErrorCode::EntityTooSmall,
        StoreError::NoParts => S3ErrorCode::MalformedXML,
        StoreError::BadDigest => S3ErrorCode::BadDigest,
        StoreError::TooLarge => S3ErrorCode::EntityTooLarge,
        StoreError::NoSpace => S3ErrorCode::ServiceUnavailable,
        StoreError::Io(_) => {
            tracing::error!(%error, "An S3 request failed on the buckets' file system.");
            S3ErrorCode::InternalError
        }
    };
    S3Error::with_message(code, error.to_string())
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_string())
}

fn timestamp(time: SystemTime) -> Timestamp {
    Timestamp::from(time)
}

/// `Content-MD5`, decoded; `InvalidDigest` if it is not 16 bytes of base64.
fn content_md5(header: Option<&String>) -> S3Result<Option<[u8; 16]>> {
    let Some(header) = header else { return Ok(None) };
    let decoded = base64_simd::STANDARD.decode_to_vec(header.as_bytes()).ok();
    match decoded.and_then(|bytes| <[u8; 16]>::try_from(bytes).ok()) {
        Some(digest) => Ok(Some(digest)),
        None => Err(S3Error::with_message(S3ErrorCode::InvalidDigest, "The Content-MD5 you specified was invalid.")),
    }
}

fn metadata(map: Option<Metadata>) -> std::collections::BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

fn metadata_out(headers: &Headers) -> Option<Metadata> {
    (!headers.metadata.is_empty()).then(|| headers.metadata.clone().into_iter().collect())
}

/// Seconds are all HTTP dates carry.
fn seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn since(timestamp: &Timestamp) -> u64 {
    let time: time::OffsetDateTime = timestamp.clone().into();
    time.unix_timestamp().max(0) as u64
}

fn matches(condition: &ETagCondition, info: &ObjectInfo) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value() == info.etag,
    }
}

/// RFC 9110's order of preconditions for GET and HEAD: `If-Match`, else
/// `If-Unmodified-Since` (412); then `If-None-Match`, else `If-Modified-Since` (304).
fn check_preconditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = seconds(info.modified);
    let failed = match (if_match, if_unmodified_since) {
        (Some(condition), _) => !matches(condition, info),
        (None, Some(time)) => modified > since(time),
        (None, None) => false,
    };
    if failed {
        return Err(S3Error::with_message(
            S3ErrorCode::PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold",
        ));
    }
    let unchanged = match (if_none_match, if_modified_since) {
        (Some(condition), _) => matches(condition, info),
        (None, Some(time)) => modified <= since(time),
        (None, None) => false,
    };
    if unchanged {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

fn headers_of(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    meta: Option<Metadata>,
) -> Headers {
    Headers {
        content_type,
        // The SDKs' own `aws-chunked` framing is not the object's encoding.
        content_encoding: content_encoding
            .map(|e| e.split(',').map(str::trim).filter(|e| *e != "aws-chunked").collect::<Vec<_>>().join(","))
            .filter(|e| !e.is_empty()),
        content_disposition,
        content_language,
        cache_control,
        metadata: metadata(meta),
    }
}

#[async_trait::async_trait]
impl S3 for LocalS3 {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        let location = format!("/{bucket}");
        self.run(move |b| b.create_bucket(&bucket)).await?;
        Ok(S3Response::new(CreateBucketOutput { location: Some(location) }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let bucket = req.input.bucket;
        self.run(move |b| b.head_bucket(&bucket)).await?;
        Ok(S3Response::new(HeadBucketOutput { bucket_region: Some(self.region.clone()), ..Default::default() }))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.run(move |b| b.delete_bucket(&bucket)).await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.run(|b| b.list_buckets()).await?;
        let buckets = buckets
            .into_iter()
            .map(|bucket| Bucket {
                name: Some(bucket.name),
                creation_date: Some(timestamp(bucket.created)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        let owner = Owner { display_name: Some("sluice".into()), id: Some("sluice".into()) };
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), owner: Some(owner), ..Default::default() }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let bucket = req.input.bucket;
        self.run(move |b| b.head_bucket(&bucket)).await?;
        // us-east-1 is S3's empty location constraint.
        let location = (self.region != "us-east-1").then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput { location_constraint: location }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let keys_max = input.max_keys.unwrap_or(LIST_KEYS_MAX).clamp(0, LIST_KEYS_MAX);
        let token = match &input.continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => None,
        };
        let marker = token.clone().or_else(|| input.start_after.clone());
        let (bucket, prefix, delimiter) =
            (input.bucket.clone(), input.prefix.clone().unwrap_or_default(), input.delimiter.clone());
        let listing = self
            .run(move |b| b.list(&bucket, &prefix, delimiter.as_deref(), marker.as_deref(), keys_max as usize))
            .await?;
        let key_count = (listing.objects.len() + listing.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(input.prefix.unwrap_or_default()),
            max_keys: Some(keys_max),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(listing.next_marker.is_some()),
            next_continuation_token: listing.next_marker.as_deref().map(encode_token),
            contents: Some(listing.objects.into_iter().map(object).collect()),
            common_prefixes: Some(
                listing.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect(),
            ),
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            start_after: input.start_after,
            ..Default::default()
        }))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let keys_max = input.max_keys.unwrap_or(LIST_KEYS_MAX).clamp(0, LIST_KEYS_MAX);
        let (bucket, prefix, delimiter, marker) = (
            input.bucket.clone(),
            input.prefix.clone().unwrap_or_default(),
            input.delimiter.clone(),
            input.marker.clone().filter(|m| !m.is_empty()),
        );
        let listing = self
            .run(move |b| b.list(&bucket, &prefix, delimiter.as_deref(), marker.as_deref(), keys_max as usize))
            .await?;
        let truncated = listing.next_marker.is_some();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(input.prefix.unwrap_or_default()),
            marker: Some(input.marker.unwrap_or_default()),
            max_keys: Some(keys_max),
            is_truncated: Some(truncated),
            // S3 gives NextMarker only with a delimiter; clients use the last key otherwise.
            next_marker: if input.delimiter.is_some() { listing.next_marker } else { None },
            contents: Some(listing.objects.into_iter().map(object).collect()),
            common_prefixes: Some(
                listing.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect(),
            ),
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let info = self.run(move |b| b.head(&bucket, &key)).await?;
        check_preconditions(
            &info,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
        )?;
        let headers = info.headers.clone();
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(info.size as i64),
            content_type: Some(headers.content_type.clone().unwrap_or_else(|| "application/octet-stream".into())),
            content_encoding: headers.content_encoding.clone(),
            content_disposition: headers.content_disposition.clone(),
            content_language: headers.content_language.clone(),
            cache_control: headers.cache_control.clone(),
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(timestamp(info.modified)),
            metadata: metadata_out(&headers),
            parts_count: info.parts.map(|p| p as i32),
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let (file, info) = self.run(move |b| b.open(&bucket, &key)).await?;
        check_preconditions(
            &info,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
        )?;
        let range = match &input.range {
            Some(range) => Some(range.check(info.size).map_err(|_| {
                S3Error::with_message(S3ErrorCode::InvalidRange, "The requested range is not satisfiable")
            })?),
            None => None,
        };
        let (start, end) = range.clone().map_or((0, info.size), |r| (r.start, r.end));
        let headers = info.headers.clone();
        Ok(S3Response::new(GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(StreamingBlob::wrap(file_stream(file, start, end))),
            content_length: Some((end - start) as i64),
            content_range: range.map(|r| format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), info.size)),
            content_type: Some(
                input
                    .response_content_type
                    .or(headers.content_type.clone())
                    .unwrap_or_else(|| "application/octet-stream".into()),
            ),
            content_encoding: input.response_content_encoding.or(headers.content_encoding.clone()),
            content_disposition: input.response_content_disposition.or(headers.content_disposition.clone()),
            content_language: input.response_content_language.or(headers.content_language.clone()),
            cache_control: input.response_cache_control.or(headers.cache_control.clone()),
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(timestamp(info.modified)),
            metadata: metadata_out(&headers),
            parts_count: info.parts.map(|p| p as i32),
            ..Default::default()
        }))
    }

    async fn put_object(&self, mut req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let md5 = content_md5(req.input.content_md5.as_ref())?;
        // Fail fast, before the body is read, if the object cannot be stored.
        let bucket = req.input.bucket.clone();
        self.run(move |b| b.head_bucket(&bucket)).await?;
        let body = req.input.body.take();
        let sums = sums_of!(req.input);
        let file = self.receive(body, &req, sums).await?;
        let input = req.input;
        let headers = headers_from!(input);
        let (bucket, key) = (input.bucket, input.key);
        let info = self.run(move |b| b.put_object(&bucket, &key, file, headers, md5)).await?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(etag(&info.etag)), ..Default::default() }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket { bucket: from_bucket, key: from_key, .. } = input.copy_source else {
            return Err(S3Error::with_message(S3ErrorCode::InvalidArgument, "Copy sources must be bucket/key."));
        };
        let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let headers = replace.then(|| headers_from!(input));
        let (to_bucket, to_key) = (input.bucket, input.key);
        let info = self
            .run(move |b| {
                let (source_bucket, source_key) = (from_bucket.to_string(), from_key.to_string());
                // Copying an object onto itself without new metadata is refused, as on S3.
                if source_bucket == to_bucket && source_key == to_key && headers.is_none() {
                    return Err(StoreError::InvalidKey(
                        "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.".into(),
                    ));
                }
                b.copy_object((&source_bucket, &source_key), (&to_bucket, &to_key), headers)
            })
            .await?;
        let result = CopyObjectResult {
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(timestamp(info.modified)),
            ..Default::default()
        };
        Ok(S3Response::new(CopyObjectOutput { copy_object_result: Some(result), ..Default::default() }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket, req.input.key);
        self.run(move |b| b.delete_object(&bucket, &key)).await?;
        Ok(S3Response::with_status(DeleteObjectOutput::default(), http::StatusCode::NO_CONTENT))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let quiet = input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        let bucket = input.bucket;
        let results = self
            .run(move |b| {
                b.head_bucket(&bucket)?;
                Ok(keys.into_iter().map(|key| (b.delete_object(&bucket, &key), key)).collect::<Vec<_>>())
            })
            .await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (result, key) in results {
            match result {
                Ok(()) if !quiet => deleted.push(DeletedObject { key: Some(key), ..Default::default() }),
                Ok(()) => {}
                Err(error) => {
                    let error = s3_error(error);
                    errors.push(Error {
                        code: Some(error.code().as_str().to_string()),
                        key: Some(key),
                        message: error.message().map(str::to_string),
                        version_id: None,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let headers = headers_from!(input);
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let upload_id = self.run(move |b| b.create_upload(&bucket, &key, headers)).await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, mut req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let md5 = content_md5(req.input.content_md5.as_ref())?;
        let (bucket, key, upload_id) = (req.input.bucket.clone(), req.input.key.clone(), req.input.upload_id.clone());
        // The upload must exist before its part is read.
        self.run(move |b| b.list_parts(&bucket, &key, &upload_id).map(|_| ())).await?;
        let body = req.input.body.take();
        let sums = sums_of!(req.input);
        let file = self.receive(body, &req, sums).await?;
        let input = req.input;
        let (bucket, key, upload_id, number) = (input.bucket, input.key, input.upload_id, input.part_number);
        let part_etag = self.run(move |b| b.put_part(&bucket, &key, &upload_id, number, file, md5)).await?;
        Ok(S3Response::new(UploadPartOutput { e_tag: Some(etag(&part_etag)), ..Default::default() }))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let (bucket, key, upload_id) = (input.bucket.clone(), input.key.clone(), input.upload_id.clone());
        let parts = self.run(move |b| b.list_parts(&bucket, &key, &upload_id)).await?;
        let after = input.part_number_marker.unwrap_or(0);
        let parts_max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let mut chosen: Vec<_> = parts.iter().filter(|p| p.number > after).collect();
        let truncated = chosen.len() > parts_max;
        chosen.truncate(parts_max);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(parts_max as i32),
            is_truncated: Some(truncated),
            part_number_marker: Some(after),
            next_part_number_marker: chosen.last().map(|p| p.number),
            parts: Some(
                chosen
                    .into_iter()
                    .map(|p| Part {
                        e_tag: Some(etag(&p.etag)),
                        last_modified: Some(timestamp(p.modified)),
                        part_number: Some(p.number),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let mut chosen = Vec::new();
        for part in input.multipart_upload.and_then(|u| u.parts).unwrap_or_default() {
            let (Some(number), Some(tag)) = (part.part_number, part.e_tag) else {
                return Err(S3Error::new(S3ErrorCode::InvalidPart));
            };
            chosen.push((number, tag.value().to_string()));
        }
        let (bucket, key, upload_id) = (input.bucket.clone(), input.key.clone(), input.upload_id.clone());
        let info = self.run(move |b| b.complete_upload(&bucket, &key, &upload_id, &chosen)).await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&info.etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let (bucket, key, upload_id) = (req.input.bucket, req.input.key, req.input.upload_id);
        self.run(move |b| b.abort_upload(&bucket, &key, &upload_id)).await?;
        Ok(S3Response::with_status(AbortMultipartUploadOutput::default(), http::StatusCode::NO_CONTENT))
    }
}

fn object(info: ObjectInfo) -> Object {
    Object {
        e_tag: Some(etag(&info.etag)),
        key: Some(info.key),
        last_modified: Some(timestamp(info.modified)),
        size: Some(info.size as i64),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        owner: None,
        ..Default::default()
    }
}

/// Continuation tokens are the key (or prefix) a page ended at, hex-encoded so
/// clients treat them as opaque.
fn encode_token(marker: &str) -> String {
    marker.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> S3Result<String> {
    let invalid =
        || S3Error::with_message(S3ErrorCode::InvalidArgument, "The continuation token provided is incorrect");
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes.ok_or_else(invalid)?).map_err(|_| invalid())
}

/// Bytes `start..end` of an open file, read on the blocking pool a chunk at a time.
fn file_stream(
    file: std::fs::File,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    futures_util::stream::try_unfold((Some(file), start), move |(file, at)| async move {
        let Some(file) = file else { return Ok(None) };
        if at >= end {
            return Ok(None);
        }
        let want = (end - at).min(READ_CHUNK_BYTES as u64) as usize;
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = file;
            let mut buffer = vec![0u8; want];
            file.seek(SeekFrom::Start(at))?;
            let n = file.read(&mut buffer)?;
            buffer.truncate(n);
            Ok::<_, std::io::Error>((file, buffer))
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            // The file is shorter than it was when opened: end here, short.
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "object shrank while read"));
        }
        let next = at + chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (Some(file), next))))
    })
}
