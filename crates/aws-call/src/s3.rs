//! Where an S3 bucket lives (an S3-compatible service or AWS S3 itself) and an
//! object_store client builder for it: what the S3 delivery lanes and Iceberg
//! tables at `s3://` locations both reach buckets with.

use object_store::aws::AmazonS3Builder;
use serde::{Deserialize, Serialize};

/// One bucket's place, validated.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Place {
    /// The service's URL; `None`: AWS S3 itself (for deliveries: a local directory,
    /// which the server decides before it asks for a client).
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: String,
    /// Path-style addressing (most S3-compatible servers).
    pub path_style: bool,
    /// `(access key id, secret)`; `None`: the `AWS_*` environment variables.
    pub credentials: Option<(String, String)>,
}

impl S3Place {
    /// A client builder for `bucket` at this place.
    pub fn client_builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut builder = AmazonS3Builder::from_env()
            .with_region(&self.region)
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(!self.path_style);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some((id, secret)) = &self.credentials {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        builder
    }
}

impl std::fmt::Debug for S3Place {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Place")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}
