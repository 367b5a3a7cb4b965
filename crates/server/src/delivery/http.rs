//! The HTTP endpoint destination's wire protocol (version 1.0): one POST per
//! request of at most 10,000 records to the configured URL, unchanged, with
//! Firehose's headers and JSON body, and the rules for what counts as delivered:
//! HTTP 200 with a JSON body echoing the request id. Anything else is a failure the
//! lane retries (or, for 413, gives up on at once).

use std::time::Duration;

use serde::Deserialize;
use sluice_protocol::destination::HttpSettings;

use crate::config::HttpConfig;

/// Records per request, as Firehose sends at most.
pub(super) const REQUEST_RECORDS_MAX: usize = 10_000;
/// Largest response body read: Firehose's limit.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Why a request did not deliver its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HttpFailure {
    /// The error record's `errorCode` (`HttpEndpoint.*`).
    pub(super) code: &'static str,
    /// The error record's `errorMessage`: the endpoint's own `errorMessage` when it
    /// sent one.
    pub(super) message: String,
    /// 413: the endpoint will never take this request; not retried.
    pub(super) permanent: bool,
}

/// The client every HTTP endpoint lane shares.
pub(super) struct HttpSender {
    client: reqwest::Client,
    allow_http: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    request_id: String,
    #[allow(dead_code, reason = "required by the protocol, so its absence fails parsing")]
    timestamp: u64,
    #[serde(default)]
    error_message: Option<String>,
}

impl HttpSender {
    /// A client with the system's roots plus the configured CA, no redirects (as
    /// Firehose), and the configured response timeout.
    pub(super) fn new(config: &HttpConfig) -> Result<HttpSender, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(config.response_timeout_s))
            .connect_timeout(Duration::from_secs(30));
        if let Some(pem) = &config.extra_ca_pem {
            let certificate = reqwest::Certificate::from_pem(pem).map_err(|e| format!("http.ca_file: {e}"))?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(HttpSender { client, allow_http: config.allow_http })
    }

    /// Posts one request and checks the answer.
    pub(super) async fn send(
        &self,
        settings: &HttpSettings,
        source_arn: &str,
        request_id: &str,
        now_ms: u64,
        records: &[Vec<u8>],
    ) -> Result<(), HttpFailure> {
        let failure = |code, message: String| HttpFailure { code, message, permanent: false };
        if settings.url.starts_with("http://") && !self.allow_http {
            return Err(failure(
                "HttpEndpoint.InvalidEndpoint",
                "Plain-HTTP endpoints need [http] allow_http = true in Sluice's configuration.".into(),
            ));
        }
        let body = request_body(request_id, now_ms, records);
        let mut request = self
            .client
            .post(&settings.url)
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .header("X-Amz-Firehose-Request-Id", request_id)
            .header("X-Amz-Firehose-Source-Arn", source_arn)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &settings.access_key {
            request = request.header("X-Amz-Firehose-Access-Key", key);
        }
        if !settings.common_attributes.is_empty() {
            let attributes: serde_json::Map<String, serde_json::Value> = settings
                .common_attributes
                .iter()
                .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
                .collect();
            let header = serde_json::json!({ "commonAttributes": attributes }).to_string();
            request = request.header("X-Amz-Firehose-Common-Attributes", header);
        }
        let request = if settings.gzip {
            request.header(reqwest::header::CONTENT_ENCODING, "gzip").body(gzip(&body))
        } else {
            request.body(body)
        };
        let response = request.send().await.map_err(|e| {
            let code = if e.is_timeout() {
                "HttpEndpoint.RequestTimeout"
            } else if e.is_connect() {
                "HttpEndpoint.ConnectionFailed"
            } else {
                "HttpEndpoint.ConnectionReset"
            };
            failure(code, e.to_string())
        })?;
        let status = response.status().as_u16();
        let body = read_limited(response).await.map_err(|e| failure("HttpEndpoint.ResponseTooLarge", e))?;
        let parsed = serde_json::from_slice::<Response>(&body).ok();
        let endpoint_message = parsed.as_ref().and_then(|r| r.error_message.clone());
        match status {
            200 => match parsed {
                Some(r) if r.request_id == request_id => Ok(()),
                _ => Err(failure(
                    "HttpEndpoint.InvalidResponseFromDestination",
                    "The response is not JSON with the request's requestId and a timestamp.".into(),
                )),
            },
            413 => Err(HttpFailure {
                code: "HttpEndpoint.PayloadTooLarge",
                message: endpoint_message.unwrap_or_else(|| "The endpoint answered 413 Payload Too Large.".into()),
                permanent: true,
            }),
            other => Err(failure(
                "HttpEndpoint.DestinationException",
                endpoint_message.unwrap_or_else(|| format!("The endpoint answered HTTP {other}.")),
            )),
        }
    }
}

/// `{"requestId":…,"timestamp":…,"records":[{"data":"<base64>"},…]}`.
pub(super) fn request_body(request_id: &str, now_ms: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let data_bytes: usize = records.iter().map(|r| r.len() * 4 / 3 + 16).sum();
    let mut body = Vec::with_capacity(data_bytes + 96);
    body.extend_from_slice(b"{\"requestId\":");
    body.extend_from_slice(serde_json::Value::String(request_id.to_string()).to_string().as_bytes());
    body.extend_from_slice(format!(",\"timestamp\":{now_ms},\"records\":[").as_bytes());
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"data\":\"");
        body.extend_from_slice(base64_simd::STANDARD.encode_to_string(record).as_bytes());
        body.extend_from_slice(b"\"}");
    }
    body.extend_from_slice(b"]}");
    body
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > RESPONSE_BYTES_MAX {
            return Err(format!("The response body exceeds {RESPONSE_BYTES_MAX} bytes."));
        }
    }
    Ok(body)
}

/// How long to wait before the next attempt, or `None` to give up: retries go on
/// while less than `retry_duration` has passed since the first failure, and the
/// last wait is cut short so the final attempt happens when the duration ends.
pub(super) fn next_wait(since_first_failure: Duration, retry_duration: Duration, delay: Duration) -> Option<Duration> {
    if since_first_failure >= retry_duration {
        return None;
    }
    Some(delay.min(retry_duration - since_first_failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_firehose_json() {
        let body = request_body("id-1", 1_700_000_000_123, &[b"hello".to_vec(), Vec::new()]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"requestId": "id-1", "timestamp": 1_700_000_000_123u64,
                               "records": [{"data": "aGVsbG8="}, {"data": ""}]})
        );
    }

    #[test]
    fn retries_stop_when_the_duration_has_passed() {
        let s = Duration::from_secs;
        assert_eq!(next_wait(s(0), s(300), s(1)), Some(s(1)));
        assert_eq!(next_wait(s(298), s(300), s(120)), Some(s(2)), "the last wait ends with the duration");
        assert_eq!(next_wait(s(300), s(300), s(1)), None);
        assert_eq!(next_wait(s(0), s(0), s(1)), None, "DurationInSeconds 0: no retries");
    }
}
