//! The S3 API on the Firehose port: every request that is not a Firehose call, a
//! health or metrics probe, or a test control is S3's, and goes to `sluice-s3api`
//! over the local-directory buckets (the ones delivery writes). Buckets delivered
//! to an S3-compatible service (`[s3] endpoint`) are that service's, not served here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sluice_s3api::{Body, S3ApiOptions};

use crate::config::Config;

/// The S3 service, if there are local buckets to serve.
pub(crate) type S3Api = Option<Arc<sluice_s3api::S3Api>>;

/// Builds the S3 API over the local buckets (none in cluster mode without a
/// shared bucket directory). Every configured key may use it.
pub(crate) fn build(config: &Config) -> S3Api {
    config.local_buckets_root()?;
    // The directories delivery writes into, staging where it stages.
    let local = crate::delivery::store::LocalBuckets::of(config);
    let keys = config.auth_keys.iter().map(|key| (key.id.clone(), key.secret.clone())).collect();
    let options = S3ApiOptions {
        root: local.root().to_path_buf(),
        tmp: local.tmp().to_path_buf(),
        region: config.region.clone(),
        keys,
    };
    Some(Arc::new(sluice_s3api::build(options)))
}

/// Whether a request is S3's rather than Firehose's or Sluice's own.
fn is_s3(request: &Request) -> bool {
    let path = request.uri().path();
    let headers = request.headers();
    if path.starts_with("/_sluice/") {
        return false;
    }
    if request.method() == axum::http::Method::POST && path == "/" {
        // A Firehose call names its operation; S3 posts to `/` only for a
        // virtual-hosted bucket (DeleteObjects, multipart).
        return headers.get("x-amz-target").is_none() && host_names_a_bucket(request);
    }
    if (path == "/health" || path == "/metrics") && request.method() == axum::http::Method::GET {
        // Probes are unsigned; a signed GET of these paths lists a bucket of that name.
        return headers.contains_key(axum::http::header::AUTHORIZATION)
            || request.uri().query().is_some_and(|q| q.contains("X-Amz-Signature"));
    }
    true
}

fn host_names_a_bucket(request: &Request) -> bool {
    let host = request.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.strip_suffix(".localhost").is_some_and(|bucket| !bucket.is_empty())
}

/// Middleware in front of the router: hands S3 requests to the S3 API.
pub(crate) async fn dispatch(State(s3): State<S3Api>, request: Request, next: Next) -> Response {
    let Some(s3) = s3.filter(|_| is_s3(&request)) else { return next.run(request).await };
    let request = request.map(Body::http_body_unsync);
    match s3.call(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(error) => {
            tracing::error!(?error, "The S3 API failed to answer a request.");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
