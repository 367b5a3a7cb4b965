//! Fuzz target: SigV4 verification of an arbitrary request (issue 5), the first
//! thing the server does with untrusted headers. The input is a request's text as
//! AWS's SigV4 test suite writes it: `METHOD PATH?QUERY HTTP/1.1`, `Name:value`
//! lines, a blank line, the body. Verification must answer a key or an AWS error,
//! never panic; and the check run before a body is read must never refuse what
//! the full check accepts, nor refuse differently.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use sluice_auth::{authorize, verify, verify_before_body, AccessKey, SignedRequest};

/// The test suite's date, 2015-08-30T12:36:00Z: its requests are within their time.
const NOW_MS: u64 = 1_440_938_160_000;

fuzz_target!(|input: &[u8]| {
    let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&input[..at], &input[at + 2..]),
        None => (input, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or("");
    let (method, target) = request_line.split_once(' ').unwrap_or((request_line, "/"));
    let target = target.strip_suffix(" HTTP/1.1").unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(&str, &[u8])> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n, v.trim_start().as_bytes())).collect();
    let request = SignedRequest { method, path, query, headers, body };
    let keys = [AccessKey {
        id: "AKIDEXAMPLE".into(),
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        operations: ["PutRecord".to_string()].into(),
        streams: BTreeSet::new(),
        derived: Default::default(),
    }];
    let regions = match body.first() {
        Some(b) if b % 2 == 0 => BTreeSet::from(["us-east-1".to_string()]),
        _ => BTreeSet::new(),
    };
    let before = verify_before_body(&SignedRequest { body: &[], ..request.clone() }, &keys, &regions, NOW_MS);
    let full = verify(&request, &keys, &regions, NOW_MS);
    match (&before, &full) {
        (Err(a), Err(b)) => assert_eq!(a, b, "the early check refused differently"),
        (Err(a), Ok(_)) => panic!("refused before the body ({a}) what the full check accepts"),
        (Ok(a), Ok(b)) => {
            assert_eq!(a.id, b.id);
            let _ = authorize(b, "PutRecord", Some("s"), "arn:aws:firehose:us-east-1:000000000000:deliverystream/s");
        }
        (Ok(_), Err(_)) => {}
    }
});
