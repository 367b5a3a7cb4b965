//! Runs a destination's processing chain on a batch read back from the log (see
//! `sluice-processing`), and writes Firehose's error records for what fails.
//! Deterministic: a batch redone after a crash gives the same objects.

use std::collections::BTreeMap;

use sluice_processing::{Outcome, Stats};
use sluice_protocol::destination::DestinationKind;
use sluice_protocol::processing::ProcessingChain;

use std::time::Instant;

use super::key::PartitionKeys;
use super::lambda::{InvocationStats, LambdaInput, LambdaResult, Route};
use super::lane::ReadBack;
use super::Delivery;
use crate::catalog::StreamRecord;
use crate::log::StoredRecord;

/// The `!{firehose:error-output-type}` of records whose partition keys could not be
/// extracted, or that came past the active-partition limit (Firehose's name for it is
/// not documented).
pub(super) const PARTITIONING_FAILED: &str = "partitioning-failed";

/// A processed batch.
pub(super) struct Processed {
    /// The records to deliver, in order.
    pub(super) records: Vec<Vec<u8>>,
    /// For each of `records`, the index in the batch of the source record it came
    /// from (for the arrival time of an error record written later).
    pub(super) sources: Vec<usize>,
    /// With dynamic partitioning, each record's partition keys (aligned with
    /// `records`).
    pub(super) partitions: Option<Vec<PartitionKeys>>,
    /// For an Iceberg destination, each record's table as the MetadataExtraction
    /// query or the Lambda function named it (aligned with `records`).
    pub(super) routes: Option<Vec<Route>>,
    /// Records in `records` that partitioning then sent to the error prefix.
    pub(super) n_failed_partitioning: u64,
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

    /// The records at `indices` concatenated (and taken), as an S3 object holds
    /// them (Firehose adds no delimiter of its own).
    pub(super) fn concatenated(&mut self, indices: &[usize]) -> Vec<u8> {
        if let [only] = indices {
            return std::mem::take(&mut self.records[*only]);
        }
        let mut body = Vec::with_capacity(indices.iter().map(|&i| self.records[i].len()).sum());
        for &i in indices {
            body.extend_from_slice(&std::mem::take(&mut self.records[i]));
        }
        body
    }
}

/// A record after the Lambda function: the index of its source record, its data,
/// and the function's partition keys and route for it.
type Output = (usize, Vec<u8>, BTreeMap<String, String>, Route);

