//! Test controls on the HTTP edge, beside the Firehose API: `POST /_sluice/flush`
//! delivers every buffered batch now and answers once they are delivered or have
//! failed; `DELETE /_sluice/state` removes every stream and its undelivered records
//! (`?buckets=true`: the local buckets too), so each test starts clean. With
//! `[[auth.keys]]` they are refused (403) unless `[admin] enabled = true`, and then
//! need a request signed by a key whose `operations` allow `Flush` / `ResetState`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use sluice_protocol::{ApiError, ErrorCode};

use super::{now_ms, respond, AppState, RequestContext};
use crate::delivery::flush::LaneStatus;

/// The longest a flush waits for its batches, unless `?wait_s=` says otherwise.
const FLUSH_WAIT_DEFAULT: Duration = Duration::from_secs(60);
/// The longest `?wait_s=` may ask for.
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(900);
/// How long a reset waits for the removed streams' lanes to stop before it
/// removes the buckets they may still be writing to.
const RESET_LANES_WAIT: Duration = Duration::from_secs(10);
/// A control request has no body to speak of.
const BODY_BYTES_MAX: usize = 4096;

/// `POST /_sluice/flush`'s query.
#[derive(serde::Deserialize)]
struct FlushQuery {
    stream: Option<String>,
    wait_s: Option<u64>,
}

/// `DELETE /_sluice/state`'s query.
#[derive(serde::Deserialize)]
struct ResetQuery {
    #[serde(default)]
    buckets: bool,
}

/// The request's query as `Q`, or InvalidArgumentException.
fn query<Q: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<Q, ApiError> {
    axum::extract::Query::try_from_uri(uri)
        .map(|axum::extract::Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgumentException, e.body_text()))
}

fn json(request_id: &str, status: StatusCode, body: serde_json::Value) -> Response {
    respond(request_id, status, None, serde_json::to_vec(&body).expect("json"))
}

fn refuse(request_id: &str, error: &ApiError) -> Response {
    // Not Firehose's API: a caller who may not use a control gets HTTP's 403,
    // not the 400 Firehose answers AccessDeniedException with.
    let status = match error.code {
        ErrorCode::AccessDeniedException => StatusCode::FORBIDDEN,
        code => StatusCode::from_u16(code.status()).expect("valid status"),
    };
    respond(request_id, status, Some(error.code.as_str()), error.body())
}

/// Checks who may use the control `operation`; the request's region on success.
async fn admit(state: &AppState, request: axum::extract::Request, operation: &str) -> Result<String, ApiError> {
    let (parts, body) = request.into_parts();
    let keys = &state.config.auth_keys;
    if keys.is_empty() {
        return Ok(state.config.region.clone());
    }
    if !state.config.admin_enabled {
        return Err(ApiError::new(
            ErrorCode::AccessDeniedException,
            "The test controls are off on a server with [[auth.keys]]: set [admin] enabled = true to allow them to keys whose operations include them.",
        ));
    }
    let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX).await.map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidArgumentException,
            format!("A control request has no body over {BODY_BYTES_MAX} bytes."),
        )
    })?;
    let signed = crate::auth::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect(),
        body: &bytes,
    };
    let key = crate::auth::verify(&signed, keys, &state.config.auth_regions, now_ms())?;
    let region = super::credential_from_authorization(
        parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or(""),
    )
    .1
    .unwrap_or(&state.config.region)
    .to_string();
    let resource = format!("arn:aws:firehose:{region}:{}:deliverystream/*", state.config.account_id);
    crate::auth::authorize(key, operation, None, &resource)?;
    Ok(region)
}

