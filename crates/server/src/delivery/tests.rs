//! Delivery on tokio's paused clock: buffering intervals and sizes, retry backoff,
//! retention expiry and the S3 backup lane, against the real log and local-directory
//! buckets, with time moving only when the test sleeps.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_protocol::destination::{Destination, DestinationKind};
use sluice_wal::{Wal, WalOptions};
use tokio::time::sleep;

use super::progress::Progress;
use super::{Clock, Delivery, DeliveryEngine};
use crate::api::AppState;
use crate::catalog::{Catalog, CatalogError, StreamRecord};
use crate::config::{RawConfig, RawDeliveryConfig, RawHttpConfig};
use crate::keys::KeyRegistry;
use crate::log::{Encryption, WalLog};
use crate::metrics::Metrics;

struct Harness {
    dir: tempfile::TempDir,
    state: Arc<AppState>,
}

impl Harness {
    fn new(retention_s: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawConfig {
            delivery: RawDeliveryConfig { retention_s: Some(retention_s), ..RawDeliveryConfig::default() },
            http: RawHttpConfig { allow_http: Some(true), ..RawHttpConfig::default() },
            ..RawConfig::default()
        };
        let config = raw.into_config(None, Some(dir.path().to_path_buf()), None).unwrap();
        let keys = Arc::new(KeyRegistry::load(&config.master_key_file, &[]).unwrap());
        let (wal, _) = Wal::open(&dir.path().join("wal"), WalOptions::default(), keys.clone()).unwrap();
        let state = Arc::new(AppState {
            catalog: Arc::new(Catalog::open(dir.path()).unwrap()),
            config,
            log: Arc::new(WalLog::new(Arc::new(wal))),
            keys,
            metrics: Metrics::install(),
            body_kib_in_flight: tokio::sync::Semaphore::new(1),
            throttle: crate::throttle::Throttle::new(Default::default()),
            disk: crate::resources::DiskState::new(dir.path().join("wal")),
            installation_id: uuid::Uuid::new_v4(),
            flushes: Arc::default(),
            iceberg: tokio::sync::OnceCell::new(),
        });
        Harness { dir, state }
    }

    fn bucket(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("buckets").join(name);
        fs::create_dir_all(&path).unwrap();
        path
    }

    /// An ACTIVE ExtendedS3 stream.
    async fn create(&self, name: &str, config: Value) -> u64 {
        self.create_kind(name, DestinationKind::ExtendedS3, config).await
    }

    /// An ACTIVE stream of any destination kind.
    async fn create_kind(&self, name: &str, kind: DestinationKind, config: Value) -> u64 {
        let destination = Destination { kind, config: config.as_object().unwrap().clone() };
        destination.validate().unwrap();
        let id = self
            .state
            .catalog
            .update(|catalog| {
                let id = catalog.next_stream_id;
                catalog.next_stream_id += 1;
                let record = StreamRecord::for_test(id, name, destination.clone());
                catalog.streams.insert(("us-east-1".into(), name.into()), Arc::new(record));
                Ok::<_, CatalogError>(id)
            })
            .await
            .unwrap();
        self.state.log.create_stream(id, Vec::new()).await.unwrap();
        id
    }

    async fn put(&self, stream: u64, records: &[&[u8]]) {
        let records = records.iter().map(|r| r.to_vec()).collect();
        self.state.log.append(stream, records, Encryption::None).await.unwrap();
    }

    fn start(&self) -> DeliveryEngine {
        DeliveryEngine::start(Delivery::new(self.state.clone(), Clock::tokio()).unwrap())
    }

    async fn progress(&self, stream: u64) -> Progress {
        Progress::decode(stream, self.state.log.state(stream).await.unwrap().as_deref())
    }
}

