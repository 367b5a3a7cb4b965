//! Runs a destination's processing chain on a batch read back from the log (see
//! `sluice-processing`), and writes Firehose's error records for what fails.
//! Deterministic: a batch redone after a crash gives the same objects.

use std::collections::BTreeMap;

use sluice_processing::{Outcome, Stats};
use sluice_protocol::processing::ProcessingChain;

use crate::log::StoredRecord;

/// A processed batch.
pub(super) struct Processed {
    /// The records to deliver, in order.
    pub(super) records: Vec<Vec<u8>>,
    /// Error records (JSON lines) by error output type.
    pub(super) errors: BTreeMap<&'static str, Vec<u8>>,
    /// Counts for the processing metrics.
    pub(super) stats: Stats,
}

impl Processed {
    /// Bytes of the records to deliver.
    pub(super) fn n_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.len() as u64).sum()
    }

    /// The records concatenated, as an S3 object holds them (Firehose adds no
    /// delimiter of its own).
    pub(super) fn concatenated(&mut self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.n_bytes() as usize);
        for record in self.records.drain(..) {
            body.extend_from_slice(&record);
        }
        body
    }
}

/// The records of a batch, through `chain` when there is one.
pub(super) fn process(chain: Option<&ProcessingChain>, batch: &[StoredRecord], attempt: u32, now_ms: u64) -> Processed {
    let mut processed = Processed { records: Vec::new(), errors: BTreeMap::new(), stats: Stats::default() };
    let Some(chain) = chain else {
        processed.records = batch.iter().map(|r| r.data.clone()).collect();
        return processed;
    };
    for record in batch {
        match sluice_processing::prepare(chain, &record.data, &mut processed.stats) {
            Outcome::Records(mut records) => {
                sluice_processing::append_delimiter(chain, &mut records);
                processed.records.extend(records);
            }
            Outcome::Failed(failure) => {
                let lines = processed.errors.entry(failure.output_type).or_default();
                error_line(lines, record, attempt, failure.code, &failure.message, now_ms);
            }
        }
    }
    processed
}

/// Appends one of Firehose's error records (a JSON document and a newline) for
/// `record`, whose original bytes go in `rawData`.
pub(super) fn error_line(
    out: &mut Vec<u8>,
    record: &StoredRecord,
    attempt: u32,
    code: &str,
    message: &str,
    now_ms: u64,
) {
    let line = serde_json::json!({
        "attemptsMade": attempt,
        "arrivalTimestamp": record.arrival_ms,
        "errorCode": code,
        "errorMessage": message,
        "attemptEndingTimestamp": now_ms,
        "rawData": base64_simd::STANDARD.encode_to_string(&record.data),
    });
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
}
