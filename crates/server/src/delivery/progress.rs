//! A stream's delivery progress, kept as the log's opaque state blob: for each lane
//! (the destination, the S3 backup) how far it has delivered and the batch it is
//! delivering now. The log may drop a record once every lane has delivered it, so
//! the acknowledged position is the lowest lane's. Every change is one atomic
//! commit to the log (state and acknowledged position together).
//!
//! Format (JSON): `{"format_version": 2, "lanes": {"destination": {"delivered_seq":
//! 41, "batch": {...}, "source": {"shardId-000000000000": "4959..."}}, "backup":
//! {...}}}` (`source` only for a Kinesis-sourced stream). Version 1 was a bare batch
//! description (one lane, the destination) and is still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_kinesis::Positions;

use super::key::DESTINATION_LANE;

/// Version of the state blob.
const PROGRESS_FORMAT_VERSION: u32 = 2;

/// A batch whose boundaries and key are decided, kept until it is delivered so a
/// retry (after a failure or a crash) uploads exactly the same object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Intent {
    /// Sequence number of the first record.
    pub(super) first_seq: u64,
    /// Sequence number of the last record.
    pub(super) last_seq: u64,
    /// Bucket name.
    pub(super) bucket: String,
    /// Object key.
    pub(super) key: String,
    /// `CompressionFormat`, as in the API.
    pub(super) compression: String,
    /// Where the batch's error records would have gone if it outlived the
    /// retention period (format of the first version; see `error_keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error_key: Option<String>,
    /// Where the batch's error records go, by error output type.
    #[serde(default)]
    pub(super) error_keys: BTreeMap<String, String>,
    /// The records' bytes (before compression), for the in-flight memory budget.
    #[serde(default)]
    pub(super) bytes: u64,
    /// For an HTTP endpoint batch: its `X-Amz-Firehose-Request-Id` (`bucket` and
    /// the error keys are then its `S3Configuration`'s, for records it fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) http_request_id: Option<String>,
    /// For an Iceberg batch: the id its snapshot carries (`bucket` and the error
    /// keys are then its `S3Configuration`'s, for records that fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) iceberg_batch_id: Option<String>,
    /// Dynamic partitioning: the objects' keys come from the records' partition
    /// keys at upload (`key` is then empty).
    #[serde(default)]
    pub(super) partitioned: bool,
    /// The stream's `VersionId` when the batch was decided (for partitioned keys).
    #[serde(default)]
    pub(super) version: u64,
    /// Arrival of the batch's oldest record (0 in batches recorded before this field).
    #[serde(default)]
    pub(super) oldest_arrival_ms: u64,
    /// The namespace of the batch's uuids (the installation's, see `key`); absent
    /// in batches recorded before installation ids, which keep the legacy one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) namespace: Option<String>,
    /// Multipart uploads this batch started, by object key: aborted before the
    /// batch is tried again (after a failure or a crash), so no parts are left.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) uploads: BTreeMap<String, String>,
    /// A Kinesis-sourced stream: the last Kinesis record of each shard in the batch.
    #[serde(default, skip_serializing_if = "Positions::is_empty")]
    pub(super) source: Positions,
}

impl Intent {
    /// The namespace the batch's uuids are in.
    pub(super) fn namespace(&self) -> uuid::Uuid {
        self.namespace.as_deref().and_then(|n| uuid::Uuid::parse_str(n).ok()).unwrap_or(super::key::LEGACY_NAMESPACE)
    }

    /// The key of the batch's error object of `output_type`.
    pub(super) fn error_key(&self, output_type: &str) -> Option<&str> {
        match self.error_keys.get(output_type) {
            Some(key) => Some(key),
            None if output_type == "retention-expired" => self.error_key.as_deref(),
            None => None,
        }
    }
}

