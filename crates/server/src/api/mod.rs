//! The HTTP edge: one `POST /` route for the Firehose API (AWS JSON 1.1), plus
//! `GET /health`, `GET /metrics` and the test controls under `/_sluice/`; every
//! other request goes to the S3 API over the local buckets (`s3`). It reads the body within its limit, parses it
//! into a typed [`Operation`], dispatches to the operation's handler (one file
//! each), and turns the result or [`ApiError`] into the response. Handlers never see
//! headers or JSON; the error-to-status mapping lives in `sluice_protocol`.

mod admin;
mod create_delivery_stream;
pub mod declared;
mod delete_delivery_stream;
mod describe_delivery_stream;
mod ingest;
mod list_delivery_streams;
mod list_tags_for_delivery_stream;
mod put_record;
mod put_record_batch;
mod s3;
mod start_delivery_stream_encryption;
mod stop_delivery_stream_encryption;
mod tag_delivery_stream;
mod untag_delivery_stream;
mod update_destination;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use sluice_protocol::limits::request_body_limit;
use sluice_protocol::{ApiError, ErrorCode, Operation, ParseOptions};

use crate::catalog::{Catalog, CatalogError, Lifecycle, StreamDefinition, StreamRecord};
use crate::config::Config;
use crate::keys::KeyRegistry;
use crate::log::{LogError, RecordLog};
use crate::metrics::Metrics;

/// Everything a handler may use.
pub struct AppState {
    /// Validated configuration.
    pub config: Config,
    /// Stream definitions.
    pub catalog: Arc<Catalog>,
    /// Where records go.
    pub log: Arc<dyn RecordLog>,
    /// Encryption keys.
    pub keys: Arc<KeyRegistry>,
    /// Metrics.
    pub metrics: Metrics,
    /// Request body bytes held in memory at once, in KiB permits (see `limits`).
    pub body_kib_in_flight: tokio::sync::Semaphore,
    /// Per-stream throughput limits.
    pub throttle: crate::throttle::Throttle,
    /// Whether the log's disk is full.
    pub disk: crate::resources::DiskState,
    /// This data directory's installation id (see `installation`), mixed into
    /// batch uuids so that two installations never name an object alike.
    pub installation_id: uuid::Uuid,
    /// Flushes asked for through `/_sluice/flush`, and what lanes reported.
    pub flushes: Arc<crate::delivery::flush::FlushBoard>,
    /// The Iceberg catalog, opened on first use (see [`AppState::iceberg`]).
    pub iceberg: tokio::sync::OnceCell<Arc<sluice_iceberg::Tables>>,
}

/// Request bodies held in memory at once, across all connections. With the 8 MiB
/// body limit this admits eight full-size batches, or hundreds of ordinary puts, and
/// keeps resident memory bounded however many clients connect: a request waits for
/// room before its body is read. Part of the 256 MiB resident-memory budget.
pub const BODY_BYTES_IN_FLIGHT_MAX: usize = 64 << 20;

/// Facts about the request that handlers need, taken from headers at the edge.
pub(crate) struct RequestContext {
    /// From the SigV4 credential scope, else the configured default.
    pub(crate) region: String,
    /// The access key id the request was signed with, if it was.
    pub(crate) access_key_id: Option<String>,
    /// Unix milliseconds when the request arrived.
    pub(crate) now_ms: u64,
}

/// A handler's successful answer: the JSON body.
pub(crate) type Reply = Result<Vec<u8>, ApiError>;

pub(crate) fn ok<T: Serialize>(output: &T) -> Reply {
    Ok(serde_json::to_vec(output).expect("outputs always serialise"))
}

