//! `sluice-auth`: request authentication at the server's edge, before a body is
//! parsed: AWS Signature Version 4, in the `Authorization` header form every SDK
//! and the aws CLI send and in the presigned query form, checked against the
//! access keys of the `[auth]` configuration, and each key's optional policy
//! (operations and streams it may use). Pure functions over a request's parts, so
//! they can be fuzzed without a server. With no keys configured,
//! requests are not checked (allowed only on loopback, or with `--allow-anonymous`).
//!
//! The checks, in AWS's order and with its errors: a signature is present
//! (`MissingAuthenticationTokenException`), well-formed
//! (`IncompleteSignatureException`), by a known key (`UnrecognizedClientException`),
//! scoped to the `firehose` service, an allowed region and the request's date, made
//! within 5 minutes of now, and equal to the one computed here
//! (`InvalidSignatureException`).

use std::borrow::Cow;
use std::collections::BTreeSet;

use ring::{digest, hmac};
use sluice_protocol::{ApiError, ErrorCode};

/// How far a request's time may be from the server's, as AWS allows.
pub const CLOCK_SKEW_MS_MAX: u64 = 5 * 60 * 1000;

/// One access key and what it may do.
#[derive(Clone)]
pub struct AccessKey {
    /// The access key id.
    pub id: String,
    /// Its secret.
    pub secret: String,
    /// Operations it may call; empty: all.
    pub operations: BTreeSet<String>,
    /// Streams it may use; empty: all.
    pub streams: BTreeSet<String>,
    /// The signing key last derived from the secret, for one date and region.
    pub derived: SigningKeyCache,
}

/// The last signing key derived for an access key: deriving it takes four HMACs,
/// as much as checking the signature of a small put, and a client signs with the
/// same date and region all day. Shared by the key's clones.
#[derive(Clone, Default)]
pub struct SigningKeyCache(std::sync::Arc<std::sync::Mutex<Option<(String, String, hmac::Key)>>>);

impl SigningKeyCache {
    /// `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "firehose"), "aws4_request")`.
    fn get(&self, secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
        let mut cached = self.0.lock().expect("signing key cache");
        if let Some((d, r, key)) = cached.as_ref() {
            if d == date && r == region && service == "firehose" {
                return key.clone();
            }
        }
        let mut derived =
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes()), date.as_bytes());
        for part in [region, service, "aws4_request"] {
            derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), part.as_bytes());
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        // Only the service requests are checked for is worth keeping.
        if service == "firehose" {
            *cached = Some((date.to_string(), region.to_string(), key.clone()));
        }
        key
    }
}

impl std::fmt::Debug for AccessKey {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("operations", &self.operations)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// A request as the signature covers it.
#[derive(Clone)]
pub struct SignedRequest<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// Header names (any case) and values.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The body.
    pub body: &'a [u8],
}

fn error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn incomplete(message: &str) -> ApiError {
    error(ErrorCode::IncompleteSignatureException, message)
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, ApiError> {
    let Some(fields) = value.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(incomplete("Authorization header requires the AWS4-HMAC-SHA256 algorithm."));
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in fields.split(',') {
        match field.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.",
        ));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = parts[..] else {
        return Err(incomplete("Credential must have the form <key>/<date>/<region>/<service>/aws4_request."));
    };
    Ok(Authorization { key_id, date, region, service, signed_headers: signed.split(';').collect(), signature })
}

/// Checks a request's signature; the key it was signed with, or the AWS error.
pub fn verify<'k>(
    request: &SignedRequest<'_>,
    keys: &'k [AccessKey],
    regions: &BTreeSet<String>,
    now_ms: u64,
) -> Result<&'k AccessKey, ApiError> {
    check(request, keys, regions, now_ms, true)
}

/// Every check [`verify`] makes but the signature itself, which covers the body:
/// run before a body is read, so that a request without a signature, by an
/// unknown key or out of its time is refused without holding its body.
pub fn verify_before_body<'k>(
    request: &SignedRequest<'_>,
    keys: &'k [AccessKey],
    regions: &BTreeSet<String>,
    now_ms: u64,
) -> Result<&'k AccessKey, ApiError> {
    check(request, keys, regions, now_ms, false)
}

