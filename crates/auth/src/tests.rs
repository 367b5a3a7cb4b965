//! The verifier against AWS's SigV4 test suite (header form; the vectors in
//! `vectors/` are `header-signed-request.txt` files of the suite shipped with the
//! `aws-sigv4` crate, Apache-2.0, see `vectors/LICENSE`), and its checks in order.

use std::collections::BTreeSet;

use super::*;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// A signed request's text, taken apart.
type Parts = (String, String, String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// Splits a signed request's text into method, path, query, headers and body.
fn parse(text: &str) -> Parts {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let mut parts = request_line.splitn(2, ' ');
    let method = parts.next().unwrap().to_string();
    let target = parts.next().unwrap();
    let target = target.strip_suffix(" HTTP/1.1").unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .map(|l| l.split_once(':').unwrap())
        .map(|(n, v)| (n.to_string(), v.trim_start().as_bytes().to_vec()))
        .collect();
    (method, path.to_string(), query.to_string(), headers, body.as_bytes().to_vec())
}

/// Runs `f` on the request a signed request's text describes.
fn with_request<R>(text: &str, f: impl FnOnce(&SignedRequest<'_>, &[(String, Vec<u8>)]) -> R) -> R {
    let (method, path, query, headers, body) = parse(text);
    let request = SignedRequest {
        method: &method,
        path: &path,
        query: &query,
        headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect(),
        body: &body,
    };
    f(&request, &headers)
}

fn check(text: &str, secret: &str) -> bool {
    with_request(text, |request, headers| check_request(request, headers, secret))
}

fn check_request(request: &SignedRequest<'_>, headers: &[(String, Vec<u8>)], secret: &str) -> bool {
    let authorization =
        headers.iter().find(|(n, _)| n == "Authorization").map(|(_, v)| String::from_utf8_lossy(v)).unwrap();
    let amz_date = headers.iter().find(|(n, _)| n == "X-Amz-Date").map(|(_, v)| String::from_utf8_lossy(v)).unwrap();
    signature_matches(
        request,
        request.query,
        &parse_authorization(&authorization).unwrap(),
        &amz_date,
        &with_secret(secret),
    )
}

macro_rules! vectors {
    ($($name:literal),* $(,)?) => { [$(($name, include_str!(concat!("vectors/", $name, ".txt")))),*] };
}

#[test]
fn aws_test_suite_signatures_verify_and_wrong_secrets_do_not() {
    // Path normalisation (`.`/`..` segments, repeated slashes) is not implemented:
    // Firehose requests always go to `/`, so those vectors are left out.
    let vectors = vectors![
        "post-vanilla",
        "get-vanilla",
        "get-header-value-trim",
        "get-header-key-duplicate",
        "get-header-value-order",
        "get-vanilla-query-order-key-case",
        "get-vanilla-query-unreserved",
        "get-vanilla-empty-query-key",
        "get-unreserved",
        "get-utf8",
        "get-vanilla-utf8-query",
        "post-header-key-sort",
        "post-header-value-case",
        "post-x-www-form-urlencoded",
        "post-x-www-form-urlencoded-parameters",
        "post-vanilla-query",
        "get-space-unnormalized",
        "double-url-encode",
    ];
    for (name, text) in vectors {
        assert!(check(text, SECRET), "{name} does not verify");
        assert!(!check(text, "wrong"), "{name} verifies with a wrong secret");
        let other_method =
            if text.starts_with("GET") { text.replacen("GET", "PUT", 1) } else { text.replacen("POST", "PUT", 1) };
        assert!(!check(&other_method, SECRET), "{name} verifies with another method");
        let other_date = text.replacen("X-Amz-Date:20", "X-Amz-Date:21", 1);
        assert!(!check(&other_date, SECRET), "{name} verifies with another date");
    }
}

fn with_secret(secret: &str) -> AccessKey {
    AccessKey { secret: secret.into(), ..key() }
}

fn key() -> AccessKey {
    AccessKey {
        id: "AKIDEXAMPLE".into(),
        secret: SECRET.into(),
        operations: BTreeSet::new(),
        streams: BTreeSet::new(),
        derived: Default::default(),
    }
}

/// 2015-08-30T12:36:00Z.
const SIGNED_MS: u64 = 1_440_938_160_000;

fn verify_text(text: &str, now_ms: u64, regions: &[&str]) -> Result<(), ApiError> {
    let regions: BTreeSet<String> = regions.iter().map(|r| r.to_string()).collect();
    let keys = [key()];
    with_request(text, |request, _| verify(request, &keys, &regions, now_ms).map(|_| ()))
}

#[test]
fn the_checks_come_with_aws_errors() {
    let signed = include_str!("vectors/post-vanilla.txt");
    let as_firehose = signed.replace("/service/", "/firehose/");
    let code = |r: Result<(), ApiError>| r.unwrap_err().code;
    assert_eq!(code(verify_text(signed, SIGNED_MS, &[])), ErrorCode::InvalidSignatureException, "service");
    // Scoped to firehose, the suite's signature no longer matches: a mismatch.
    let e = verify_text(&as_firehose, SIGNED_MS, &[]).unwrap_err();
    assert!(e.message.starts_with("The request signature we calculated does not match"), "{}", e.message);
    assert_eq!(code(verify_text(&as_firehose, SIGNED_MS, &["eu-west-1"])), ErrorCode::InvalidSignatureException);
    let unsigned: String = signed.lines().filter(|l| !l.starts_with("Authorization")).collect::<Vec<_>>().join("\n");
    assert_eq!(code(verify_text(&unsigned, SIGNED_MS, &[])), ErrorCode::MissingAuthenticationTokenException);
    let stranger = signed.replace("Credential=AKIDEXAMPLE/", "Credential=AKIDOTHER/");
    assert_eq!(code(verify_text(&stranger, SIGNED_MS, &[])), ErrorCode::UnrecognizedClientException);
    let broken = signed.replace(", Signature=", ", Sig=");
    assert_eq!(code(verify_text(&broken, SIGNED_MS, &[])), ErrorCode::IncompleteSignatureException);
    let late = verify_text(&as_firehose, SIGNED_MS + 5 * 60 * 1000 + 1000, &[]).unwrap_err();
    assert_eq!(
        late.message,
        "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z (20150830T124101Z - 5 min.)"
    );
    let early = verify_text(&as_firehose, SIGNED_MS - 5 * 60 * 1000 - 1000, &[]).unwrap_err();
    assert_eq!(
        early.message,
        "Signature not yet current: 20150830T123600Z is still later than 20150830T123559Z (20150830T123059Z + 5 min.)"
    );
}

#[test]
fn policies_limit_operations_and_streams() {
    let mut limited = key();
    limited.operations = ["PutRecord".to_string()].into();
    limited.streams = ["events".to_string()].into();
    authorize(&limited, "PutRecord", Some("events"), "arn").unwrap();
    let denied =
        authorize(&limited, "PutRecord", Some("other"), "arn:aws:firehose:us-east-1:000000000000:deliverystream/other");
    assert_eq!(
        denied.unwrap_err().message,
        "User: AKIDEXAMPLE is not authorized to perform: firehose:PutRecord on resource: arn:aws:firehose:us-east-1:000000000000:deliverystream/other"
    );
    assert!(authorize(&limited, "DeleteDeliveryStream", Some("events"), "arn").is_err());
    authorize(&key(), "DeleteDeliveryStream", Some("anything"), "arn").unwrap();
}

/// Whether a presigned request's text verifies with `secret`.
fn check_presigned(text: &str, secret: &str) -> bool {
    with_request(text, |request, _| {
        let p = presigned(request.query).unwrap().unwrap();
        signature_matches(
            request,
            &p.query,
            &parse_authorization(&p.authorization).unwrap(),
            &p.amz_date,
            &with_secret(secret),
        )
    })
}

#[test]
fn presigned_requests_from_the_aws_test_suite_verify() {
    let vectors = [
        ("post-vanilla", include_str!("vectors/query-post-vanilla.txt")),
        ("get-vanilla-query-order-key-case", include_str!("vectors/query-get-vanilla-query-order-key-case.txt")),
        ("get-vanilla-query-unreserved", include_str!("vectors/query-get-vanilla-query-unreserved.txt")),
    ];
    for (name, text) in vectors {
        assert!(check_presigned(text, SECRET), "{name} does not verify");
        assert!(!check_presigned(text, "wrong"), "{name} verifies with a wrong secret");
        let tampered = text.replacen("X-Amz-Expires=3600", "X-Amz-Expires=3601", 1);
        assert!(!check_presigned(&tampered, SECRET), "{name} verifies with another expiry");
    }
    // Through verify(): scoped to firehose the suite's signature no longer matches,
    // and an expired presigned request is refused for its age first.
    let text = include_str!("vectors/query-post-vanilla.txt").replace("%2Fservice%2F", "%2Ffirehose%2F");
    let late = verify_text(&text, SIGNED_MS + 3_601_000, &[]).unwrap_err();
    assert!(late.message.starts_with("Signature expired: 20150830T123600Z"), "{}", late.message);
    let in_time = verify_text(&text, SIGNED_MS + 1000, &[]).unwrap_err();
    assert!(in_time.message.starts_with("The request signature we calculated does not match"), "{}", in_time.message);
}

#[test]
fn the_signing_key_cache_follows_date_and_region() {
    let tag = |key: &ring::hmac::Key| ring::hmac::sign(key, b"message").as_ref().to_vec();
    let fresh = |date: &str, region: &str| tag(&SigningKeyCache::default().get(SECRET, date, region, "firehose"));
    let cache = SigningKeyCache::default();
    for (date, region) in
        [("20150830", "us-east-1"), ("20150830", "us-east-1"), ("20150831", "us-east-1"), ("20150831", "eu-west-1")]
    {
        assert_eq!(tag(&cache.get(SECRET, date, region, "firehose")), fresh(date, region), "{date} {region}");
    }
    assert_ne!(fresh("20150830", "us-east-1"), fresh("20150831", "us-east-1"));
    // Another service is derived, never served from (or stored in) the cache.
    assert_ne!(tag(&cache.get(SECRET, "20150831", "eu-west-1", "kinesis")), fresh("20150831", "eu-west-1"));
    assert_eq!(tag(&cache.get(SECRET, "20150831", "eu-west-1", "firehose")), fresh("20150831", "eu-west-1"));
}

#[test]
fn amz_dates_are_read_exactly() {
    assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160_000));
    assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
    assert_eq!(format_amz_date(parse_amz_date("20241231T235959Z").unwrap()), "20241231T235959Z");
    for bad in [
        "20151330T123600Z", // month 13
        "20150230T123600Z", // 30 February
        "20150830T246000Z",
        "20150830T123600",
        "20150830 123600Z",
        "2015083OT123600Z",
        "+0150830T123600Z",
        "20150830T123600Z0",
        "",
        "２0150830T12360Z",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad}");
    }
}
