//! `sluice-loadgen`: drives a Firehose endpoint with PutRecord or PutRecordBatch over
//! many keep-alive HTTP/1.1 connections and prints one JSON line of figures; `floor`,
//! a minimal hyper server that reads the body and answers a fixed JSON, the ceiling
//! any HTTP server on this machine can reach; and `deliver`, which measures how fast
//! records put in come out of a delivery (to an HTTP endpoint it serves itself, or
//! into partitioned objects); and `jetstream`, which publishes the same bytes straight
//! to a replicated JetStream stream, the ceiling of cluster mode's engine. Benchmarks
//! only, never tests.

mod deliver;
mod jetstream;
mod kinesis;

use std::net::SocketAddr;
use std::path::Path;
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
    /// Publish the same bytes straight to a JetStream stream; print figures as JSON.
    Jetstream(jetstream::JetStreamArgs),
    /// Read a Kinesis data stream's backlog as fast as the server serves it; print
    /// figures as JSON.
    KinesisRead(kinesis::KinesisReadArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Op {
    PutRecord,
    PutRecordBatch,
}

impl Op {
    /// The operation's name in `X-Amz-Target` and in the figures.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::PutRecord => "PutRecord",
            Op::PutRecordBatch => "PutRecordBatch",
        }
    }
}

/// When one connection (or publisher) sends its next request. With a rate,
/// connection c of n sends at t0 + (k * n + c) / rate, so the schedule as a whole is
/// evenly spaced (open loop); without one, right away (closed loop).
pub(crate) struct Schedule {
    due: Option<(tokio::time::Instant, Duration)>,
}

impl Schedule {
    pub(crate) fn new(t0: tokio::time::Instant, rate: f64, c: usize, n: usize) -> Schedule {
        let due = (rate > 0.0).then(|| {
            let spacing = Duration::from_secs_f64(n as f64 / rate);
            (t0 + spacing.mul_f64(c as f64 / n as f64), spacing)
        });
        Schedule { due }
    }

    /// Waits until the next request is due and returns when that was: latency
    /// counts from there, so a server falling behind shows in it.
    pub(crate) async fn next(&mut self) -> Instant {
        match &mut self.due {
            Some((due, spacing)) => {
                tokio::time::sleep_until(*due).await;
                let started = due.into_std();
                *due += *spacing;
                started
            }
            None => Instant::now(),
        }
    }
}

/// The `p` quantile of latencies sorted ascending, in milliseconds (0 for none).
pub(crate) fn quantile_ms(sorted_us: &[u32], p: f64) -> f64 {
    let at = ((sorted_us.len() as f64 * p) as usize).min(sorted_us.len().saturating_sub(1));
    sorted_us.get(at).copied().unwrap_or(0) as f64 / 1000.0
}

