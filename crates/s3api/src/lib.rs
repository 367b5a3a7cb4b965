//! `sluice-s3api`: the S3 API on Sluice's own port, over the local-directory
//! buckets Sluice delivers into, so a test can create its bucket, let Sluice
//! deliver, and read the objects back from one endpoint. The last step of a
//! record's flow, seen from the outside: delivery writes objects, this serves them.
//!
//! `s3s` speaks S3's wire protocol (routing, XML, SigV4 and its `aws-chunked`
//! streaming bodies); [`store`] is Sluice's own storage over the bucket
//! directories, and [`service`] maps one onto the other. Knows nothing of
//! Firehose: the server hands it every request that is not a Firehose call.

pub mod service;
pub mod store;
mod unsigned;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::service::S3ServiceBuilder;
use s3s::{S3ErrorCode, S3Result};

use s3s::service::S3Service;
pub use s3s::{Body, HttpRequest, HttpResponse};

/// The largest XML request body (DeleteObjects, CompleteMultipartUpload): the
/// server's request body limit.
pub const XML_BODY_BYTES_MAX: usize = 8 << 20;

/// How the S3 API is set up.
pub struct S3ApiOptions {
    /// The buckets' root directory.
    pub root: PathBuf,
    /// Where writes are staged (on the same file system as `root`).
    pub tmp: PathBuf,
    /// The region GetBucketLocation answers.
    pub region: String,
    /// `(access key id, secret)` of the keys that may use the S3 API; with none,
    /// requests are not verified (the server then listens on loopback only).
    pub keys: Vec<(String, String)>,
}

/// The S3 API, ready to answer requests.
pub struct S3Api {
    service: S3Service,
    /// Whether signatures are verified (keys are configured).
    verified: bool,
}

impl S3Api {
    /// Answers one request.
    pub async fn call(&self, request: HttpRequest) -> Result<HttpResponse, s3s::HttpError> {
        let request = if self.verified { request } else { unsigned::strip_signature(request) };
        self.service.call(request).await
    }
}

/// Builds the API.
pub fn build(options: S3ApiOptions) -> S3Api {
    let verified = !options.keys.is_empty();
    let buckets = Arc::new(store::Buckets::new(options.root, options.tmp));
    let mut builder = S3ServiceBuilder::new(service::LocalS3::new(buckets, options.region));
    let mut config = s3s::config::S3Config::default();
    config.xml_max_body_size = XML_BODY_BYTES_MAX;
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(config))));
    builder.set_host(LocalhostBuckets);
    if !options.keys.is_empty() {
        let keys: HashMap<String, String> = options.keys.into_iter().collect();
        builder.set_auth(Keys(keys));
        builder.set_access(SignedOnly);
    }
    S3Api { service: builder.build(), verified }
}

/// Access keys and their secrets.
struct Keys(HashMap<String, String>);

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.get(access_key) {
            Some(secret) => Ok(SecretKey::from(secret.as_str())),
            None => Err(s3s::S3Error::with_message(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )),
        }
    }
}

/// With keys, every request must be signed by one.
struct SignedOnly;

#[async_trait::async_trait]
impl S3Access for SignedOnly {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied")),
        }
    }
}

/// Virtual-hosted requests as `BUCKET.localhost[:PORT]`; any other host is path-style.
struct LocalhostBuckets;

impl S3Host for LocalhostBuckets {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(']') || !name.contains(':') =>
            {
                name
            }
            _ => host,
        };
        match name.strip_suffix(".localhost") {
            Some(bucket) if !bucket.is_empty() => Ok(VirtualHost::new("localhost").with_bucket(bucket)),
            _ => Ok(VirtualHost::new(name)),
        }
    }
}