/// One lane's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LaneProgress {
    /// Every record up to this one is delivered by this lane. `None` for a lane that
    /// has delivered nothing since it started (at the acknowledged position).
    pub(super) delivered_seq: Option<u64>,
    /// The batch being delivered.
    pub(super) batch: Option<Intent>,
    /// A Kinesis-sourced stream: the last Kinesis record of each shard this lane
    /// has delivered (with the log's records after `delivered_seq`, where reading
    /// the data stream resumes; see `source`).
    #[serde(default, skip_serializing_if = "Positions::is_empty")]
    pub(super) source: Positions,
}

/// Every lane's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Progress {
    format_version: u32,
    /// By lane name.
    pub(super) lanes: BTreeMap<String, LaneProgress>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress { format_version: PROGRESS_FORMAT_VERSION, lanes: BTreeMap::new() }
    }
}

impl Progress {
    /// Reads a committed state blob. An unreadable blob is logged and treated as
    /// empty: delivery then restarts from the acknowledged position, which can
    /// repeat an object's records under a new key but never loses any.
    pub(super) fn decode(stream_id: u64, blob: Option<&[u8]>) -> Progress {
        let Some(blob) = blob else { return Progress::default() };
        if let Ok(progress) = serde_json::from_slice::<Progress>(blob) {
            if progress.format_version <= PROGRESS_FORMAT_VERSION {
                return progress;
            }
        }
        if let Ok(intent) = serde_json::from_slice::<Intent>(blob) {
            let lane = LaneProgress { delivered_seq: None, batch: Some(intent), source: Positions::default() };
            return Progress {
                format_version: PROGRESS_FORMAT_VERSION,
                lanes: [(DESTINATION_LANE.into(), lane)].into(),
            };
        }
        tracing::error!(stream_id, "Unreadable delivery state; delivering again from the acknowledged position.");
        Progress::default()
    }

    /// The blob to commit.
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("progress serialises")
    }

    /// Up to where the log may drop records: what every lane has delivered (0,
    /// which never moves the position, while a lane has delivered nothing yet).
    pub(super) fn acknowledged_seq(&self) -> u64 {
        self.lanes.values().map(|lane| lane.delivered_seq.unwrap_or(0)).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(first_seq: u64, last_seq: u64) -> Intent {
        Intent {
            first_seq,
            last_seq,
            bucket: "b".into(),
            key: "k".into(),
            compression: "GZIP".into(),
            error_key: None,
            error_keys: BTreeMap::new(),
            bytes: 100,
            http_request_id: None,
            iceberg_batch_id: None,
            partitioned: false,
            version: 1,
            oldest_arrival_ms: 1,
            namespace: None,
            uploads: BTreeMap::new(),
            source: Positions::default(),
        }
    }

    #[test]
    fn the_slowest_lane_holds_the_log() {
        let mut progress = Progress::default();
        assert_eq!(progress.acknowledged_seq(), 0);
        progress
            .lanes
            .insert("destination".into(), LaneProgress { delivered_seq: Some(40), ..LaneProgress::default() });
        assert_eq!(progress.acknowledged_seq(), 40);
        progress.lanes.insert("backup".into(), LaneProgress::default());
        assert_eq!(progress.acknowledged_seq(), 0, "a lane that delivered nothing yet holds everything");
        progress.lanes.get_mut("backup").unwrap().delivered_seq = Some(12);
        assert_eq!(progress.acknowledged_seq(), 12);
    }

    #[test]
    fn round_trips_and_reads_the_single_batch_format() {
        let mut progress = Progress::default();
        progress.lanes.insert(
            "backup".into(),
            LaneProgress { delivered_seq: Some(3), batch: Some(intent(4, 9)), source: Positions::default() },
        );
        assert_eq!(Progress::decode(1, Some(&progress.encode())), progress);
        let old = serde_json::to_vec(&intent(5, 8)).unwrap();
        let read = Progress::decode(1, Some(&old));
        assert_eq!(read.lanes[DESTINATION_LANE].batch, Some(intent(5, 8)));
        assert_eq!(read.acknowledged_seq(), 0);
        assert_eq!(Progress::decode(1, Some(b"garbage")), Progress::default());
        assert_eq!(Progress::decode(1, None), Progress::default());
    }
}