/// The router of the whole server.
pub fn router(state: Arc<AppState>) -> Router {
    let s3 = s3::build(&state.config);
    Router::new()
        .route("/", post(firehose))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/_sluice/flush", post(admin::flush))
        .route("/_sluice/state", axum::routing::delete(admin::reset))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
        // Whatever is not Firehose's or Sluice's own is S3's (see `s3`).
        .layer(axum::middleware::from_fn_with_state(s3, s3::dispatch))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl AppState {
    /// The Iceberg catalog of `[iceberg]`, opened once (a failed open is tried again
    /// at the next use).
    pub async fn iceberg(&self) -> Result<Arc<sluice_iceberg::Tables>, sluice_iceberg::IcebergError> {
        let Some(config) = &self.config.iceberg else {
            return Err(sluice_iceberg::IcebergError::Catalog(
                "no Iceberg catalog is configured: set [iceberg] uri in Sluice's configuration".into(),
            ));
        };
        self.iceberg
            .get_or_try_init(|| async { sluice_iceberg::Tables::open(config).await.map(Arc::new) })
            .await
            .cloned()
    }

    pub(crate) fn arn(&self, region: &str, name: &str) -> String {
        format!("arn:aws:firehose:{region}:{}:deliverystream/{name}", self.config.account_id)
    }

    /// The stream, or Firehose's `ResourceNotFoundException`.
    pub(crate) fn stream(&self, ctx: &RequestContext, name: &str) -> Result<Arc<StreamRecord>, ApiError> {
        self.catalog.get(&ctx.region, name).ok_or_else(|| ApiError::stream_not_found(name, &self.config.account_id))
    }

    /// Changes one stream: `change` edits a copy, which replaces the stream only if
    /// it returns `Ok` and the catalog is saved. `ResourceNotFoundException` if absent.
    /// The changed definition is then also kept beside the stream's log.
    pub(crate) async fn update_stream(
        &self,
        ctx: &RequestContext,
        name: &str,
        change: impl Fn(&mut StreamRecord) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let updated = self
            .update_catalog(|catalog| {
                let key = (ctx.region.clone(), name.to_string());
                let current = catalog
                    .streams
                    .get(&key)
                    .ok_or_else(|| ApiError::stream_not_found(name, &self.config.account_id))?;
                let mut stream = (**current).clone();
                change(&mut stream)?;
                stream.revision += 1;
                let stream = Arc::new(stream);
                catalog.streams.insert(key, stream.clone());
                Ok(stream)
            })
            .await?;
        if let Err(error) = self.keep_definition(&updated, Lifecycle::Active).await {
            // The catalog is the authority while it names the stream; the copy is
            // brought up to date at the next start.
            tracing::warn!(stream = %updated.name, %error, "Could not update the definition kept beside the stream's log.");
        }
        Ok(())
    }

    /// Writes a stream's definition beside its log.
    pub(crate) async fn keep_definition(&self, stream: &StreamRecord, lifecycle: Lifecycle) -> Result<(), LogError> {
        self.log.define_stream(stream.id, StreamDefinition::encode(stream, lifecycle)).await
    }

    /// Applies a catalog change (see [`Catalog::update`]: `change` may run more than
    /// once when other nodes change the same stream meanwhile).
    pub(crate) async fn update_catalog<R>(
        &self,
        change: impl Fn(&mut crate::catalog::CatalogState) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        self.catalog.update(change).await
    }
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> ApiError {
        tracing::error!(%error, "Catalog write failed.");
        ApiError::new(ErrorCode::ServiceUnavailableException, "The catalog could not be saved; try again later.")
    }
}

/// What a put refused for lack of disk space is told.
pub(crate) const DISK_FULL_MESSAGE: &str =
    "Records could not be stored durably: the disk holding Sluice's data is full (disk full); try again later.";

/// Maps a log failure to what the client sees. Internal details are logged, not sent.
pub(crate) fn log_failure(error: LogError) -> ApiError {
    match error {
        LogError::Key { key_ref, reason } => crate::api::kms_error(&key_ref, &reason),
        LogError::NoSpace(detail) => {
            tracing::warn!(%detail, "Refused a write: the disk is full.");
            ApiError::new(ErrorCode::ServiceUnavailableException, DISK_FULL_MESSAGE)
        }
        LogError::StreamUnavailable(reason) => {
            tracing::warn!(%reason, "Refused a write to a stream whose log could not be recovered.");
            ApiError::new(
                ErrorCode::ServiceUnavailableException,
                "The stream's stored records could not be recovered when Sluice started; it takes no records until an operator fixes it (see the server's log).",
            )
        }
        other => {
            tracing::error!(error = %other, "Record log refused a write.");
            ApiError::new(
                ErrorCode::ServiceUnavailableException,
                "Records could not be stored durably; try again later.",
            )
        }
    }
}

/// `InvalidKMSResourceException` for a key that cannot be used.
/// Refuses a MetadataExtraction query that jaq cannot compile, at creation and
/// update rather than on every batch.
/// In cluster mode, delivery moves between nodes: a bucket in the local directory
/// is only the same bucket on every node when the nodes share it
/// (`[jetstream] shared_buckets_dir`). Without that, a stream writing to a local
/// bucket would scatter its objects over the nodes' disks, so it is refused.
pub(crate) fn check_buckets_shared(
    state: &AppState,
    destination: &sluice_protocol::destination::Destination,
) -> Result<(), ApiError> {
    let Some(cluster) = &state.config.cluster else { return Ok(()) };
    if cluster.shared_buckets_dir.is_some() {
        return Ok(());
    }
    match destination.buckets().into_iter().find(|b| state.config.s3.target(b).endpoint.is_none()) {
        None => Ok(()),
        Some(bucket) => Err(ApiError::new(
            ErrorCode::InvalidArgumentException,
            format!(
                "Bucket {bucket} would be a local directory on whichever node delivers: in cluster mode, configure an S3-compatible endpoint for it ([s3] or [s3.buckets.{bucket}]) or a bucket directory every node shares ([jetstream] shared_buckets_dir)."
            ),
        )),
    }
}

/// A converting destination's table must exist and be convertible to, with the
/// stream's (de)serializer settings, as on Firehose (which asks Glue at create).
pub(crate) async fn check_conversion(
    state: &AppState,
    destination: &sluice_protocol::destination::Destination,
    region: &str,
) -> Result<(), ApiError> {
    let Some(settings) = destination.conversion() else { return Ok(()) };
    crate::tables::setup(&state.config.glue, &settings, region)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgumentException, e.to_string()))
}