/// Every file under `dir` (recursively), with its contents, sorted by path.
fn objects(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push((path.strip_prefix(root).unwrap().display().to_string(), fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

fn bodies(dir: &Path) -> Vec<Vec<u8>> {
    objects(dir).into_iter().map(|(_, body)| body).collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_for_its_interval() {
    let h = Harness::new(86_400);
    let bucket = h.bucket("interval");
    let id = h
        .create(
            "interval",
            json!({"BucketARN": "arn:aws:s3:::interval", "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60}}),
        )
        .await;
    h.put(id, &[b"first,", b"second"]).await;
    let engine = h.start();
    sleep(Duration::from_secs(58)).await;
    assert!(objects(&bucket).is_empty(), "delivered before IntervalInSeconds");
    sleep(Duration::from_secs(4)).await;
    assert_eq!(bodies(&bucket), vec![b"first,second".to_vec()]);
    assert_eq!(h.progress(id).await.acknowledged_seq(), 2);
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_buffer_is_delivered_at_once_and_the_rest_at_its_interval() {
    let h = Harness::new(86_400);
    let bucket = h.bucket("size");
    let id = h
        .create(
            "size",
            json!({"BucketARN": "arn:aws:s3:::size", "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 900}}),
        )
        .await;
    let record = vec![b'x'; 100 << 10];
    let records: Vec<&[u8]> = (0..15).map(|_| record.as_slice()).collect();
    h.put(id, &records).await;
    let engine = h.start();
    sleep(Duration::from_secs(1)).await;
    let first = bodies(&bucket);
    assert_eq!(first.len(), 1, "SizeInMBs reached: one object without waiting for the interval");
    assert!(first[0].len() >= 1 << 20, "the full batch holds at least SizeInMBs: {}", first[0].len());
    sleep(Duration::from_secs(850)).await;
    assert_eq!(bodies(&bucket).len(), 1, "the rest waits for its interval");
    sleep(Duration::from_secs(60)).await;
    let all = bodies(&bucket);
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().map(Vec::len).sum::<usize>(), 15 * record.len(), "every record once");
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn failed_uploads_back_off_exponentially() {
    let h = Harness::new(86_400);
    let id = h
        .create(
            "backoff",
            json!({"BucketARN": "arn:aws:s3:::backoff", "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0}}),
        )
        .await;
    h.put(id, &[b"r"]).await;
    let engine = h.start();
    // Attempts at 0 s, then after 1, 2, 4, 8 s (±20%): the fifth falls between 12
    // and 18 s. The bucket appears at 10 s.
    sleep(Duration::from_secs(10)).await;
    let bucket = h.bucket("backoff");
    sleep(Duration::from_millis(1_900)).await;
    assert!(objects(&bucket).is_empty(), "retried sooner than the backoff allows");
    sleep(Duration::from_millis(6_600)).await;
    assert_eq!(bodies(&bucket), vec![b"r".to_vec()], "retried later than the backoff allows");
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn records_past_retention_go_to_the_error_prefix_and_release_the_log() {
    let h = Harness::new(30);
    let bucket = h.bucket("expiry");
    // A file where the data prefix's directory should be: every upload fails.
    fs::write(bucket.join("data"), b"in the way").unwrap();
    let id = h
        .create(
            "expiry",
            json!({
                "BucketARN": "arn:aws:s3:::expiry",
                "Prefix": "data/",
                "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0},
            }),
        )
        .await;
    h.put(id, &[b"one", b"two"]).await;
    let engine = h.start();
    sleep(Duration::from_secs(24)).await;
    assert!(!bucket.join("errors").exists(), "given up before the retention period");
    assert_eq!(h.progress(id).await.acknowledged_seq(), 0, "still held in the log");
    sleep(Duration::from_secs(100)).await;
    let errors = objects(&bucket.join("errors"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0.starts_with("retention-expired/"), "{}", errors[0].0);
    let lines: Vec<Value> =
        String::from_utf8(errors[0].1.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let raw: Vec<&str> = lines.iter().map(|l| l["rawData"].as_str().unwrap()).collect();
    assert_eq!(raw, ["b25l", "dHdv"], "base64 of each record, in order");
    assert_eq!(lines[0]["errorCode"], "S3.DeliveryFailed");
    assert!(lines[0]["attemptsMade"].as_u64().unwrap() >= 5);
    assert_eq!(h.progress(id).await.acknowledged_seq(), 2, "expired records are released");
    assert_eq!(fs::read(bucket.join("data")).unwrap(), b"in the way");
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn the_backup_lane_buffers_on_its_own_and_holds_the_log() {
    let h = Harness::new(86_400);
    let main = h.bucket("main");
    let id = h
        .create(
            "backed-up",
            json!({
                "BucketARN": "arn:aws:s3:::main",
                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 300},
                "S3BackupMode": "Enabled",
                "S3BackupConfiguration": {
                    "BucketARN": "arn:aws:s3:::backup",
                    "Prefix": "source/",
                    "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 10},
                },
            }),
        )
        .await;
    h.put(id, &[b"a", b"b"]).await;
    let engine = h.start();
    sleep(Duration::from_secs(20)).await;
    assert!(objects(&main).is_empty(), "the destination keeps its own interval");
    let backup = h.bucket("backup");
    // The backup bucket was missing: its lane retries, the log holds the records.
    assert_eq!(h.progress(id).await.acknowledged_seq(), 0);
    sleep(Duration::from_secs(300)).await;
    assert_eq!(bodies(&main), vec![b"ab".to_vec()]);
    let backed_up = objects(&backup);
    assert_eq!(backed_up.len(), 1);
    assert!(backed_up[0].0.starts_with("source/"), "{}", backed_up[0].0);
    assert_eq!(backed_up[0].1, b"ab");
    let progress = h.progress(id).await;
    assert_eq!(progress.lanes["destination"].delivered_seq, Some(2));
    assert_eq!(progress.lanes["backup"].delivered_seq, Some(2));
    assert_eq!(progress.acknowledged_seq(), 2);
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn http_retries_back_off_until_the_retry_duration_then_go_to_s3() {
    let h = Harness::new(86_400);
    let bucket = h.bucket("http-failed");
    // Nothing listens there: every attempt fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let id = h.create_kind(
        "refused",
        DestinationKind::HttpEndpoint,
        json!({
            "EndpointConfiguration": {"Url": format!("http://{closed}/")},
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0},
            "RetryOptions": {"DurationInSeconds": 300},
            "S3Configuration": {"BucketARN": "arn:aws:s3:::http-failed", "ErrorOutputPrefix": "failed/!{firehose:error-output-type}/"},
        }),
    ).await;
    h.put(id, &[b"undeliverable"]).await;
    let engine = h.start();
    sleep(Duration::from_secs(280)).await;
    assert!(objects(&bucket).is_empty(), "gave up before RetryOptions.DurationInSeconds");
    sleep(Duration::from_secs(40)).await;
    let failed = objects(&bucket);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].0.starts_with("failed/http-endpoint-failed/"), "{}", failed[0].0);
    let record: Value = serde_json::from_slice(failed[0].1.trim_ascii_end()).unwrap();
    assert_eq!(record["rawData"], "dW5kZWxpdmVyYWJsZQ==");
    assert_eq!(record["errorCode"], "HttpEndpoint.ConnectionFailed");
    // Waits of 1, 2, 4, ... 64 s, then 120 s (±15%) add up to at most 284 s; the
    // last wait ends at 300 s: ten attempts in all.
    assert_eq!(record["attemptsMade"], 10);
    assert_eq!(h.progress(id).await.acknowledged_seq(), 1);
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_taken_over_stops_and_the_next_one_delivers_once() {
    let h = Harness::new(86_400);
    let bucket = h.bucket("fenced");
    let id = h
        .create(
            "fenced",
            json!({"BucketARN": "arn:aws:s3:::fenced", "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60}}),
        )
        .await;
    h.put(id, &[b"one,", b"two"]).await;
    let engine = h.start();
    sleep(Duration::from_secs(1)).await;
    // A later delivery of the stream begins (as a node taking the stream over
    // would): the running worker's commits are refused from now on.
    let later = h.state.log.take_over(id).await.unwrap();
    let refused = h.state.log.commit(crate::log::Tenure { stream: id, token: later.tenure.token - 1 }, 2, Vec::new());
    assert!(matches!(refused.await, Err(crate::log::LogError::Fenced(_))), "an earlier tenure commits nothing");
    sleep(Duration::from_secs(65)).await;
    assert_eq!(bodies(&bucket), vec![b"one,two".to_vec()], "delivered by the engine's next worker, once");
    assert_eq!(h.progress(id).await.acknowledged_seq(), 2);
    engine.stop(Duration::from_secs(5)).await;
}
