//! CloudWatch Logs subscription envelopes (after decompression): `DATA_MESSAGE`s
//! carry log events, whose `message`s are what `DataMessageExtraction` delivers;
//! `CONTROL_MESSAGE`s (sent when a subscription is set up) carry none and are dropped.

use serde::Deserialize;

/// A parsed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// The messages of the log events, in order.
    Data(Vec<Vec<u8>>),
    /// A control message: nothing to deliver.
    Control,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    message_type: String,
    #[serde(default)]
    log_events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    message: String,
}

impl Envelope {
    /// Parses a decompressed envelope.
    pub fn parse(data: &[u8]) -> Result<Envelope, String> {
        let raw: Raw = serde_json::from_slice(data)
            .map_err(|e| format!("The record is not a CloudWatch Logs subscription message: {e}"))?;
        match raw.message_type.as_str() {
            "DATA_MESSAGE" => Ok(Envelope::Data(raw.log_events.into_iter().map(|e| e.message.into_bytes()).collect())),
            "CONTROL_MESSAGE" => Ok(Envelope::Control),
            other => Err(format!("Unknown CloudWatch Logs messageType {other:?}.")),
        }
    }
}
