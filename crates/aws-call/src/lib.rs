//! Outgoing calls to AWS APIs: SigV4 signing of a request (Lambda invocations,
//! and every JSON 1.1 call), and a caller of AWS JSON 1.1 APIs (`POST /` with
//! `X-Amz-Target: <prefix>.<Operation>`), which the Kinesis source (GetRecords
//! and its kin) and the Glue schema lookups (GetTable) use. Sits outside the
//! record's path: these are the calls Sluice makes to the services it reads from.
//! Also where an S3 bucket lives and a client for it ([`S3Place`]), which S3
//! delivery and Iceberg tables in buckets share.

mod s3;

pub use s3::S3Place;

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// The access key id and secret calls are signed with when none is configured:
/// emulators (kinesalite, moto, LocalStack) take it and AWS refuses it, while
/// some emulators refuse unsigned calls.
pub const PLACEHOLDER_KEY: &str = "sluice-no-credentials";

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The service answered with an error.
    #[error("{kind} (HTTP {status}): {message}")]
    Service {
        /// Its `__type`, without a namespace (`ResourceNotFoundException`).
        kind: String,
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The service could not be reached, or answered something unreadable.
    #[error("{0}")]
    Network(String),
}

/// The SigV4 headers (`authorization`, `x-amz-date`, ...) for a request whose
/// signed headers are `headers`.
pub fn sign(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    service: &str,
    region: &str,
    (id, secret): (&str, &str),
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let fail = |e: &dyn std::fmt::Display| format!("signing the call: {e}");
    let identity = aws_credential_types::Credentials::new(id, secret, None, None, "sluice-config").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let signable =
        SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body)).map_err(|e| fail(&e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    Ok(instructions.headers().map(|(n, v)| (n.to_string(), v.to_string())).collect())
}

/// Where and how to call one AWS JSON 1.1 API.
#[derive(Clone)]
pub struct JsonApiConfig {
    /// The endpoint, e.g. `https://glue.us-east-1.amazonaws.com`.
    pub endpoint: String,
    /// The signing region.
    pub region: String,
    /// `(access key id, secret access key)`; `None`: [`PLACEHOLDER_KEY`].
    pub credentials: Option<(String, String)>,
    /// How long one call may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for JsonApiConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonApiConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

/// A caller of one AWS JSON 1.1 API.
#[derive(Clone)]
pub struct JsonApi {
    http: reqwest::Client,
    config: JsonApiConfig,
    /// The SigV4 service name (`kinesis`, `glue`).
    service: &'static str,
    /// The `X-Amz-Target` prefix (`Kinesis_20131202`, `AWSGlue`).
    target_prefix: &'static str,
}

impl JsonApi {
    /// A caller of `service`'s API. Callers share one HTTP client (its connection
    /// pool, and the TLS roots it loads once): a caller made for each call (a Glue
    /// lookup per batch) costs no new connections or file reads.
    pub fn new(
        config: JsonApiConfig,
        service: &'static str,
        target_prefix: &'static str,
    ) -> Result<JsonApi, CallError> {
        static SHARED: std::sync::OnceLock<Result<reqwest::Client, String>> = std::sync::OnceLock::new();
        let http = SHARED.get_or_init(|| reqwest::Client::builder().build().map_err(|e| e.to_string()));
        let http = http.clone().map_err(CallError::Network)?;
        Ok(JsonApi { http, config, service, target_prefix })
    }

    /// The configuration calls are made with.
    pub fn config(&self) -> &JsonApiConfig {
        &self.config
    }

    /// Calls `operation` with `input`; the output object (`Null` for an empty body).
    pub async fn call(&self, operation: &str, input: &Value) -> Result<Value, CallError> {
        let body = serde_json::to_vec(input).expect("JSON serialises");
        let url = format!("{}/", self.config.endpoint.trim_end_matches('/'));
        let target = format!("{}.{operation}", self.target_prefix);
        let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target.as_str())];
        let mut request = self.http.post(&url).timeout(self.config.timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let key = match &self.config.credentials {
            Some((id, secret)) => (id.as_str(), secret.as_str()),
            None => (PLACEHOLDER_KEY, PLACEHOLDER_KEY),
        };
        for (name, value) in
            sign("POST", &url, &headers, &body, self.service, &self.config.region, key).map_err(CallError::Network)?
        {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|e| CallError::Network(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| CallError::Network(e.to_string()))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                CallError::Network(format!("HTTP {status}, unreadable body ({e}): {}", String::from_utf8_lossy(&bytes)))
            })?
        };
        if status == 200 {
            return Ok(value);
        }
        let kind = value.get("__type").and_then(Value::as_str).unwrap_or("");
        let kind = kind.rsplit_once('#').map_or(kind, |(_, k)| k).to_string();
        let message = value
            .get("message")
            .or_else(|| value.get("Message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Err(CallError::Service { kind, status, message })
    }
}
