//! PutRecord: one record, answered with its id once durable.

use std::time::Instant;

use sluice_protocol::dto::{PutRecordInput, PutRecordOutput};

use super::ingest::{ingest, record_id};
use super::{ok, AppState, Reply, RequestContext};

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: PutRecordInput, started: Instant) -> Reply {
    let n_bytes = input.data.len() as u64;
    let ingested = ingest(state, ctx, &input.name, vec![input.data], false).await?;
    let (stream, appended) = (ingested.stream, ingested.appended.expect("a PutRecord is stored whole or refused"));
    let metrics = state.metrics.stream(stream.id, &input.name);
    metrics.incoming_bytes.increment(n_bytes);
    metrics.incoming_records.increment(1);
    metrics.incoming_put_requests.increment(1);
    metrics.put_record_bytes.increment(n_bytes);
    metrics.put_record_requests.increment(1);
    metrics.put_record_latency.record(started.elapsed().as_secs_f64() * 1000.0);
    ok(&PutRecordOutput { record_id: record_id(stream.id, appended.first_seq), encrypted: appended.encrypted })
}