/// `POST /_sluice/flush[?stream=NAME][&wait_s=N]`.
pub(super) async fn flush(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let asked: Result<FlushQuery, ApiError> = query(request.uri());
    let region = match admit(&state, request, "Flush").await {
        Ok(region) => region,
        Err(e) => return refuse(&request_id, &e),
    };
    let asked = match asked {
        Ok(asked) if asked.wait_s.is_none_or(|s| Duration::from_secs(s) <= FLUSH_WAIT_MAX) => asked,
        Ok(_) => {
            let e = ApiError::new(ErrorCode::InvalidArgumentException, "wait_s must be a number of seconds up to 900.");
            return refuse(&request_id, &e);
        }
        Err(e) => return refuse(&request_id, &e),
    };
    let wait = asked.wait_s.map_or(FLUSH_WAIT_DEFAULT, Duration::from_secs);
    let streams = match asked.stream {
        None => None,
        Some(name) => {
            let ctx = RequestContext { region: region.clone(), access_key_id: None, now_ms: now_ms() };
            match state.stream(&ctx, &name) {
                Ok(stream) => Some(vec![stream.id]),
                Err(e) => return refuse(&request_id, &e),
            }
        }
    };
    let now = now_ms();
    let catalog = state.catalog.snapshot();
    let active: Vec<u64> = catalog.streams.values().filter(|s| s.status(now) == "ACTIVE").map(|s| s.id).collect();
    let outcomes = state.flushes.flush(streams.as_deref(), &active, wait).await;
    let names: BTreeMap<u64, (String, String)> =
        catalog.streams.values().map(|s| (s.id, (s.name.clone(), s.region.clone()))).collect();
    let mut by_stream: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    for outcome in &outcomes {
        by_stream.entry(outcome.stream_id).or_default().push(serde_json::to_value(outcome).expect("json"));
    }
    let done = outcomes.iter().all(|o| o.status == LaneStatus::Delivered);
    let streams: Vec<serde_json::Value> = by_stream
        .into_iter()
        .map(|(id, lanes)| {
            let (name, region) = names.get(&id).cloned().unwrap_or_default();
            serde_json::json!({"DeliveryStreamName": name, "Region": region, "Lanes": lanes})
        })
        .collect();
    json(&request_id, StatusCode::OK, serde_json::json!({"Delivered": done, "Streams": streams}))
}

/// `DELETE /_sluice/state[?buckets=true]`.
pub(super) async fn reset(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let asked: Result<ResetQuery, ApiError> = query(request.uri());
    if let Err(e) = admit(&state, request, "ResetState").await {
        return refuse(&request_id, &e);
    }
    let asked = match asked {
        Ok(asked) => asked,
        Err(e) => return refuse(&request_id, &e),
    };
    state.catalog.catch_up().await;
    let streams: Vec<_> = state.catalog.snapshot().streams.values().cloned().collect();
    let mut removed = Vec::new();
    for stream in &streams {
        if let Err(e) = super::delete_delivery_stream::remove(&state, stream).await {
            return refuse(&request_id, &e);
        }
        removed.push(serde_json::json!({"DeliveryStreamName": stream.name, "Region": stream.region}));
    }
    let ids: Vec<u64> = streams.iter().map(|s| s.id).collect();
    let deadline = tokio::time::Instant::now() + RESET_LANES_WAIT;
    while state.flushes.running(&ids) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buckets = Vec::new();
    if asked.buckets {
        if let Some(root) = state.config.local_buckets_root() {
            match remove_buckets(&root) {
                Ok(names) => buckets = names,
                Err(error) => {
                    let message = format!("Removing the buckets under {}: {error}", root.display());
                    return refuse(&request_id, &ApiError::new(ErrorCode::ServiceUnavailableException, message));
                }
            }
        }
    }
    tracing::info!(n_streams = removed.len(), n_buckets = buckets.len(), "Reset: removed every stream.");
    json(&request_id, StatusCode::OK, serde_json::json!({"Streams": removed, "Buckets": buckets}))
}

/// Removes every bucket directory under `root` (not the hidden temporary one).
fn remove_buckets(root: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_dir() {
            continue;
        }
        std::fs::remove_dir_all(entry.path())?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}
