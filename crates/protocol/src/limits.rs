//! Firehose's published limits, in one place. Units are last in every name.

/// Largest record, after base64 decoding (1,000 KiB).
pub const RECORD_BYTES_MAX: usize = 1_024_000;
/// Most records in one PutRecordBatch.
pub const BATCH_RECORDS_MAX: usize = 500;
/// Most record bytes (decoded) in one PutRecordBatch: 4 MiB.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest request body read. A full 4 MiB batch is about 5.6 MB once base64- and
/// JSON-encoded; anything past this is refused before it is parsed.
pub const REQUEST_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest body of any other operation. The largest real one, a CreateDeliveryStream
/// with every option, is a few KiB; these bodies are parsed into a JSON tree first,
/// which can take ten times the body's size (measured), so they are held small.
pub const CONTROL_REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
/// How many times its size a control-plane body is charged against the in-flight
/// body budget: an upper bound on its parsed tree (measured: under 10).
pub const CONTROL_REQUEST_BODY_CHARGE_FACTOR: usize = 16;

/// How large a request's body may be, and how many times its size it is charged
/// against the in-flight body budget, from its `X-Amz-Target`: puts carry records
/// and are decoded straight into them; every other body becomes a JSON tree first.
pub fn request_body_limit(target: Option<&str>) -> (usize, usize) {
    let operation = target.and_then(|t| t.strip_prefix(crate::TARGET_PREFIX)).and_then(|t| t.strip_prefix('.'));
    match operation {
        Some("PutRecord" | "PutRecordBatch") => (REQUEST_BODY_BYTES_MAX, 1),
        _ => (CONTROL_REQUEST_BODY_BYTES_MAX, CONTROL_REQUEST_BODY_CHARGE_FACTOR),
    }
}
/// Tags one stream may carry.
pub const TAGS_PER_STREAM_MAX: usize = 50;
/// Start plus Stop encryption calls per stream in 24 hours.
pub const ENCRYPTION_CHANGES_PER_DAY_MAX: usize = 25;
/// Delivery streams per account and region.
pub const STREAMS_PER_REGION_MAX: usize = 5_000;
/// Default page size of ListDeliveryStreams.
pub const LIST_STREAMS_LIMIT_DEFAULT: usize = 10;
/// Default page size of ListTagsForDeliveryStream.
pub const LIST_TAGS_LIMIT_DEFAULT: usize = 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_puts_get_the_large_body_limit() {
        for put in ["Firehose_20150804.PutRecord", "Firehose_20150804.PutRecordBatch"] {
            assert_eq!(request_body_limit(Some(put)), (REQUEST_BODY_BYTES_MAX, 1), "{put}");
        }
        let control = (CONTROL_REQUEST_BODY_BYTES_MAX, CONTROL_REQUEST_BODY_CHARGE_FACTOR);
        for other in [Some("Firehose_20150804.CreateDeliveryStream"), Some("Other.PutRecord"), Some("PutRecord"), None]
        {
            assert_eq!(request_body_limit(other), control, "{other:?}");
        }
    }
}
