//! The Lambda processor: records go to the function through the Lambda Invoke API
//! (`POST <endpoint>/2015-03-31/functions/<function>/invocations`, SigV4-signed),
//! in invocations of at most `BufferSizeInMBs` of data and Firehose's 6 MB payload,
//! with Firehose's event and response contract. So it works against AWS Lambda,
//! a Lambda emulator, or any HTTP server speaking that path.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_protocol::processing::LambdaSettings;

use super::lane::Backoff;
use super::source::KinesisMetadata;
use crate::config::{HttpConfig, LambdaConfig};

/// Largest invocation payload Lambda accepts (request and response): 6 MB.
pub(super) const PAYLOAD_BYTES_MAX: usize = 6_000_000;

/// One record handed to the function.
pub(super) struct LambdaInput<'a> {
    /// Its arrival time (`approximateArrivalTimestamp`).
    pub(super) arrival_ms: u64,
    /// Its data.
    pub(super) data: &'a [u8],
    /// Read from a Kinesis data stream: what Kinesis said of it.
    pub(super) kinesis: Option<&'a KinesisMetadata>,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LambdaResult {
    /// `Ok`: the transformed data (and partition keys from `metadata`).
    Ok {
        /// Transformed data.
        data: Vec<u8>,
        /// `metadata.partitionKeys`.
        partition_keys: BTreeMap<String, String>,
        /// `metadata.otfMetadata`: the Iceberg table the record goes to.
        route: Route,
    },
    /// `Dropped`: not delivered, not an error.
    Dropped,
    /// `ProcessingFailed`, or the invocation or response failed for it.
    Failed {
        /// Error record `errorCode`.
        code: &'static str,
        /// Error record `errorMessage`.
        message: String,
    },
}

fn failed(code: &'static str, message: impl Into<String>) -> LambdaResult {
    LambdaResult::Failed { code, message: message.into() }
}

/// How one invocation went, for the metrics.
pub(super) struct InvocationStats {
    /// Invocations made (retries included) and how many succeeded.
    pub(super) attempts: u64,
    /// Successful ones.
    pub(super) successes: u64,
    /// Milliseconds spent invoking.
    pub(super) duration_ms: f64,
}

/// The client for the Lambda API.
pub(super) struct LambdaInvoker {
    client: reqwest::Client,
    config: LambdaConfig,
}

