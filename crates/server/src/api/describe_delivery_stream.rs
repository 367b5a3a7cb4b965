//! DescribeDeliveryStream: the stream as Firehose describes it, defaults filled in.

use sluice_protocol::dto::{
    DeliveryStreamDescription, DescribeDeliveryStreamInput, DescribeDeliveryStreamOutput, EncryptionDescription,
};

use super::{ok, AppState, Reply, RequestContext};
use crate::catalog::StreamRecord;

pub(super) fn encryption_description(state: &AppState, stream: &StreamRecord, now_ms: u64) -> EncryptionDescription {
    let e = &stream.encryption;
    EncryptionDescription {
        key_arn: e.key_arn.clone().filter(|_| e.key_type.as_deref() == Some("CUSTOMER_MANAGED_CMK")),
        key_type: e.key_type.clone(),
        status: e.status(now_ms, state.config.transition_ms).to_string(),
    }
}

/// `Source`: the Kinesis data stream read, from when; or the direct-put hint if one
/// was given.
fn source_description(stream: &StreamRecord) -> Option<serde_json::Value> {
    if let Some(kinesis) = &stream.kinesis_source {
        return Some(serde_json::json!({"KinesisStreamSourceDescription": {
            "KinesisStreamARN": kinesis.stream_arn,
            "RoleARN": kinesis.role_arn,
            "DeliveryStartTimestamp": stream.created_ms as f64 / 1000.0,
        }}));
    }
    stream
        .throughput_hint_mbs
        .map(|hint| serde_json::json!({"DirectPutSourceDescription": {"ThroughputHintInMBs": hint}}))
}

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: DescribeDeliveryStreamInput) -> Reply {
    let stream = state.stream(ctx, &input.name)?;
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let skip = input.exclusive_start_destination_id.as_deref() == Some(stream.destination_id.as_str());
    let destinations = if skip { vec![] } else { vec![stream.destination.describe(&stream.destination_id)] };
    let description = DeliveryStreamDescription {
        delivery_stream_name: stream.name.clone(),
        delivery_stream_arn: state.arn(&stream.region, &stream.name),
        delivery_stream_status: stream.status(ctx.now_ms).to_string(),
        delivery_stream_encryption_configuration: (!stream.reads_kinesis())
            .then(|| encryption_description(state, &stream, ctx.now_ms)),
        delivery_stream_type: stream.stream_type.clone(),
        version_id: stream.version_id.to_string(),
        create_timestamp: seconds(stream.created_ms),
        last_update_timestamp: stream.last_update_ms.map(seconds),
        source: source_description(&stream),
        destinations,
        has_more_destinations: false,
    };
    ok(&DescribeDeliveryStreamOutput { description })
}