fn check<'k>(
    request: &SignedRequest<'_>,
    keys: &'k [AccessKey],
    regions: &BTreeSet<String>,
    now_ms: u64,
    signature: bool,
) -> Result<&'k AccessKey, ApiError> {
    // A header that is not UTF-8 counts as absent: no valid signature field is.
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    // The header form, or the presigned (query-string) form.
    let presigned = if header("authorization").is_none() { presigned(request.query)? } else { None };
    // Borrowed in the header form (every SDK's, the hot one); the presigned form
    // rebuilds them from the query.
    let (authorization, amz_date, expires_ms, query): (Cow<'_, str>, Option<Cow<'_, str>>, _, Cow<'_, str>) =
        match (header("authorization"), presigned) {
            (Some(authorization), _) => {
                (authorization.into(), header("x-amz-date").map(Cow::from), None, request.query.into())
            }
            (None, Some(p)) => {
                (p.authorization.into(), Some(p.amz_date.into()), Some(p.expires_s * 1000), p.query.into())
            }
            (None, None) => {
                return Err(error(
                    ErrorCode::MissingAuthenticationTokenException,
                    "Request is missing Authentication Token",
                ))
            }
        };
    let auth = parse_authorization(&authorization)?;
    let Some(key) = keys.iter().find(|k| k.id == auth.key_id) else {
        return Err(error(
            ErrorCode::UnrecognizedClientException,
            "The security token included in the request is invalid.",
        ));
    };
    let invalid = |message: String| error(ErrorCode::InvalidSignatureException, message);
    if auth.service != "firehose" {
        return Err(invalid("Credential should be scoped to correct service: 'firehose'. ".to_string()));
    }
    if !regions.is_empty() && !regions.contains(auth.region) {
        return Err(invalid(format!("Credential should be scoped to a valid region, not '{}'. ", auth.region)));
    }
    let Some(amz_date) = amz_date else {
        return Err(incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."));
    };
    let Some(signed_ms) = parse_amz_date(&amz_date) else {
        return Err(incomplete("X-Amz-Date must have the form yyyyMMddTHHmmssZ."));
    };
    if !amz_date.starts_with(auth.date) {
        return Err(invalid(format!("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.", auth.date, &amz_date[..8.min(amz_date.len())])));
    }
    // Only error messages need it.
    let server_date = || format_amz_date(now_ms);
    if let Some(expires_ms) = expires_ms {
        if signed_ms + expires_ms < now_ms {
            let limit = format_amz_date(now_ms - expires_ms);
            return Err(invalid(format!(
                "Signature expired: {amz_date} is now earlier than {limit} ({} - {} sec.)",
                server_date(),
                expires_ms / 1000
            )));
        }
    } else if signed_ms + CLOCK_SKEW_MS_MAX < now_ms {
        let limit = format_amz_date(now_ms - CLOCK_SKEW_MS_MAX);
        return Err(invalid(format!(
            "Signature expired: {amz_date} is now earlier than {limit} ({} - 5 min.)",
            server_date()
        )));
    }
    if signed_ms > now_ms + CLOCK_SKEW_MS_MAX {
        let limit = format_amz_date(now_ms + CLOCK_SKEW_MS_MAX);
        return Err(invalid(format!(
            "Signature not yet current: {amz_date} is still later than {limit} ({} + 5 min.)",
            server_date()
        )));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(incomplete("'Host' must be a signed header."));
    }
    if !signature {
        return Ok(key);
    }
    if signature_matches(request, &query, &auth, &amz_date, key) {
        Ok(key)
    } else {
        Err(invalid("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into()))
    }
}

/// A presigned request's signature parameters.
struct Presigned {
    /// As an `Authorization` header would carry them.
    authorization: String,
    amz_date: String,
    expires_s: u64,
    /// The query without `X-Amz-Signature`, as signed.
    query: String,
}

/// The signature parameters of a presigned query string; `None` when it has none.
fn presigned(query: &str) -> Result<Option<Presigned>, ApiError> {
    let pairs: Vec<(&str, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (pair, format!("{}={}", percent_decode(k), percent_decode(v)))
        })
        .collect();
    let param =
        |name: &str| pairs.iter().find_map(|(_, decoded)| decoded.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
    let Some(signature) = param("X-Amz-Signature") else { return Ok(None) };
    if param("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(incomplete("X-Amz-Algorithm must be AWS4-HMAC-SHA256."));
    }
    let (Some(credential), Some(amz_date), Some(signed_headers), Some(expires)) =
        (param("X-Amz-Credential"), param("X-Amz-Date"), param("X-Amz-SignedHeaders"), param("X-Amz-Expires"))
    else {
        return Err(incomplete(
            "A presigned request requires X-Amz-Credential, X-Amz-Date, X-Amz-SignedHeaders and X-Amz-Expires.",
        ));
    };
    let expires_s = match expires.parse::<u64>() {
        Ok(s) if (1..=604_800).contains(&s) => s,
        _ => return Err(incomplete("X-Amz-Expires must be a number of seconds from 1 to 604800.")),
    };
    let query = pairs
        .iter()
        .filter(|(_, decoded)| !decoded.starts_with("X-Amz-Signature="))
        .map(|(raw, _)| *raw)
        .collect::<Vec<_>>()
        .join("&");
    Ok(Some(Presigned {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed_headers}, Signature={signature}"
        ),
        amz_date: amz_date.to_string(),
        expires_s,
        query,
    }))
}

/// Whether the request's signature is the one `secret` makes (constant-time).
/// `query` is the query as signed (without `X-Amz-Signature` in the presigned form).
fn signature_matches(
    request: &SignedRequest<'_>,
    query: &str,
    auth: &Authorization<'_>,
    amz_date: &str,
    key: &AccessKey,
) -> bool {
    let canonical = canonical_request(request, query, &auth.signed_headers);
    let mut string_to_sign = Vec::with_capacity(160);
    for part in
        ["AWS4-HMAC-SHA256\n", amz_date, "\n", auth.date, "/", auth.region, "/", auth.service, "/aws4_request\n"]
    {
        string_to_sign.extend_from_slice(part.as_bytes());
    }
    push_hex(&mut string_to_sign, digest::digest(&digest::SHA256, &canonical).as_ref());
    let signing_key = key.derived.get(&key.secret, auth.date, auth.region, auth.service);
    let Some(signature) = unhex(auth.signature) else { return false };
    hmac::verify(&signing_key, &string_to_sign, &signature).is_ok()
}

/// Refuses an operation the key's policy does not allow.
pub fn authorize(key: &AccessKey, operation: &str, stream: Option<&str>, resource: &str) -> Result<(), ApiError> {
    let operation_allowed = key.operations.is_empty() || key.operations.contains(operation);
    let stream_allowed = key.streams.is_empty() || stream.is_none_or(|s| key.streams.contains(s));
    if operation_allowed && stream_allowed {
        return Ok(());
    }
    Err(error(
        ErrorCode::AccessDeniedException,
        format!("User: {} is not authorized to perform: firehose:{operation} on resource: {resource}", key.id),
    ))
}

/// SigV4's canonical request (the path is encoded once more, as for every service
/// but S3; the query sorted; the signed headers trimmed and joined), as the bytes
/// that are hashed. Written into one buffer: it is built for every signed request.
fn canonical_request(request: &SignedRequest<'_>, query: &str, signed_headers: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(request.method.as_bytes());
    out.push(b'\n');
    if request.path.is_empty() {
        out.push(b'/');
    }
    for (i, segment) in request.path.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend(percent_encoding::utf8_percent_encode(segment, UNRESERVED).flat_map(str::bytes));
    }
    out.push(b'\n');
    let mut query: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (uri_encode(&percent_decode(k)), uri_encode(&percent_decode(v)))
        })
        .collect();
    query.sort();
    for (i, (k, v)) in query.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'\n');
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let values = request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        for (i, (_, value)) in values.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, value);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b'\n');
    push_hex(&mut out, digest::digest(&digest::SHA256, request.body).as_ref());
    out
}