impl LambdaInvoker {
    /// With the configured timeout, and the same trusted CAs as HTTP endpoints.
    pub(super) fn new(config: &LambdaConfig, http: &HttpConfig) -> Result<LambdaInvoker, String> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(config.timeout_s));
        if let Some(pem) = &http.extra_ca_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem).map_err(|e| e.to_string())?);
        }
        Ok(LambdaInvoker { client: builder.build().map_err(|e| e.to_string())?, config: config.clone() })
    }

    /// Runs every input through the function and returns one result per input, in
    /// order. Invocation failures are retried `NumberOfRetries` times; after that
    /// the invocation's records fail.
    pub(super) async fn transform(
        &self,
        settings: &LambdaSettings,
        stream_arn: &str,
        source_arn: Option<&str>,
        region: &str,
        inputs: &[LambdaInput<'_>],
        stats: &mut InvocationStats,
    ) -> Vec<LambdaResult> {
        let mut results = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            let end = chunk_end(inputs, start, settings.buffer_bytes_max as usize);
            let ids: Vec<String> = (start..end).map(|i| format!("{i:010}")).collect();
            let event = event(stream_arn, source_arn, region, &ids, &inputs[start..end]);
            results.extend(self.invoke_with_retries(settings, &event, &ids, stats).await);
            start = end;
        }
        results
    }

    async fn invoke_with_retries(
        &self,
        settings: &LambdaSettings,
        event: &[u8],
        ids: &[String],
        stats: &mut InvocationStats,
    ) -> Vec<LambdaResult> {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.2);
        let mut tries = 0;
        loop {
            stats.attempts += 1;
            let started = Instant::now();
            let outcome = self.invoke(&settings.function, event).await;
            stats.duration_ms += started.elapsed().as_secs_f64() * 1000.0;
            match outcome {
                Ok(body) => {
                    stats.successes += 1;
                    return interpret(&body, ids);
                }
                Err((code, message)) if tries >= settings.retries_max => {
                    return ids.iter().map(|_| failed(code, message.clone())).collect();
                }
                Err((code, message)) => {
                    tracing::warn!(function = %settings.function, code, %message, "Invoking the Lambda function failed; retrying.");
                    tries += 1;
                    tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
                }
            }
        }
    }

    /// One synchronous invocation; the response payload, or why there is none.
    async fn invoke(&self, function: &str, event: &[u8]) -> Result<Vec<u8>, (&'static str, String)> {
        let (endpoint, region) = self.config.target(function);
        // An ARN's colons are `%3A` in the path, as the SDKs send them.
        let encoded = percent_encoding::utf8_percent_encode(function, crate::auth::UNRESERVED).to_string();
        let url = format!("{endpoint}/2015-03-31/functions/{encoded}/invocations");
        let mut request = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Amz-Invocation-Type", "RequestResponse");
        if let Some((id, secret)) = &self.config.credentials {
            for (name, value) in sign(&url, event, region, id, secret)? {
                request = request.header(name, value);
            }
        }
        let response = request.body(event.to_vec()).send().await.map_err(|e| {
            if e.is_timeout() {
                ("Lambda.FunctionTimeout", "Firehose encountered timeout errors when calling AWS Lambda.".to_string())
            } else {
                ("Lambda.InvokeFailed", e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let function_error = response.headers().get("X-Amz-Function-Error").is_some();
        let body = response.bytes().await.map_err(|e| ("Lambda.InvokeFailed", e.to_string()))?;
        let text = || String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        match status {
            200 if function_error => Err(("Lambda.FunctionError", text())),
            200 => Ok(body.to_vec()),
            403 => Err(("Lambda.InvokeAccessDenied", text())),
            404 => Err(("Lambda.ResourceNotFound", text())),
            429 => Err(("Lambda.InvokeLimitExceeded", text())),
            _ => Err(("Lambda.InvokeFailed", format!("HTTP {status}: {}", text()))),
        }
    }
}

/// The SigV4 headers for a Lambda invocation.
fn sign(
    url: &str,
    body: &[u8],
    region: &str,
    id: &str,
    secret: &str,
) -> Result<Vec<(String, String)>, (&'static str, String)> {
    let headers = [("content-type", "application/json"), ("x-amz-invocation-type", "RequestResponse")];
    sluice_aws_call::sign("POST", url, &headers, body, "lambda", region, (id, secret))
        .map_err(|e| ("Lambda.InvokeFailed", e))
}

/// Where the invocation starting at `start` ends: at most `buffer_bytes_max` of
/// data (at least one record) and within the 6 MB payload once base64-encoded.
fn chunk_end(inputs: &[LambdaInput<'_>], start: usize, buffer_bytes_max: usize) -> usize {
    let (mut data_bytes, mut payload_bytes) = (0usize, 512usize);
    let mut end = start;
    while end < inputs.len() {
        let n = inputs[end].data.len();
        let encoded = n.div_ceil(3) * 4 + 96;
        if end > start && (data_bytes + n > buffer_bytes_max || payload_bytes + encoded > PAYLOAD_BYTES_MAX) {
            break;
        }
        data_bytes += n;
        payload_bytes += encoded;
        end += 1;
    }
    end
}

/// Firehose's transformation event.
fn event(
    stream_arn: &str,
    source_arn: Option<&str>,
    region: &str,
    ids: &[String],
    inputs: &[LambdaInput<'_>],
) -> Vec<u8> {
    let records: Vec<serde_json::Value> = ids
        .iter()
        .zip(inputs)
        .map(|(id, input)| {
            let mut record = serde_json::json!({
                "recordId": id,
                "approximateArrivalTimestamp": input.arrival_ms,
                "data": base64_simd::STANDARD.encode_to_string(input.data),
            });
            if let Some(kinesis) = input.kinesis {
                record["kinesisRecordMetadata"] = serde_json::json!({
                    "shardId": kinesis.shard_id,
                    "partitionKey": kinesis.partition_key,
                    "sequenceNumber": kinesis.sequence_number,
                    "subsequenceNumber": kinesis.subsequence_number,
                    "approximateArrivalTimestamp": kinesis.arrival_ms,
                });
            }
            record
        })
        .collect();
    let mut event = serde_json::json!({
        "invocationId": uuid::Uuid::new_v4().to_string(),
        "deliveryStreamArn": stream_arn,
        "region": region,
        "records": records,
    });
    if let Some(source_arn) = source_arn {
        event["sourceKinesisStreamArn"] = serde_json::json!(source_arn);
    }
    serde_json::to_vec(&event).expect("events serialise")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    records: Vec<ResponseRecord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseRecord {
    record_id: String,
    result: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    // Either may be JSON null (a Go function's nil map or pointer): as if absent.
    #[serde(default)]
    partition_keys: Option<BTreeMap<String, String>>,
    #[serde(default)]
    otf_metadata: Option<Route>,
}

/// Where a record of an Iceberg stream goes (`otfMetadata`, or the same names among
/// the MetadataExtraction query's keys); unnamed parts fall back to the stream's
/// table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Route {
    /// `destinationDatabaseName`.
    #[serde(default)]
    pub(crate) destination_database_name: Option<String>,
    /// `destinationTableName`.
    #[serde(default)]
    pub(crate) destination_table_name: Option<String>,
    /// `operation`: `insert` (or unnamed); `update` and `delete` need row-level
    /// changes, which Sluice does not write.
    #[serde(default)]
    pub(crate) operation: Option<String>,
}

impl Route {
    /// The route the MetadataExtraction query's keys name, if any. A key the query
    /// gave as JSON `null` (a field the record lacks) names nothing.
    pub(crate) fn from_keys(keys: &BTreeMap<String, String>) -> Route {
        let named = |key: &str| keys.get(key).filter(|v| v.as_str() != "null").cloned();
        Route {
            destination_database_name: named("destinationDatabaseName"),
            destination_table_name: named("destinationTableName"),
            operation: named("operation"),
        }
    }

    /// This route, with what it leaves unnamed taken from `other`.
    pub(crate) fn or(self, other: Route) -> Route {
        Route {
            destination_database_name: self.destination_database_name.or(other.destination_database_name),
            destination_table_name: self.destination_table_name.or(other.destination_table_name),
            operation: self.operation.or(other.operation),
        }
    }
}

/// The function's answer for `ids`, one result per id. A response that is not the
/// contract's JSON, or that names a record it was not given, fails every record
/// (`Lambda.JsonProcessingException`); a record named twice fails every record
/// (`Lambda.DuplicatedRecordId`); a record not named fails (`Lambda.MissingRecordId`).
pub(super) fn interpret(body: &[u8], ids: &[String]) -> Vec<LambdaResult> {
    let all = |code, message: String| ids.iter().map(|_| failed(code, message.clone())).collect();
    let response: Response = match serde_json::from_slice(body) {
        Ok(response) => response,
        Err(e) => {
            return all("Lambda.JsonProcessingException", format!("The function's response cannot be parsed: {e}"))
        }
    };
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut results: Vec<Option<LambdaResult>> = vec![None; ids.len()];
    for record in response.records {
        let Some(&i) = index.get(record.record_id.as_str()) else {
            let message = format!("The function returned recordId {:?}, which it was not given.", record.record_id);
            return all("Lambda.JsonProcessingException", message);
        };
        if results[i].is_some() {
            let message = format!("The function returned recordId {} more than once.", record.record_id);
            return all("Lambda.DuplicatedRecordId", message);
        }
        results[i] = Some(match record.result.as_str() {
            "Ok" => match record.data.as_deref().map(|d| base64_simd::STANDARD.decode_to_vec(d)) {
                Some(Ok(data)) => {
                    let (partition_keys, route) = record
                        .metadata
                        .map(|m| (m.partition_keys.unwrap_or_default(), m.otf_metadata.unwrap_or_default()))
                        .unwrap_or_default();
                    LambdaResult::Ok { data, partition_keys, route }
                }
                _ => failed("Lambda.JsonProcessingException", "An Ok record's data is missing or not base64."),
            },
            "Dropped" => LambdaResult::Dropped,
            "ProcessingFailed" => failed("Lambda.ProcessingFailed", "The function marked the record ProcessingFailed."),
            other => failed("Lambda.JsonProcessingException", format!("Unknown result {other:?}.")),
        });
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| failed("Lambda.MissingRecordId", "The function did not return this record.")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:010}")).collect()
    }

    #[test]
    fn results_follow_the_contract() {
        let body = br#"{"records":[
            {"recordId":"0000000000","result":"Ok","data":"SEk=","metadata":{"partitionKeys":{"k":"v"}}},
            {"recordId":"0000000001","result":"Dropped"},
            {"recordId":"0000000002","result":"ProcessingFailed","data":"eA=="},
            {"recordId":"0000000003","result":"Ok"}]}"#;
        let results = interpret(body, &ids(5));
        assert_eq!(
            results[0],
            LambdaResult::Ok {
                data: b"HI".to_vec(),
                partition_keys: [("k".into(), "v".into())].into(),
                route: Route::default()
            }
        );
        assert_eq!(results[1], LambdaResult::Dropped);
        assert!(matches!(results[2], LambdaResult::Failed { code: "Lambda.ProcessingFailed", .. }));
        assert!(matches!(results[3], LambdaResult::Failed { code: "Lambda.JsonProcessingException", .. }));
        assert!(matches!(results[4], LambdaResult::Failed { code: "Lambda.MissingRecordId", .. }));
    }

    #[test]
    fn otf_metadata_names_an_iceberg_route() {
        let body = br#"{"records":[
            {"recordId":"0000000000","result":"Ok","data":"SEk=","metadata":{"otfMetadata":
                {"destinationDatabaseName":"lake","destinationTableName":"audit","operation":"insert"}}},
            {"recordId":"0000000001","result":"Ok","data":"SEk=","metadata":{"otfMetadata":{"destinationTableName":"t"}}},
            {"recordId":"0000000002","result":"Ok","data":"SEk=","metadata":{"partitionKeys":null,"otfMetadata":null}}]}"#;
        let results = interpret(body, &ids(3));
        assert_eq!(
            results[2],
            LambdaResult::Ok { data: b"HI".to_vec(), partition_keys: BTreeMap::new(), route: Route::default() },
            "null metadata members are as if absent"
        );
        let route_of = |r: &LambdaResult| match r {
            LambdaResult::Ok { route, .. } => route.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            route_of(&results[0]),
            Route {
                destination_database_name: Some("lake".into()),
                destination_table_name: Some("audit".into()),
                operation: Some("insert".into())
            }
        );
        assert_eq!(route_of(&results[1]).destination_table_name.as_deref(), Some("t"));
        assert_eq!(route_of(&results[1]).destination_database_name, None);
        // The query's keys route too, a JSON null naming nothing; the function's wins.
        let keys: BTreeMap<String, String> =
            [("destinationTableName".into(), "null".into()), ("destinationDatabaseName".into(), "db".into())].into();
        let from_query = Route::from_keys(&keys);
        assert_eq!(from_query.destination_table_name, None);
        assert_eq!(route_of(&results[1]).or(from_query).destination_database_name.as_deref(), Some("db"));
    }

    #[test]
    fn untrustworthy_responses_fail_every_record() {
        let duplicated = br#"{"records":[{"recordId":"0000000000","result":"Dropped"},{"recordId":"0000000000","result":"Dropped"}]}"#;
        let unknown = br#"{"records":[{"recordId":"nope","result":"Dropped"}]}"#;
        for (body, code) in [
            (&duplicated[..], "Lambda.DuplicatedRecordId"),
            (&unknown[..], "Lambda.JsonProcessingException"),
            (b"<html>", "Lambda.JsonProcessingException"),
        ] {
            let results = interpret(body, &ids(2));
            assert!(
                results.iter().all(|r| matches!(r, LambdaResult::Failed { code: c, .. } if *c == code)),
                "{results:?}"
            );
        }
    }

    #[test]
    fn invocations_respect_the_buffer_size_and_the_payload_limit() {
        let small = vec![0u8; 400 << 10];
        let inputs: Vec<LambdaInput<'_>> =
            (0..10).map(|_| LambdaInput { arrival_ms: 0, data: &small, kinesis: None }).collect();
        assert_eq!(chunk_end(&inputs, 0, 1 << 20), 2, "1 MiB of data per invocation");
        assert_eq!(chunk_end(&inputs, 2, 3 << 20), 9, "3 MiB of 400 KiB records");
        let big = vec![0u8; 5 << 20];
        let one = [
            LambdaInput { arrival_ms: 0, data: &big, kinesis: None },
            LambdaInput { arrival_ms: 0, data: &small, kinesis: None },
        ];
        assert_eq!(chunk_end(&one, 0, 1 << 20), 1, "a record larger than the buffer goes alone");
    }
}