/// An Iceberg destination's table must exist in the configured catalog, with a
/// layout Sluice writes.
pub(crate) async fn check_iceberg(
    state: &AppState,
    destination: &sluice_protocol::destination::Destination,
) -> Result<(), ApiError> {
    let Some(settings) = destination.iceberg_settings() else { return Ok(()) };
    let invalid = |e: sluice_iceberg::IcebergError| ApiError::new(ErrorCode::InvalidArgumentException, e.to_string());
    let tables = state.iceberg().await.map_err(invalid)?;
    for (database, table) in &settings.tables {
        tables.check(database, table).await.map_err(invalid)?;
    }
    Ok(())
}

pub(crate) fn check_queries(destination: &sluice_protocol::destination::Destination) -> Result<(), ApiError> {
    let query = destination.processing().and_then(|chain| chain.metadata_query);
    match query.map(|q| sluice_processing::jq::check(&q)) {
        Some(Err(message)) => Err(ApiError::new(ErrorCode::InvalidArgumentException, message)),
        _ => Ok(()),
    }
}

pub(crate) fn kms_error(key_ref: &str, reason: &sluice_wal::KeyError) -> ApiError {
    let (code, message) = match reason {
        sluice_wal::KeyError::Disabled => ("KMS.DisabledException", format!("KMS key {key_ref} is disabled.")),
        _ => ("KMS.NotFoundException", format!("KMS key {key_ref} was not found.")),
    };
    ApiError::new(ErrorCode::InvalidKMSResourceException, message).with_detail_code(code)
}

