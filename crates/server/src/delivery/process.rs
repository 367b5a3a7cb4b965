//! Runs a destination's processing chain on a batch read back from the log (see
//! `sluice-processing`), and writes Firehose's error records for what fails.
//! Deterministic: a batch redone after a crash gives the same objects.

use std::collections::BTreeMap;

use sluice_processing::{Outcome, Stats};
use sluice_protocol::processing::ProcessingChain;

use crate::log::StoredRecord;

/// A processed batch.
pub(super) struct Processed {
    /// The object's body: every output record, concatenated.
    pub(super) body: Vec<u8>,
    /// Output records (for the metrics).
    pub(super) n_records: u64,
    /// Error records (JSON lines) by error output type.
    pub(super) errors: BTreeMap<&'static str, Vec<u8>>,
    /// Counts for the processing metrics.
    pub(super) stats: Stats,
}

/// The body of a batch, through `chain` when there is one.
pub(super) fn process(chain: Option<&ProcessingChain>, batch: &[StoredRecord], attempt: u32, now_ms: u64) -> Processed {
    let mut processed = Processed { body: Vec::new(), n_records: 0, errors: BTreeMap::new(), stats: Stats::default() };
    let Some(chain) = chain else {
        processed.body.reserve_exact(batch.iter().map(|r| r.data.len()).sum());
        for record in batch {
            processed.body.extend_from_slice(&record.data);
        }
        processed.n_records = batch.len() as u64;
        return processed;
    };
    for record in batch {
        match sluice_processing::prepare(chain, &record.data, &mut processed.stats) {
            Outcome::Records(mut records) => {
                sluice_processing::append_delimiter(chain, &mut records);
                processed.n_records += records.len() as u64;
                for output in records {
                    processed.body.extend_from_slice(&output);
                }
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
