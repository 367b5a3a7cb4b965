use std::io::Write;

use proptest::prelude::*;
use sluice_protocol::processing::{Deaggregation, ProcessingChain, SubRecords};

use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn deagg(sub_records: Option<SubRecords>) -> ProcessingChain {
    ProcessingChain { deaggregation: Some(Deaggregation { sub_records }), ..ProcessingChain::default() }
}

fn records(outcome: Outcome) -> Vec<Vec<u8>> {
    match outcome {
        Outcome::Records(records) => records,
        Outcome::Failed(failure) => panic!("failed: {failure:?}"),
    }
}

#[test]
fn kpl_aggregates_are_expanded_and_other_records_pass() {
    let mut stats = Stats::default();
    let aggregate = kpl::aggregate(&[b"one", b"two", b""]);
    assert_eq!(records(prepare(&deagg(None), &aggregate, &mut stats)), vec![b"one".to_vec(), b"two".to_vec(), vec![]]);
    assert_eq!(records(prepare(&deagg(None), b"plain", &mut stats)), vec![b"plain".to_vec()]);
    let mut corrupt = aggregate.clone();
    let at = corrupt.len() - 20;
    corrupt[at] ^= 1;
    let Outcome::Failed(failure) = prepare(&deagg(None), &corrupt, &mut stats) else { panic!("accepted") };
    assert_eq!(failure.output_type, "processing-failed");
    assert!(failure.message.contains("MD5"), "{failure:?}");
}

#[test]
fn kpl_then_json_split() {
    let mut stats = Stats::default();
    let aggregate = kpl::aggregate(&[b"{\"a\":1}{\"a\":2}", b" {\"b\":[1,2]}\n{\"c\":\"}\"}\n"]);
    let out = records(prepare(&deagg(Some(SubRecords::Json)), &aggregate, &mut stats));
    assert_eq!(out, vec![&b"{\"a\":1}"[..], b"{\"a\":2}", b"{\"b\":[1,2]}", b"{\"c\":\"}\"}"]);
    let Outcome::Failed(failure) = prepare(&deagg(Some(SubRecords::Json)), b"{\"a\":1}{oops", &mut stats) else {
        panic!("accepted")
    };
    assert_eq!(failure.code, "RecordDeAggregation.InvalidJson");
}

#[test]
fn delimited_split_and_the_500_sub_record_rule() {
    let mut stats = Stats::default();
    let chain = deagg(Some(SubRecords::Delimited(b"####".to_vec())));
    assert_eq!(records(prepare(&chain, b"a####bb####", &mut stats)), vec![b"a".to_vec(), b"bb".to_vec()]);
    assert_eq!(records(prepare(&chain, b"####x", &mut stats)), vec![b"".to_vec(), b"x".to_vec()]);
    let many = "r####".repeat(SUB_RECORDS_MAX + 1);
    assert_eq!(records(prepare(&chain, many.as_bytes(), &mut stats)), vec![many.as_bytes().to_vec()], "kept whole");
    let most = "r####".repeat(SUB_RECORDS_MAX);
    assert_eq!(records(prepare(&chain, most.as_bytes(), &mut stats)).len(), SUB_RECORDS_MAX);
}

#[test]
fn cloudwatch_logs_envelopes_are_decompressed_and_their_messages_extracted() {
    let chain = ProcessingChain { decompression: true, message_extraction: true, ..ProcessingChain::default() };
    let mut stats = Stats::default();
    let data = gzip(
        br#"{"messageType":"DATA_MESSAGE","owner":"1","logGroup":"g","logStream":"s","subscriptionFilters":["f"],
        "logEvents":[{"id":"1","timestamp":1,"message":"first line"},{"id":"2","timestamp":2,"message":"second"}]}"#,
    );
    assert_eq!(records(prepare(&chain, &data, &mut stats)), vec![b"first line\n".to_vec(), b"second\n".to_vec()]);
    let control = gzip(
        br#"{"messageType":"CONTROL_MESSAGE","logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE"}]}"#,
    );
    assert_eq!(records(prepare(&chain, &control, &mut stats)), Vec::<Vec<u8>>::new());
    assert_eq!(stats.control_messages_dropped, 1);
    let Outcome::Failed(failure) = prepare(&chain, b"not gzip", &mut stats) else { panic!("accepted") };
    assert_eq!(failure.output_type, "decompression-failed");
    assert_eq!((stats.decompressed_records, stats.decompression_failures), (2, 1));
    let only_gunzip = ProcessingChain { decompression: true, ..ProcessingChain::default() };
    assert_eq!(records(prepare(&only_gunzip, &gzip(b"{}"), &mut stats)), vec![b"{}".to_vec()]);
    let with_delimiter = ProcessingChain { append_delimiter: Some(b"|".to_vec()), ..chain };
    let mut out = records(prepare(&with_delimiter, &data, &mut stats));
    append_delimiter(&with_delimiter, &mut out);
    assert_eq!(out, vec![b"first line|".to_vec(), b"second|".to_vec()]);
}

proptest! {
    #[test]
    fn no_input_panics(data in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let mut data = data;
        if magic {
            data.splice(0..0, [0xF3, 0x89, 0x9A, 0xC2]);
        }
        let chain = ProcessingChain {
            deaggregation: Some(Deaggregation { sub_records: Some(SubRecords::Json) }),
            decompression: true,
            message_extraction: true,
            ..ProcessingChain::default()
        };
        let _ = prepare(&chain, &data, &mut Stats::default());
        let _ = prepare(&deagg(Some(SubRecords::Delimited(b"\n".to_vec()))), &data, &mut Stats::default());
    }
}

#[test]
fn jq_extracts_partition_keys() {
    let query = r#"{customer_id: .customer_id, device: .type.device, year: (.ts | strftime("%Y")), n: .n}"#;
    let records: [&[u8]; 4] = [
        br#"{"customer_id":"c-1","type":{"device":"phone"},"ts":1700000000,"n":3}"#,
        b"not json",
        br#"{"customer_id":{"nested":1},"type":{},"ts":0}"#,
        br#"[1,2]"#,
    ];
    let results = jq::extract(query, records).unwrap();
    let first = results[0].as_ref().unwrap();
    let expected: Vec<(&str, &str)> = vec![("customer_id", "c-1"), ("device", "phone"), ("n", "3"), ("year", "2023")];
    assert_eq!(first.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), expected);
    assert!(results[1].as_ref().unwrap_err().contains("not valid JSON"));
    assert!(results[2].as_ref().unwrap_err().contains("not a scalar"));
    assert!(results[3].is_err(), "indexing an array by name fails");
    assert!(jq::check("{a: .a").is_err());
    assert!(jq::check("{a: .a | nosuchfunction}").is_err());
    jq::check("{a: .a}").unwrap();
}
