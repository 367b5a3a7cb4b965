//! Fuzz target: the record processors that run on every stored record before
//! delivery (issue 5): KPL de-aggregation, JSON and delimited splitting, gzip
//! decompression, CloudWatch Logs envelopes and the delimiter. The first byte
//! picks the chain, the rest is one record. Each must answer records or a
//! failure, never panic; without decompression the output can never be larger
//! than the input (no amplification).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_processing::{append_delimiter, prepare, Outcome, Stats};
use sluice_protocol::processing::{Deaggregation, ProcessingChain, SubRecords};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else { return };
    let sub_records = match selector & 0b11 {
        0 => None,
        1 => Some(SubRecords::Json),
        2 => Some(SubRecords::Delimited(b"\n".to_vec())),
        _ => Some(SubRecords::Delimited(b"||".to_vec())),
    };
    let chain = ProcessingChain {
        deaggregation: (selector & 0b100 != 0).then_some(Deaggregation { sub_records }),
        decompression: selector & 0b1000 != 0,
        message_extraction: selector & 0b1_1000 == 0b1_1000,
        append_delimiter: (selector & 0b10_0000 != 0).then(|| b"\n".to_vec()),
        ..ProcessingChain::default()
    };
    let mut stats = Stats::default();
    match prepare(&chain, data, &mut stats) {
        Outcome::Records(mut records) => {
            if !chain.decompression {
                let total: usize = records.iter().map(Vec::len).sum();
                assert!(total <= data.len(), "{total} bytes out of {} in", data.len());
            }
            append_delimiter(&chain, &mut records);
        }
        Outcome::Failed(failure) => assert!(!failure.code.is_empty()),
    }
});
