//! PutRecordBatch: up to 500 records in one durable append, answered per record in
//! request order. The records admitted by the stream's throughput limits share one
//! commit, so they all succeed or the whole call fails; the records over the limits
//! (the last ones) are answered `ServiceUnavailableException` / `Slow down.` and
//! counted in `FailedPutCount`, as Firehose does.

use std::time::Instant;

use sluice_protocol::dto::{PutRecordBatchEntry, PutRecordBatchInput, PutRecordBatchOutput};

use super::ingest::{ingest, record_id, SLOW_DOWN};
use super::{ok, AppState, Reply, RequestContext};

pub(super) async fn handle(
    state: &AppState,
    ctx: &RequestContext,
    input: PutRecordBatchInput,
    started: Instant,
) -> Reply {
    let n_sent = input.records.len();
    let ingested = ingest(state, ctx, &input.name, input.records, true).await?;
    let stream = ingested.stream;
    let n_records = (n_sent - ingested.n_throttled) as u64;
    let n_bytes = ingested.n_bytes;
    let metrics = state.metrics.stream(stream.id, &input.name);
    metrics.incoming_bytes.increment(n_bytes);
    metrics.incoming_records.increment(n_records);
    metrics.incoming_put_requests.increment(1);
    metrics.put_record_batch_bytes.increment(n_bytes);
    metrics.put_record_batch_records.increment(n_records);
    metrics.put_record_batch_requests.increment(1);
    metrics.put_record_batch_latency.record(started.elapsed().as_secs_f64() * 1000.0);
    let mut request_responses: Vec<PutRecordBatchEntry> = match &ingested.appended {
        Some(appended) => (appended.first_seq..=appended.last_seq)
            .map(|seq| PutRecordBatchEntry {
                record_id: Some(record_id(stream.id, seq)),
                error_code: None,
                error_message: None,
            })
            .collect(),
        None => Vec::new(),
    };
    request_responses.extend((0..ingested.n_throttled).map(|_| PutRecordBatchEntry {
        record_id: None,
        error_code: Some("ServiceUnavailableException".into()),
        error_message: Some(SLOW_DOWN.into()),
    }));
    let encrypted = ingested.appended.as_ref().map_or(stream.encryption.key_ref().is_some(), |a| a.encrypted);
    ok(&PutRecordBatchOutput { failed_put_count: ingested.n_throttled, encrypted, request_responses })
}