/// A header value as SigV4 signs it: trimmed, each run of whitespace made one space.
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let mut space = false;
    for &b in value.trim_ascii() {
        if b.is_ascii_whitespace() {
            space = true;
        } else {
            if space {
                out.push(b' ');
                space = false;
            }
            out.push(b);
        }
    }
}

/// What SigV4 (and AWS paths generally) percent-encode: every byte but RFC 3986's
/// unreserved characters.
pub const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn uri_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]);
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `20150830T123600Z` as Unix milliseconds.
/// Fixed-width fields read directly: a generic `strptime` was a visible share of
/// verifying a small put. jiff checks the ranges and does the calendar.
fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i16> {
        b[from..to].iter().try_fold(0i16, |n, &d| d.is_ascii_digit().then(|| n * 10 + i16::from(d - b'0')))
    };
    let small = |from: usize| number(from, from + 2).and_then(|n| i8::try_from(n).ok());
    let civil =
        jiff::civil::DateTime::new(number(0, 4)?, small(4)?, small(6)?, small(9)?, small(11)?, small(13)?, 0).ok()?;
    let timestamp = jiff::tz::Offset::UTC.to_timestamp(civil).ok()?;
    u64::try_from(timestamp.as_millisecond()).ok()
}

fn format_amz_date(ms: u64) -> String {
    let timestamp = jiff::Timestamp::from_millisecond(ms as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    timestamp.strftime("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests;
