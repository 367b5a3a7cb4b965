//! PutRecordBatch: up to 500 records in one durable append, answered per record in
//! request order. All records of a batch share one commit, so they all succeed or
//! the whole call fails; `FailedPutCount` is 0 whenever the answer is 200.

use std::time::Instant;

use sluice_protocol::dto::{PutRecordBatchEntry, PutRecordBatchInput, PutRecordBatchOutput};

use super::ingest::{ingest, record_id};
use super::{ok, AppState, Reply, RequestContext};

pub(super) async fn handle(
    state: &AppState,
    ctx: &RequestContext,
    input: PutRecordBatchInput,
    started: Instant,
) -> Reply {
    let n_records = input.records.len() as u64;
    let n_bytes: u64 = input.records.iter().map(|r| r.len() as u64).sum();
    let (stream, appended) = ingest(state, ctx, &input.name, input.records).await?;
    let metrics = state.metrics.stream(stream.id, &input.name);
    metrics.incoming_bytes.increment(n_bytes);
    metrics.incoming_records.increment(n_records);
    metrics.incoming_put_requests.increment(1);
    metrics.put_record_batch_bytes.increment(n_bytes);
    metrics.put_record_batch_records.increment(n_records);
    metrics.put_record_batch_requests.increment(1);
    metrics.put_record_batch_latency.record(started.elapsed().as_secs_f64() * 1000.0);
    let request_responses = (appended.first_seq..=appended.last_seq)
        .map(|seq| PutRecordBatchEntry {
            record_id: Some(record_id(stream.id, seq)),
            error_code: None,
            error_message: None,
        })
        .collect();
    ok(&PutRecordBatchOutput { failed_put_count: 0, encrypted: appended.encrypted, request_responses })
}
