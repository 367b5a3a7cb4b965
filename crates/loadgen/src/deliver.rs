//! `deliver`: how fast records put into Sluice come out of a delivery. It creates
//! one stream, puts `--megabytes` of 1 KiB JSON records with PutRecordBatch over
//! several connections, and clocks from the first put until the last record is
//! delivered: to an HTTP endpoint it serves itself (gzip content encoding; it
//! gunzips, parses and counts every request, as a real receiver would), or into
//! objects partitioned by a JQ query over 100 key values (counted through
//! `DeliveryToS3.Records` in Sluice's metrics). Ingest and delivery run together,
//! as in production, on the same cores as this load generator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::Endpoint;

/// Records per PutRecordBatch and bytes per record.
const RECORDS_PER_REQUEST: usize = 500;
const RECORD_BYTES: usize = 1024;
/// Partition key values in `partitioned` mode.
const PARTITIONS: usize = 100;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    /// An HttpEndpoint stream, GZIP content encoding, to the receiver served here.
    Http,
    /// An ExtendedS3 stream with dynamic partitioning by a JQ query (100 partitions).
    Partitioned,
}

#[derive(clap::Args)]
pub(crate) struct DeliverArgs {
    /// Sluice's base URL, e.g. http://127.0.0.1:4573 (with `[http] allow_http = true`).
    #[arg(long)]
    endpoint: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Record data to put, in MB.
    #[arg(long, default_value_t = 500)]
    megabytes: usize,
    /// Concurrent put connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Where the HTTP receiver listens (http mode).
    #[arg(long, default_value = "127.0.0.1:4720")]
    receiver: SocketAddr,
    /// The stream's name.
    #[arg(long, default_value = "deliver")]
    stream: String,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// One PutRecordBatch body: 1 KiB JSON records, keys cycling over the partitions.
fn body(stream: &str) -> Bytes {
    let records: Vec<serde_json::Value> = (0..RECORDS_PER_REQUEST)
        .map(|i| {
            let head = format!(r#"{{"k":"key-{:03}","seq":{i},"pad":""#, i % PARTITIONS);
            let pad = "abcdefghij".repeat(RECORD_BYTES / 10);
            let record = format!("{head}{}\"}}", &pad[..RECORD_BYTES - head.len() - 2]);
            debug_assert_eq!(record.len(), RECORD_BYTES);
            serde_json::json!({ "Data": base64_simd::STANDARD.encode_to_string(record) })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"DeliveryStreamName": stream, "Records": records})).expect("json"),
    )
}