#[derive(clap::Args)]
struct RunArgs {
    /// Base URL, e.g. http://127.0.0.1:4573; several, comma-separated, spread the
    /// connections over them (the nodes of a cluster).
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
    /// Sign requests with SigV4 using this key (ACCESS_KEY_ID:SECRET). Each body is
    /// signed once and replayed, as a signature stays valid for 5 minutes.
    #[arg(long)]
    sign: Option<String>,
    /// The CA certificate (PEM) to trust for an https:// endpoint.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// The server's process id: its CPU time over the measured window is reported
    /// per request, a figure steadier than throughput on a shared machine.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Requests per second over all connections, sent on a fixed schedule (open
    /// loop) instead of each connection's next request right after its answer;
    /// latency then counts from when a request was due, so a server falling behind
    /// shows in it (no coordinated omission). 0: as fast as the connections go.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Floor { listen } => runtime.block_on(floor(listen)),
        Command::Deliver(args) => runtime.block_on(deliver::run(args)),
        Command::Jetstream(args) => runtime.block_on(jetstream::run(args)),
        Command::KinesisRead(args) => runtime.block_on(kinesis::run(args)),
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

/// Where requests go and how: the server's address, TLS, and the key that signs them.
#[derive(Clone)]
pub(crate) struct Endpoint {
    address: String,
    tls: Option<tokio_rustls::TlsConnector>,
    /// `(access key id, secret)`: requests are SigV4-signed (aws-sigv4, as the SDKs sign).
    key: Option<(String, String)>,
}

impl Endpoint {
    /// `http://host:port` or `https://host:port` (then `ca_file` is the CA to trust).
    pub(crate) fn new(url: &str, ca_file: Option<&Path>, key: Option<&str>) -> anyhow::Result<Endpoint> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (Some(tls_connector(ca_file)?), rest),
            (None, Some(rest)) => (None, rest),
            _ => bail!("the endpoint must start with http:// or https://: {url}"),
        };
        let key = match key.map(|k| k.split_once(':')) {
            None => None,
            Some(Some((id, secret))) => Some((id.to_string(), secret.to_string())),
            Some(None) => bail!("--sign takes ACCESS_KEY_ID:SECRET"),
        };
        Ok(Endpoint { address: rest.trim_end_matches('/').to_string(), tls, key })
    }

    /// A Firehose request for `target`, signed now when a key is set. A signature
    /// stays valid for 5 minutes, so one request may be replayed that long (see
    /// [`Prepared`]).
    pub(crate) fn request(&self, target: &str, body: Bytes) -> Request<Full<Bytes>> {
        let mut headers = vec![
            ("host".to_string(), self.address.clone()),
            ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("x-amz-target".to_string(), format!("Firehose_20150804.{target}")),
        ];
        match &self.key {
            None => headers.extend([
                ("authorization".to_string(), "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/us-east-1/firehose/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=0000".to_string()),
                ("x-amz-date".to_string(), "20261121T000000Z".to_string()),
            ]),
            Some((id, secret)) => {
                let signed = sign(&format!("http://{}/", self.address), &headers, &body, id, secret);
                headers.extend(signed);
            }
        }
        let mut request = Request::post("/");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.body(Full::new(body)).expect("request")
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn conn(&self) -> Conn {
        Conn { endpoint: self.clone(), sender: None }
    }
}

/// A request built (and signed) once and sent many times: the load generator's own
/// cost stays the same whether or not requests are signed, so a comparison
/// measures the server's verification.
pub(crate) struct Prepared {
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Prepared {
    pub(crate) fn new(request: Request<Full<Bytes>>, body: Bytes) -> Prepared {
        Prepared { headers: request.headers().clone(), body }
    }

    pub(crate) fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::post("/").body(Full::new(self.body.clone())).expect("request");
        *request.headers_mut() = self.headers.clone();
        request
    }
}

