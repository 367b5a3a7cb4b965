//! `sluice-processing`: Firehose's record processors as pure functions, run by the
//! delivery engine on each batch it reads back from the log, before the batch is
//! encoded and uploaded. No IO, no clock, no async: the same source records always
//! give the same output, which keeps a batch redone after a crash identical.
//!
//! The order is Firehose's: KPL de-aggregation, JSON or delimited de-aggregation,
//! decompression and CloudWatch Logs message extraction ([`prepare`]); the Lambda
//! transformation and metadata extraction run in the server; then the delimiter
//! ([`append_delimiter`]). A record that fails a step is not delivered: it comes back
//! as a [`Failure`] naming its error output type, so the caller writes the original
//! record under the error prefix. Nothing here panics on any input.

mod cloudwatch;
pub mod jq;
pub mod kpl;
mod split;

use std::io::Read;

use sluice_protocol::processing::{ProcessingChain, SubRecords};

pub use cloudwatch::Envelope;

/// At most this many sub-records come out of one record's JSON or delimited
/// de-aggregation; a record holding more is kept whole, as Firehose does.
pub const SUB_RECORDS_MAX: usize = 500;

/// Largest decompressed record: a guard against decompression bombs. Larger is a
/// decompression failure.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The `!{firehose:error-output-type}`: `processing-failed` or `decompression-failed`.
    pub output_type: &'static str,
    /// The error record's `errorCode`.
    pub code: &'static str,
    /// The error record's `errorMessage`.
    pub message: String,
}

/// What the processors made of one source record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The records to deliver (none: everything was dropped, like a CloudWatch Logs
    /// control message).
    Records(Vec<Vec<u8>>),
    /// The record goes, unchanged, under the error prefix.
    Failed(Failure),
}

/// Counts for the processing metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records decompressed (`OutputDecompressedRecords.Success`).
    pub decompressed_records: u64,
    /// Their decompressed bytes (`OutputDecompressedBytes.Success`).
    pub decompressed_bytes: u64,
    /// Records that failed to decompress (`OutputDecompressedRecords.Failed`).
    pub decompression_failures: u64,
    /// CloudWatch Logs `CONTROL_MESSAGE` envelopes dropped.
    pub control_messages_dropped: u64,
}

/// Runs every processor that comes before the Lambda transformation on one source
/// record.
pub fn prepare(chain: &ProcessingChain, data: &[u8], stats: &mut Stats) -> Outcome {
    let mut records = vec![data.to_vec()];
    if let Some(deaggregation) = &chain.deaggregation {
        records = match kpl::deaggregate(data) {
            Ok(Some(user_records)) => user_records,
            Ok(None) => records,
            Err(message) => return failed("processing-failed", "RecordDeAggregation.InvalidKplRecord", message),
        };
        if let Some(sub_records) = &deaggregation.sub_records {
            let mut split_records = Vec::with_capacity(records.len());
            for record in &records {
                let parts = match sub_records {
                    SubRecords::Json => match split::json(record) {
                        Ok(parts) => parts,
                        Err(message) => return failed("processing-failed", "RecordDeAggregation.InvalidJson", message),
                    },
                    SubRecords::Delimited(delimiter) => split::delimited(record, delimiter),
                };
                if parts.len() > SUB_RECORDS_MAX {
                    split_records.push(record.clone());
                } else {
                    split_records.extend(parts);
                }
            }
            records = split_records;
        }
    }
    if chain.decompression {
        let mut decompressed = Vec::with_capacity(records.len());
        for record in &records {
            match gunzip(record) {
                Ok(bytes) => {
                    stats.decompressed_records += 1;
                    stats.decompressed_bytes += bytes.len() as u64;
                    decompressed.push(bytes);
                }
                Err(message) => {
                    stats.decompression_failures += 1;
                    return failed("decompression-failed", "Decompression.Failed", message);
                }
            }
        }
        records = decompressed;
    }
    if chain.message_extraction {
        let mut messages = Vec::new();
        for record in &records {
            match cloudwatch::Envelope::parse(record) {
                Ok(Envelope::Control) => stats.control_messages_dropped += 1,
                Ok(Envelope::Data(events)) => {
                    for mut message in events {
                        // Messages are newline-separated, as Firehose delivers them,
                        // unless AppendDelimiterToRecord adds its own delimiter.
                        if chain.append_delimiter.is_none() {
                            message.push(b'\n');
                        }
                        messages.push(message);
                    }
                }
                Err(message) => return failed("processing-failed", "CloudWatchLogProcessing.InvalidLogData", message),
            }
        }
        records = messages;
    }
    Outcome::Records(records)
}

/// Adds the `AppendDelimiterToRecord` delimiter after each record, if configured.
pub fn append_delimiter(chain: &ProcessingChain, records: &mut [Vec<u8>]) {
    if let Some(delimiter) = &chain.append_delimiter {
        for record in records {
            record.extend_from_slice(delimiter);
        }
    }
}

fn failed(output_type: &'static str, code: &'static str, message: String) -> Outcome {
    Outcome::Failed(Failure { output_type, code, message })
}

/// Gunzips one record (several concatenated members, as `gzip` writes them, are
/// one record), up to [`DECOMPRESSED_BYTES_MAX`].
fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(data);
    match decoder.take(DECOMPRESSED_BYTES_MAX as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > DECOMPRESSED_BYTES_MAX => {
            Err(format!("The record decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes."))
        }
        Ok(_) => Ok(out),
        Err(error) => Err(format!("The record is not valid GZIP: {error}")),
    }
}

#[cfg(test)]
mod tests;