fn create_body(args: &DeliverArgs) -> serde_json::Value {
    let role = "arn:aws:iam::000000000000:role/r";
    match args.mode {
        Mode::Http => serde_json::json!({
            "DeliveryStreamName": args.stream,
            "HttpEndpointDestinationConfiguration": {
                "EndpointConfiguration": {"Url": format!("http://{}/", args.receiver)},
                "RequestConfiguration": {"ContentEncoding": "GZIP"},
                "BufferingHints": {"SizeInMBs": 4, "IntervalInSeconds": 0},
                "S3Configuration": {"RoleARN": role, "BucketARN": "arn:aws:s3:::bench"},
            },
        }),
        Mode::Partitioned => serde_json::json!({
            "DeliveryStreamName": args.stream,
            "ExtendedS3DestinationConfiguration": {
                "RoleARN": role,
                "BucketARN": "arn:aws:s3:::bench",
                "Prefix": "k=!{partitionKeyFromQuery:k}/",
                "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
                "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 0},
                "DynamicPartitioningConfiguration": {"Enabled": true},
                "ProcessingConfiguration": {"Enabled": true, "Processors": [{"Type": "MetadataExtraction",
                    "Parameters": [{"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{k: .k}"},
                                   {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]},
            },
        }),
    }
}

pub(crate) async fn run(args: DeliverArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::new(&args.endpoint, None, None)?;
    let delivered = Arc::new(AtomicU64::new(0));
    if let Mode::Http = args.mode {
        let listener = tokio::net::TcpListener::bind(args.receiver).await?;
        tokio::spawn(receive(listener, delivered.clone()));
    }
    let mut conn = endpoint.conn();
    let create = Bytes::from(serde_json::to_vec(&create_body(&args))?);
    let (status, reply) = conn.call(endpoint.request("CreateDeliveryStream", create)).await?;
    if status != 200 {
        bail!("CreateDeliveryStream answered {status}: {}", String::from_utf8_lossy(&reply));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = body(&args.stream);
    let n_requests = (args.megabytes * 1_000_000).div_ceil(RECORDS_PER_REQUEST * RECORD_BYTES);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (next, body, endpoint) = (next.clone(), body.clone(), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = endpoint.conn();
            while next.fetch_add(1, Ordering::Relaxed) < n_requests as u64 {
                loop {
                    let (status, _) = conn.call(endpoint.request("PutRecordBatch", body.clone())).await?;
                    if status == 200 {
                        break;
                    }
                    // 503 back-pressure: Sluice holds as much as its limits allow.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let put_s = started.elapsed().as_secs_f64();
    let n_records = (n_requests * RECORDS_PER_REQUEST) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = match args.mode {
            Mode::Http => delivered.load(Ordering::Relaxed),
            Mode::Partitioned => delivered_records(endpoint.address(), &args.stream).await.unwrap_or(0),
        };
        if done >= n_records {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n_records} records delivered after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "label": args.label,
        "mode": match args.mode { Mode::Http => "http-gzip", Mode::Partitioned => "jq-100-partitions" },
        "records": n_records,
        "record_bytes": RECORD_BYTES,
        "put_seconds": put_s,
        "seconds": seconds,
        "records_per_s": n_records as f64 / seconds,
        "record_mb_per_s": (n_records as usize * RECORD_BYTES) as f64 / seconds / 1e6,
    });
    println!("{out}");
    Ok(())
}

/// `DeliveryToS3_Records` of the stream, from Sluice's metrics.
async fn delivered_records(address: &str, stream: &str) -> anyhow::Result<u64> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let req = Request::get("/metrics").header("host", address).body(Full::new(Bytes::new()))?;
    let body = sender.send_request(req).await?.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let prefix = format!("DeliveryToS3_Records{{DeliveryStreamName=\"{stream}\"}} ");
    Ok(text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        as u64)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    request_id: String,
    records: Vec<DeliveredRecord>,
}

#[derive(serde::Deserialize)]
struct DeliveredRecord {
    data: String,
}

/// A Firehose HTTP endpoint receiver: gunzips, parses, decodes every record, counts
/// them, answers 200 with the request id.
async fn receive(listener: tokio::net::TcpListener, delivered: Arc<AtomicU64>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let delivered = delivered.clone();
                async move {
                    let gzip = req.headers().get("content-encoding").is_some_and(|v| v == "gzip");
                    let raw = req.into_body().collect().await?.to_bytes();
                    let reply = match parse(&raw, gzip) {
                        Ok((request_id, n)) => {
                            delivered.fetch_add(n, Ordering::Relaxed);
                            serde_json::json!({"requestId": request_id, "timestamp": 0}).to_string()
                        }
                        Err(e) => serde_json::json!({"requestId": "", "timestamp": 0, "errorMessage": e.to_string()})
                            .to_string(),
                    };
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(reply))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn parse(raw: &[u8], gzip: bool) -> anyhow::Result<(String, u64)> {
    use std::io::Read;
    let mut body = Vec::new();
    if gzip {
        flate2::read::GzDecoder::new(raw).read_to_end(&mut body).context("gunzip")?;
    } else {
        body.extend_from_slice(raw);
    }
    let delivery: Delivery = serde_json::from_slice(&body)?;
    for record in &delivery.records {
        base64_simd::STANDARD.decode_to_vec(&record.data).context("base64")?;
    }
    Ok((delivery.request_id, delivery.records.len() as u64))
}