/// The access key id and the region in `Authorization: AWS4-HMAC-SHA256
/// Credential=AKID/DATE/REGION/SERVICE/aws4_request, ...`.
fn credential_from_authorization(value: &str) -> (Option<&str>, Option<&str>) {
    let Some(credential) = value.split("Credential=").nth(1) else { return (None, None) };
    let scope = credential.split([',', ' ']).next().unwrap_or("");
    let mut parts = scope.split('/');
    let access_key_id = parts.next().filter(|id| !id.is_empty());
    let region = parts
        .nth(1)
        .filter(|region| !region.is_empty() && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    (access_key_id, region)
}

async fn firehose(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    // Taken apart rather than extracted, which would copy the header map.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let request_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    let (body_bytes_max, charge_factor) = request_body_limit(target);
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        let e = ApiError::new(
            ErrorCode::SerializationException,
            format!("The request body exceeds the limit of {body_bytes_max} bytes."),
        );
        respond(&request_id, StatusCode::PAYLOAD_TOO_LARGE, Some(e.code.as_str()), e.body())
    };
    if declared.is_some_and(|n| n > body_bytes_max) {
        return too_large();
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (access_key_id, region) = credential_from_authorization(authorization);
    let ctx = RequestContext {
        region: region.unwrap_or(&state.config.region).to_string(),
        access_key_id: access_key_id.map(str::to_string),
        now_ms: now_ms(),
    };
    // The headers are listed for the verifier once, and only when it will run.
    let (keys, regions) = (&state.config.auth_keys, &state.config.auth_regions);
    let mut signed = crate::auth::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: if keys.is_empty() {
            Vec::new()
        } else {
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect()
        },
        body: &[],
    };
    let refuse = |e: ApiError| {
        let status = StatusCode::from_u16(e.code.status()).expect("valid status");
        respond(&request_id, status, Some(e.code.as_str()), e.body())
    };
    // Unsigned, unknown or stale requests are refused before their bodies are
    // waited for and held.
    if !keys.is_empty() {
        if let Err(e) = crate::auth::verify_before_body(&signed, keys, regions, ctx.now_ms) {
            return refuse(e);
        }
    }
    // A body without a length is charged the maximum: it may grow that large.
    let charge_kib = (declared.unwrap_or(body_bytes_max) * charge_factor).div_ceil(1024).max(1) as u32;
    let Ok(_permit) = state.body_kib_in_flight.acquire_many(charge_kib).await else {
        unreachable!("the semaphore is never closed");
    };
    let body_timeout = state.config.connections.body_timeout;
    let bytes = match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, body_bytes_max)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            let message = format!("The request body did not arrive within {} seconds.", body_timeout.as_secs());
            let mut response = refuse(ApiError::new(ErrorCode::RequestTimeoutException, message));
            // The rest of the body may still be on its way: the connection
            // cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let key = if keys.is_empty() {
        None
    } else {
        signed.body = &bytes;
        match crate::auth::verify(&signed, keys, regions, ctx.now_ms) {
            Ok(key) => Some(key),
            Err(e) => return refuse(e),
        }
    };
    let options = ParseOptions { allow_http_endpoints: state.config.http.allow_http };
    let parsed = Operation::parse_with(target, &bytes, &options).and_then(|operation| match key {
        Some(key) => {
            let resource = operation.stream_name().map_or_else(
                || format!("arn:aws:firehose:{}:{}:deliverystream/*", ctx.region, state.config.account_id),
                |name| state.arn(&ctx.region, name),
            );
            crate::auth::authorize(key, operation.name(), operation.stream_name(), &resource).map(|()| operation)
        }
        None => Ok(operation),
    });
    // The decoded records are all that is needed from here on; the encoded body
    // (a third larger) is freed before waiting on the log.
    drop(bytes);
    let result = match parsed {
        Ok(operation) => dispatch(&state, &ctx, operation, started).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(body) => respond(&request_id, StatusCode::OK, None, body),
        Err(e) => {
            let status = StatusCode::from_u16(e.code.status()).expect("valid status");
            respond(&request_id, status, Some(e.code.as_str()), e.body())
        }
    }
}

