//! The reader's handling of what kinesalite never does: throttled calls
//! (`ProvisionedThroughputExceededException`), an expired shard iterator, and a
//! parent shard closed by a split, against a small Kinesis API that answers so on cue.
//! The happy paths run against kinesalite in `tests/e2e/test_kinesis_source.py`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sluice_kinesis::reader::{BoxFuture, Call};
use sluice_kinesis::{Client, ClientConfig, Ended, Positions, ReaderOptions, Sink, SinkError, SourceRecord};
use tokio::sync::watch;

/// What the scripted server was asked, and what it still has to refuse.
#[derive(Default)]
struct Script {
    /// Calls to refuse with `ProvisionedThroughputExceededException`, by operation.
    throttle: HashMap<&'static str, u32>,
    /// GetRecords calls to answer `ExpiredIteratorException` after the first read.
    expire_after_first_read: u32,
    /// Every GetShardIterator request.
    iterator_requests: Vec<Value>,
    /// Shards whose records were served, in order.
    served: Vec<String>,
}

fn shards() -> Value {
    json!([
        {"ShardId": "parent", "HashKeyRange": {}, "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"}},
        {"ShardId": "child", "ParentShardId": "parent", "HashKeyRange": {}, "SequenceNumberRange": {"StartingSequenceNumber": "10"}},
    ])
}

/// Records per shard: the parent's three are all it will ever have (it is closed);
/// the child's two are followed by an open end.
fn records_of(shard: &str) -> Vec<(&'static str, &'static str)> {
    match shard {
        "parent" => vec![("1", "p1"), ("2", "p2"), ("3", "p3")],
        _ => vec![("11", "c1"), ("12", "c2")],
    }
}

fn answer(script: &Mutex<Script>, target: &str, input: Value) -> (u16, Value) {
    let mut script = script.lock().unwrap();
    let operation = target.trim_start_matches("Kinesis_20131202.");
    let key: &'static str = match operation {
        "DescribeStream" => "DescribeStream",
        "GetShardIterator" => "GetShardIterator",
        _ => "GetRecords",
    };
    if let Some(n) = script.throttle.get_mut(key).filter(|n| **n > 0) {
        *n -= 1;
        return (400, json!({"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded"}));
    }
    match operation {
        "DescribeStream" => {
            (200, json!({"StreamDescription": {"Shards": shards(), "HasMoreShards": false, "StreamStatus": "ACTIVE"}}))
        }
        "GetShardIterator" => {
            script.iterator_requests.push(input.clone());
            let shard = input["ShardId"].as_str().unwrap().to_string();
            // The iterator names the shard and the index of the next record.
            let next = match input["ShardIteratorType"].as_str() {
                Some("AFTER_SEQUENCE_NUMBER") => {
                    let after = input["StartingSequenceNumber"].as_str().unwrap();
                    records_of(&shard).iter().position(|(s, _)| *s == after).map_or(0, |i| i + 1)
                }
                _ => 0,
            };
            (200, json!({"ShardIterator": format!("{shard}/{next}")}))
        }
        _ => {
            let iterator = input["ShardIterator"].as_str().unwrap();
            let (shard, index) = iterator.split_once('/').unwrap();
            let index: usize = index.parse().unwrap();
            if index > 0 && script.expire_after_first_read > 0 {
                script.expire_after_first_read -= 1;
                return (400, json!({"__type": "ExpiredIteratorException", "message": "Iterator expired"}));
            }
            let all = records_of(shard);
            // One record per call, so that the reader goes round several times.
            let batch: Vec<Value> = all
                .iter()
                .skip(index)
                .take(1)
                .map(|(seq, data)| {
                    json!({
                        "SequenceNumber": seq, "PartitionKey": "k", "ApproximateArrivalTimestamp": 1700000000.5,
                        "Data": base64_simd::STANDARD.encode_to_string(data.as_bytes()),
                    })
                })
                .collect();
            if !batch.is_empty() {
                script.served.push(shard.to_string());
            }
            let next = index + batch.len();
            let next_iterator =
                if shard == "parent" && next >= all.len() { Value::Null } else { json!(format!("{shard}/{next}")) };
            (200, json!({"Records": batch, "NextShardIterator": next_iterator, "MillisBehindLatest": 0}))
        }
    }
}

async fn serve(script: Arc<Mutex<Script>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let script = script.clone();
                    async move {
                        let target = request.headers()["x-amz-target"].to_str().unwrap().to_string();
                        assert!(request.headers().contains_key("authorization"), "calls are signed");
                        let body = request.into_body().collect().await?.to_bytes();
                        let (status, reply) = answer(&script, &target, serde_json::from_slice(&body).unwrap());
                        let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    address
}

#[derive(Default)]
struct Collected {
    records: Vec<SourceRecord>,
    throttled: Vec<Call>,
    ended: Vec<String>,
}

struct CollectingSink(Mutex<Collected>);

impl Sink for CollectingSink {
    fn append<'a>(&'a self, records: &'a [SourceRecord]) -> BoxFuture<'a, Result<(), SinkError>> {
        self.0.lock().unwrap().records.extend_from_slice(records);
        Box::pin(std::future::ready(Ok(())))
    }

    fn throttled(&self, call: Call) {
        self.0.lock().unwrap().throttled.push(call);
    }

    fn shard_ended(&self, shard_id: &str) {
        self.0.lock().unwrap().ended.push(shard_id.to_string());
    }
}

#[tokio::test]
async fn throttling_expired_iterators_and_a_split_lose_nothing_and_keep_order() {
    let script = Arc::new(Mutex::new(Script {
        throttle: [("DescribeStream", 1), ("GetShardIterator", 1), ("GetRecords", 2)].into(),
        expire_after_first_read: 1,
        ..Script::default()
    }));
    let address = serve(script.clone()).await;
    let client = Client::new(ClientConfig {
        endpoint: format!("http://{address}"),
        region: "us-east-1".into(),
        credentials: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let mut options = ReaderOptions::new("s", 0);
    options.idle_poll = Duration::from_millis(10);
    options.busy_poll = Duration::from_millis(1);
    options.backoff_min = Duration::from_millis(1);
    options.backoff_max = Duration::from_millis(5);
    let sink = Arc::new(CollectingSink(Mutex::new(Collected::default())));
    let (stop, shutdown) = watch::channel(false);
    let reader = tokio::spawn(sluice_kinesis::run(client, options, Positions::default(), sink.clone(), shutdown));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.0.lock().unwrap().records.len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "read {:?}", sink.0.lock().unwrap().records);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(true).unwrap();
    assert_eq!(reader.await.unwrap(), Ended::Shutdown);
    let collected = sink.0.lock().unwrap();
    let data: Vec<&[u8]> = collected.records.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(data, [&b"p1"[..], b"p2", b"p3", b"c1", b"c2"], "each once, the parent before its child");
    assert!(collected.records.iter().all(|r| r.last_of_record && r.arrival_ms == 1_700_000_000_500));
    assert_eq!(collected.ended, ["parent"]);
    let mut throttled = collected.throttled.clone();
    throttled.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(throttled, [Call::DescribeStream, Call::GetRecords, Call::GetRecords, Call::GetShardIterator]);
    // The expired iterator was replaced by one after the last record read.
    let script = script.lock().unwrap();
    let resumed = script.iterator_requests.iter().find(|r| r["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER");
    assert_eq!(
        resumed.map(|r| r["StartingSequenceNumber"].clone()),
        Some(json!("1")),
        "{:?}",
        script.iterator_requests
    );
    assert_eq!(script.served, ["parent", "parent", "parent", "child", "child"]);
}
