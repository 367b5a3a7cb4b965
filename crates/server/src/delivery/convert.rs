//! Format conversion in a lane: after processing (and partitioning), each object's
//! records become one Parquet or ORC file (`sluice-convert`), and records that do not
//! convert go to the error prefix under `format-conversion-failed`, as Firehose's
//! error records with the table they were meant for (`dataCatalogTable`). The
//! rest of the batch is delivered. Deterministic, so a batch redone after a crash
//! writes the same objects.

use std::sync::Arc;

use serde_json::Value;
use sluice_convert::Conversion;

/// The `!{firehose:error-output-type}` of records that did not convert.
pub(super) const FORMAT_CONVERSION_FAILED: &str = "format-conversion-failed";

/// What a batch's records became.
pub(super) struct Converted {
    /// `(key, file)` of each object with at least one row.
    pub(super) objects: Vec<(String, Vec<u8>)>,
    /// Error records (JSON lines) of the records that did not convert.
    pub(super) errors: Vec<u8>,
    /// Records converted, and their bytes.
    pub(super) ok: (u64, u64),
    /// Records that failed, and their bytes.
    pub(super) failed: (u64, u64),
}

/// What a conversion needs of the batch, owned, for the blocking pool.
pub(super) struct Input {
    /// The conversion, as set up for this attempt.
    pub(super) conversion: Arc<Conversion>,
    /// Each object's key and the indices of its records.
    pub(super) groups: Vec<(String, Vec<usize>)>,
    /// The processed records.
    pub(super) records: Vec<Vec<u8>>,
    /// Each record's arrival time.
    pub(super) arrivals_ms: Vec<u64>,
    /// `dataCatalogTable` of the error records.
    pub(super) catalog_table: Value,
    /// This attempt's number, and when it ends.
    pub(super) attempt: u32,
    pub(super) now_ms: u64,
}

/// Converts every object; CPU-bound, so run on the blocking pool. An error is a
/// writer failure, which fails the attempt (records that do not fit never do).
pub(super) fn convert(mut input: Input) -> Result<Converted, String> {
    let mut converted = Converted { objects: Vec::new(), errors: Vec::new(), ok: (0, 0), failed: (0, 0) };
    for (key, indices) in input.groups {
        let mut file = input.conversion.file().map_err(|e| e.to_string())?;
        for i in indices {
            // Let go once converted: the file grows as the records go, and a batch
            // tried again is read back from the log.
            let record = std::mem::take(&mut input.records[i]);
            match file.push(&record) {
                Ok(_) => {
                    converted.ok.0 += 1;
                    converted.ok.1 += record.len() as u64;
                }
                Err(error) => {
                    converted.failed.0 += 1;
                    converted.failed.1 += record.len() as u64;
                    let line = serde_json::json!({
                        "attemptsMade": input.attempt,
                        "arrivalTimestamp": input.arrivals_ms[i],
                        "lastErrorCode": error.code(),
                        "lastErrorMessage": error.message,
                        "attemptEndingTimestamp": input.now_ms,
                        "rawData": base64_simd::STANDARD.encode_to_string(&record),
                        "dataCatalogTable": input.catalog_table,
                    });
                    converted.errors.extend_from_slice(line.to_string().as_bytes());
                    converted.errors.push(b'\n');
                }
            }
        }
        if file.rows() > 0 {
            converted.objects.push((key, file.finish().map_err(|e| e.to_string())?));
        }
    }
    Ok(converted)
}