fn sign(url: &str, headers: &[(String, String)], body: &[u8], id: &str, secret: &str) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(id, secret, None, None, "loadgen").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("firehose")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing parameters")
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().filter(|(n, _)| n != "host").map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .expect("signable request");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    instructions.headers().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn tls_connector(ca_file: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let Some(ca_file) = ca_file else { bail!("an https:// endpoint needs --ca-file") };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive connection that reconnects when the server closes it (moto's
/// development server answers HTTP/1.0-style, one request per connection).
pub(crate) struct Conn {
    endpoint: Endpoint,
    sender: Option<Sender>,
}

impl Conn {
    pub(crate) async fn call(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
        let usable = match &mut self.sender {
            Some(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.sender = Some(connect(&self.endpoint).await?);
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

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Sender> {
    let address = &endpoint.address;
    let stream = tokio::net::TcpStream::connect(address).await.with_context(|| format!("connect {address}"))?;
    stream.set_nodelay(true)?;
    match &endpoint.tls {
        None => {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            Ok(sender)
        }
        Some(connector) => {
            let host = address.rsplit_once(':').map_or(address.as_str(), |(host, _)| host).to_string();
            let name = rustls_pki_types::ServerName::try_from(host)?;
            let stream = connector.connect(name, stream).await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            Ok(sender)
        }
    }
}

async fn create_streams(args: &RunArgs, endpoint: &Endpoint) -> anyhow::Result<()> {
    let mut sender = endpoint.conn();
    for i in 0..args.streams {
        let mut json = serde_json::json!({
            "DeliveryStreamName": format!("bench-{i}"),
            "ExtendedS3DestinationConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::bench"},
        });
        if args.encrypted {
            json["DeliveryStreamEncryptionConfigurationInput"] = serde_json::json!({"KeyType": "AWS_OWNED_CMK"});
        }
        let body = Bytes::from(serde_json::to_vec(&json)?);
        let (status, reply) = sender.call(endpoint.request("CreateDeliveryStream", body)).await?;
        if status != 200 && !String::from_utf8_lossy(&reply).contains("ResourceInUse") {
            bail!("CreateDeliveryStream answered {status}: {}", String::from_utf8_lossy(&reply));
        }
    }
    wait_writable(args, endpoint).await
}

/// Waits until a put to the last stream works through `endpoint` (streams are
/// CREATING for a moment, and a cluster's other nodes learn of them shortly after).
async fn wait_writable(args: &RunArgs, endpoint: &Endpoint) -> anyhow::Result<()> {
    let mut sender = endpoint.conn();
    let probe = body_for(&RunArgs { records: 1, ..args.clone_shallow() }, &format!("bench-{}", args.streams - 1));
    let target = args.op.name();
    for _ in 0..500 {
        let (status, _) = sender.call(endpoint.request(target, probe.clone())).await?;
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
            sign: self.sign.clone(),
            ca_file: self.ca_file.clone(),
            server_pid: self.server_pid,
            rate: self.rate,
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let endpoints = args
        .endpoint
        .split(',')
        .map(|url| Endpoint::new(url, args.ca_file.as_deref(), args.sign.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.create {
        create_streams(&args, &endpoints[0]).await?;
        // Every node must know the streams before the load starts.
        for endpoint in &endpoints[1..] {
            wait_writable(&args, endpoint).await?;
        }
    }
    let target = args.op.name();
    // Per endpoint, one prepared request per stream.
    let prepared: Vec<Arc<Vec<Prepared>>> = endpoints
        .iter()
        .map(|endpoint| {
            Arc::new(
                (0..args.streams)
                    .map(|i| {
                        let body = body_for(&args, &format!("bench-{i}"));
                        Prepared::new(endpoint.request(target, body.clone()), body)
                    })
                    .collect(),
            )
        })
        .collect();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let t0 = tokio::time::Instant::now();
    for c in 0..args.connections {
        let at = c % endpoints.len();
        let (prepared, measuring, stop, endpoint) =
            (prepared[at].clone(), measuring.clone(), stop.clone(), endpoints[at].clone());
        let mut schedule = Schedule::new(t0, args.rate, c, args.connections);
        tasks.push(tokio::spawn(async move {
            let mut sender = endpoint.conn();
            let mut latencies_us = Vec::with_capacity(1 << 16);
            let (mut n_errors, mut i) = (0u64, c);
            while !stop.load(Ordering::Relaxed) {
                let request = prepared[i % prepared.len()].request();
                i += 1;
                let started = schedule.next().await;
                let status = sender.call(request).await.map(|(s, _)| s).unwrap_or(0);
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
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu_s = match (cpu_before, args.server_pid) {
        (Some(before), Some(pid)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    let mut n_errors = 0;
    for task in tasks {
        let (l, e) = task.await??;
        latencies_us.extend(l);
        n_errors += e;
    }
    latencies_us.sort_unstable();
    let pct = |p: f64| quantile_ms(&latencies_us, p);
    let n = latencies_us.len() as f64;
    let records_per_request = match args.op {
        Op::PutRecord => 1,
        Op::PutRecordBatch => args.records,
    } as f64;
    let out = serde_json::json!({
        "label": args.label,
        "op": target,
        "connections": args.connections,
        "rate": args.rate,
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
        "server_cpu_us_per_request": server_cpu_s.map(|s| s * 1e6 / n.max(1.0)),
    });
    println!("{out}");
    Ok(())
}

/// User plus system CPU time of a process so far, from `/proc/PID/stat` (in
/// clock ticks of 1/100 s, as Linux reports them).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("malformed stat");
    // utime and stime: fields 14 and 15 of the line, 12th and 13th after the name.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
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