async fn dispatch(state: &AppState, ctx: &RequestContext, operation: Operation, started: Instant) -> Reply {
    let name = operation.name();
    let stream_name = match &operation {
        Operation::DescribeDeliveryStream(i) => Some(i.name.clone()),
        Operation::UpdateDestination(i) => Some(i.name.clone()),
        _ => None,
    };
    if matches!(
        operation,
        Operation::DescribeDeliveryStream(_)
            | Operation::ListDeliveryStreams(_)
            | Operation::ListTagsForDeliveryStream(_)
            | Operation::UpdateDestination(_)
            | Operation::TagDeliveryStream(_)
            | Operation::UntagDeliveryStream(_)
            | Operation::DeleteDeliveryStream(_)
            | Operation::StartDeliveryStreamEncryption(_)
            | Operation::StopDeliveryStreamEncryption(_)
    ) {
        // Cluster mode: answer from a view that includes what was done through
        // other nodes (one request to JetStream; nothing for the embedded log).
        state.catalog.catch_up().await;
    }
    let reply = match operation {
        Operation::PutRecord(input) => return put_record::handle(state, ctx, input, started).await,
        Operation::PutRecordBatch(input) => return put_record_batch::handle(state, ctx, input, started).await,
        Operation::CreateDeliveryStream(input) => create_delivery_stream::handle(state, ctx, input).await,
        Operation::DeleteDeliveryStream(input) => delete_delivery_stream::handle(state, ctx, input).await,
        Operation::DescribeDeliveryStream(input) => describe_delivery_stream::handle(state, ctx, input),
        Operation::ListDeliveryStreams(input) => list_delivery_streams::handle(state, ctx, input),
        Operation::ListTagsForDeliveryStream(input) => list_tags_for_delivery_stream::handle(state, ctx, input),
        Operation::StartDeliveryStreamEncryption(input) => {
            start_delivery_stream_encryption::handle(state, ctx, input).await
        }
        Operation::StopDeliveryStreamEncryption(input) => {
            stop_delivery_stream_encryption::handle(state, ctx, input).await
        }
        Operation::TagDeliveryStream(input) => tag_delivery_stream::handle(state, ctx, input).await,
        Operation::UntagDeliveryStream(input) => untag_delivery_stream::handle(state, ctx, input).await,
        Operation::UpdateDestination(input) => update_destination::handle(state, ctx, input).await,
    };
    state.metrics.control_plane(name, stream_name.as_deref(), started.elapsed().as_secs_f64() * 1000.0);
    reply
}

fn respond(request_id: &str, status: StatusCode, error_type: Option<&str>, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
    headers.insert("x-amzn-RequestId", HeaderValue::from_str(request_id).expect("uuid is a valid header"));
    if let Some(kind) = error_type {
        headers.insert("X-Amzn-ErrorType", HeaderValue::from_str(kind).expect("error types are ASCII"));
    }
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let refused = |status: &str, reason: String| {
        let body = serde_json::to_vec(&serde_json::json!({"status": status, "reason": reason})).expect("json");
        respond(&request_id, StatusCode::SERVICE_UNAVAILABLE, None, body)
    };
    if let Err(reason) = state.log.health() {
        return refused("failed", reason);
    }
    if let Some(since_ms) = state.disk.full_since_ms() {
        let seconds = now_ms().saturating_sub(since_ms) / 1000;
        let reason = format!("disk full: puts are refused since {seconds} s ago until the data directory's filesystem has room (delivery frees what it delivers)");
        return refused("disk full", reason);
    }
    respond(&request_id, StatusCode::OK, None, br#"{"status":"ok"}"#.to_vec())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
        .headers_mut()
        .insert("x-amzn-RequestId", HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("uuid"));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_id_and_region_are_read_from_the_credential_scope() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-west-2/firehose/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";
        assert_eq!(super::credential_from_authorization(auth), (Some("AKIDEXAMPLE"), Some("us-west-2")));
        assert_eq!(super::credential_from_authorization("Bearer x"), (None, None));
        assert_eq!(super::credential_from_authorization("Credential=A/B//firehose"), (Some("A"), None));
    }
}