/// The records of a batch, through `chain` when there is one: the processors
/// before Lambda on each record, the Lambda function on what they produce, the
/// metadata extraction query (dynamic partitioning), then the delimiter. A record
/// that fails any step goes, as it was when it failed, to the error prefix of its
/// error output type.
pub(super) async fn process(
    delivery: &Delivery,
    stream: &StreamRecord,
    chain: Option<&ProcessingChain>,
    batch: &mut ReadBack,
    attempt: u32,
) -> Processed {
    let mut processed = Processed {
        records: Vec::new(),
        sources: Vec::new(),
        partitions: None,
        routes: None,
        n_failed_partitioning: 0,
        errors: BTreeMap::new(),
        stats: Stats::default(),
    };
    let Some(chain) = chain else {
        // Nothing to transform: the records' bytes move over, uncopied (the batch
        // keeps their sequence numbers and arrival times, not their data).
        processed.records = batch.records.iter_mut().map(|r| std::mem::take(&mut r.data)).collect();
        processed.sources = (0..processed.records.len()).collect();
        return processed;
    };
    let kinesis = &batch.kinesis;
    let batch: &[StoredRecord] = &batch.records;
    let now_ms = delivery.clock.now_ms();
    // Each output of the first processors, with the source record it came from.
    let mut prepared: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        match sluice_processing::prepare(chain, &record.data, &mut processed.stats) {
            Outcome::Records(records) => prepared.extend(records.into_iter().map(|r| (i, r))),
            Outcome::Failed(failure) => {
                let lines = processed.errors.entry(failure.output_type).or_default();
                let failed = Failed { record, data: &record.data, code: failure.code, message: &failure.message };
                error_line(lines, &failed, attempt, now_ms, None);
            }
        }
    }
    // What the function returned for each, with its partition keys and route from Lambda.
    let mut outputs: Vec<Output> = match &chain.lambda {
        None => prepared.into_iter().map(|(i, data)| (i, data, BTreeMap::new(), Route::default())).collect(),
        Some(lambda) => {
            let inputs: Vec<LambdaInput<'_>> = prepared
                .iter()
                .map(|(i, data)| LambdaInput { arrival_ms: batch[*i].arrival_ms, data, kinesis: kinesis.get(*i) })
                .collect();
            let arn = delivery.state.arn(&stream.region, &stream.name);
            let mut stats = InvocationStats { attempts: 0, successes: 0, duration_ms: 0.0 };
            let source_arn = stream.kinesis_source.as_ref().map(|k| k.stream_arn.as_str());
            let results =
                delivery.lambda.transform(lambda, &arn, source_arn, &stream.region, &inputs, &mut stats).await;
            delivery.state.metrics.lambda(stream.id, stats.attempts, stats.successes, stats.duration_ms);
            let mut outputs = Vec::with_capacity(results.len());
            for ((i, data), result) in prepared.iter().zip(results) {
                match result {
                    LambdaResult::Ok { data, partition_keys, route } => outputs.push((*i, data, partition_keys, route)),
                    LambdaResult::Dropped => {}
                    LambdaResult::Failed { code, message } => {
                        let lines = processed.errors.entry("processing-failed").or_default();
                        let failed = Failed { record: &batch[*i], data, code, message: &message };
                        error_line(lines, &failed, attempt, now_ms, Some(&lambda.function));
                    }
                }
            }
            delivery.state.metrics.succeed_processing(stream.id, outputs.iter().map(|(_, d, _, _)| d.len() as u64));
            outputs
        }
    };
    let dynamic_partitioning = stream.destination.s3_settings().is_some_and(|s| s.dynamic_partitioning);
    // An Iceberg stream routes its records by the same keys (Firehose's
    // `destinationDatabaseName`, `destinationTableName`, `operation`).
    let routing = stream.destination.kind == DestinationKind::Iceberg;
    if dynamic_partitioning || routing {
        let query_keys = match &chain.metadata_query {
            None => vec![Ok(BTreeMap::new()); outputs.len()],
            Some(query) => {
                let started = Instant::now();
                let keys = sluice_processing::jq::extract(query, outputs.iter().map(|(_, d, _, _)| d.as_slice()))
                    .unwrap_or_else(|error| vec![Err(error); outputs.len()]);
                delivery.state.metrics.jq(stream.id, started.elapsed().as_secs_f64() * 1000.0);
                keys
            }
        };
        let mut partitions = Vec::with_capacity(outputs.len());
        let mut routes = Vec::with_capacity(outputs.len());
        let mut kept = Vec::with_capacity(outputs.len());
        for ((i, data, lambda, route), query) in outputs.into_iter().zip(query_keys) {
            match query {
                Ok(query) => {
                    // The function's route wins over the query's, part by part.
                    if routing {
                        routes.push(route.or(Route::from_keys(&query)));
                    }
                    if dynamic_partitioning {
                        partitions.push(PartitionKeys { query, lambda });
                    }
                    kept.push((i, data, BTreeMap::new(), Route::default()));
                }
                Err(message) => {
                    let lines = processed.errors.entry(PARTITIONING_FAILED).or_default();
                    let code = "DynamicPartitioning.MetadataExtractionFailed";
                    error_line(
                        lines,
                        &Failed { record: &batch[i], data: &data, code, message: &message },
                        attempt,
                        now_ms,
                        None,
                    );
                }
            }
        }
        outputs = kept;
        if dynamic_partitioning {
            processed.partitions = Some(partitions);
        }
        if routing {
            processed.routes = Some(routes);
        }
    }
    let (sources, mut records): (Vec<usize>, Vec<Vec<u8>>) =
        outputs.into_iter().map(|(i, data, _, _)| (i, data)).unzip();
    sluice_processing::append_delimiter(chain, &mut records);
    processed.records = records;
    processed.sources = sources;
    processed
}

/// A record that failed, with the data it had when it failed.
pub(super) struct Failed<'a> {
    /// The source record (for its arrival time).
    pub(super) record: &'a StoredRecord,
    /// The data to keep in `rawData`.
    pub(super) data: &'a [u8],
    /// `errorCode`.
    pub(super) code: &'a str,
    /// `errorMessage`.
    pub(super) message: &'a str,
}

/// Appends one of Firehose's error records (a JSON document and a newline).
pub(super) fn error_line(out: &mut Vec<u8>, failed: &Failed<'_>, attempt: u32, now_ms: u64, lambda_arn: Option<&str>) {
    let mut line = serde_json::json!({
        "attemptsMade": attempt,
        "arrivalTimestamp": failed.record.arrival_ms,
        "errorCode": failed.code,
        "errorMessage": failed.message,
        "attemptEndingTimestamp": now_ms,
        "rawData": base64_simd::STANDARD.encode_to_string(failed.data),
    });
    if let Some(arn) = lambda_arn {
        line["lambdaArn"] = serde_json::Value::String(arn.to_string());
    }
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
}
