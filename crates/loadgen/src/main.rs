//! `sluice-loadgen`: drives a Firehose endpoint with PutRecord or PutRecordBatch over
//! many keep-alive HTTP/1.1 connections and prints one JSON line of figures; `floor`,
//! a minimal hyper server that reads the body and answers a fixed JSON, the ceiling
//! any HTTP server on this machine can reach; and `deliver`, which measures how fast
//! records put in come out of a delivery (to an HTTP endpoint it serves itself, or
//! into partitioned objects). Benchmarks only, never tests.

mod deliver;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load and print figures as JSON.
    Run(RunArgs),
    /// Serve the floor: read the body, answer a fixed PutRecordBatch-shaped JSON.
    Floor {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:4599")]
        listen: SocketAddr,
    },
    /// Put records and measure how fast they are delivered; print figures as JSON.
    Deliver(deliver::DeliverArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Op {
    PutRecord,
    PutRecordBatch,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Base URL, e.g. http://127.0.0.1:4573.
    #[arg(long)]
    endpoint: String,
    #[arg(long, value_enum)]
    op: Op,
    /// Bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Records per PutRecordBatch.
    #[arg(long, default_value_t = 500)]
    records: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Streams to spread requests over (`bench-0` .. `bench-N-1`).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds to measure, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Create the streams first (CreateDeliveryStream), optionally encrypted.
    #[arg(long)]
    create: bool,
    /// With --create: turn on encryption at rest for the streams.
    #[arg(long)]
    encrypted: bool,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Floor { listen } => runtime.block_on(floor(listen)),
        Command::Deliver(args) => runtime.block_on(deliver::run(args)),
    }
}

fn body_for(args: &RunArgs, stream: &str) -> Bytes {
    let data = base64_simd::STANDARD.encode_to_string(vec![b'x'; args.record_bytes]);
    let json = match args.op {
        Op::PutRecord => serde_json::json!({"DeliveryStreamName": stream, "Record": {"Data": data}}),
        Op::PutRecordBatch => {
            let records: Vec<_> = (0..args.records).map(|_| serde_json::json!({"Data": data})).collect();
            serde_json::json!({"DeliveryStreamName": stream, "Records": records})
        }
    };
    Bytes::from(serde_json::to_vec(&json).expect("json"))
}

pub(crate) fn request(authority: &str, target: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post("/")
        .header("host", authority)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("Firehose_20150804.{target}"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/us-east-1/firehose/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=0000",
        )
        .header("x-amz-date", "20261121T000000Z")
        .body(Full::new(body))
        .expect("request")
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive connection that reconnects when the server closes it (moto's
/// development server answers HTTP/1.0-style, one request per connection).
pub(crate) struct Conn {
    address: String,
    sender: Option<Sender>,
}

impl Conn {
    pub(crate) fn new(address: &str) -> Conn {
        Conn { address: address.to_string(), sender: None }
    }

    pub(crate) async fn call(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
        let usable = match &mut self.sender {
            Some(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.sender = Some(connect(&self.address).await?);
        }
        let sender = self.sender.as_mut().expect("connected above");
        let response = sender.send_request(req).await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

async fn connect(address: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(address).await.with_context(|| format!("connect {address}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn create_streams(args: &RunArgs, address: &str) -> anyhow::Result<()> {
    let mut sender = Conn::new(address);
    for i in 0..args.streams {
        let mut json = serde_json::json!({
            "DeliveryStreamName": format!("bench-{i}"),
            "ExtendedS3DestinationConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::bench"},
        });
        if args.encrypted {
            json["DeliveryStreamEncryptionConfigurationInput"] = serde_json::json!({"KeyType": "AWS_OWNED_CMK"});
        }
        let body = Bytes::from(serde_json::to_vec(&json)?);
        let (status, reply) = sender.call(request(address, "CreateDeliveryStream", body)).await?;
        if status != 200 && !String::from_utf8_lossy(&reply).contains("ResourceInUse") {
            bail!("CreateDeliveryStream answered {status}: {}", String::from_utf8_lossy(&reply));
        }
    }
    // Streams are CREATING for a moment (sluice: transition_ms); wait until a put works.
    let probe = body_for(&RunArgs { records: 1, ..args.clone_shallow() }, &format!("bench-{}", args.streams - 1));
    let target = match args.op {
        Op::PutRecord => "PutRecord",
        Op::PutRecordBatch => "PutRecordBatch",
    };
    for _ in 0..500 {
        let (status, _) = sender.call(request(address, target, probe.clone())).await?;
        if status == 200 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("streams never became writable")
}

impl RunArgs {
    fn clone_shallow(&self) -> RunArgs {
        RunArgs {
            endpoint: self.endpoint.clone(),
            op: self.op,
            record_bytes: self.record_bytes,
            records: self.records,
            connections: self.connections,
            streams: self.streams,
            seconds: self.seconds,
            create: self.create,
            encrypted: self.encrypted,
            label: self.label.clone(),
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let address = args.endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    if args.create {
        create_streams(&args, &address).await?;
    }
    let target = match args.op {
        Op::PutRecord => "PutRecord",
        Op::PutRecordBatch => "PutRecordBatch",
    };
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..args.streams).map(|i| body_for(&args, &format!("bench-{i}"))).collect());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (bodies, measuring, stop, address) = (bodies.clone(), measuring.clone(), stop.clone(), address.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = Conn::new(&address);
            let mut latencies_us = Vec::with_capacity(1 << 16);
            let (mut n_errors, mut i) = (0u64, c);
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let started = Instant::now();
                let status = sender.call(request(&address, target, body)).await.map(|(s, _)| s).unwrap_or(0);
                if measuring.load(Ordering::Relaxed) {
                    if status == 200 {
                        latencies_us.push(started.elapsed().as_micros() as u32);
                    } else {
                        n_errors += 1;
                    }
                }
            }
            anyhow::Ok((latencies_us, n_errors))
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    let mut n_errors = 0;
    for task in tasks {
        let (l, e) = task.await??;
        latencies_us.extend(l);
        n_errors += e;
    }
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 * p) as usize).min(latencies_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let n = latencies_us.len() as f64;
    let records_per_request = match args.op {
        Op::PutRecord => 1,
        Op::PutRecordBatch => args.records,
    } as f64;
    let out = serde_json::json!({
        "label": args.label,
        "op": target,
        "connections": args.connections,
        "streams": args.streams,
        "record_bytes": args.record_bytes,
        "records_per_request": records_per_request,
        "seconds": elapsed,
        "requests_per_s": n / elapsed,
        "records_per_s": n * records_per_request / elapsed,
        "record_mb_per_s": n * records_per_request * args.record_bytes as f64 / elapsed / 1e6,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "errors": n_errors,
    });
    println!("{out}");
    Ok(())
}

async fn floor(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("floor listening on {listen}");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await?;
                let reply = Bytes::from_static(br#"{"FailedPutCount":0,"Encrypted":false,"RequestResponses":[]}"#);
                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(reply)))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
