//! The engine's own ceiling for cluster mode: the same bytes a Firehose put carries,
//! published straight to a file-backed, replicated JetStream stream, each publish
//! awaiting its PubAck, over as many concurrent publishers as the Firehose load has
//! connections. `PutRecord`: one record's bytes per publish (what Sluice would cost
//! without commit groups); `PutRecordBatch`: a whole batch's records per publish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::Op;

#[derive(clap::Args)]
pub(crate) struct JetStreamArgs {
    /// NATS server URLs, comma-separated.
    #[arg(long)]
    servers: String,
    #[arg(long, value_enum)]
    op: Op,
    /// Bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Records per batch (PutRecordBatch).
    #[arg(long, default_value_t = 500)]
    records: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Replicas of the stream.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Seconds to measure, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Publishes per second over all publishers, on a fixed schedule (open loop;
    /// latency counts from when each was due), as `run --rate`. 0: closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

pub(crate) async fn run(args: JetStreamArgs) -> anyhow::Result<()> {
    let servers: Vec<String> = args.servers.split(',').map(str::to_string).collect();
    let client = async_nats::ConnectOptions::new().connect(servers.as_slice()).await.context("connecting to NATS")?;
    let jetstream = async_nats::jetstream::new(client);
    let name = "LOADGEN_CEILING";
    let _ = jetstream.delete_stream(name).await;
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec!["loadgen.ceiling".to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: args.replicas,
            max_message_size: 8 << 20,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let n_records = match args.op {
        Op::PutRecord => 1,
        Op::PutRecordBatch => args.records,
    };
    let payload = Bytes::from(vec![b'x'; args.record_bytes * n_records]);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let t0 = tokio::time::Instant::now();
    for c in 0..args.connections {
        let (jetstream, payload, measuring, stop) =
            (jetstream.clone(), payload.clone(), measuring.clone(), stop.clone());
        let mut schedule = crate::Schedule::new(t0, args.rate, c, args.connections);
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut n_errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = schedule.next().await;
                let acked = match jetstream.publish("loadgen.ceiling", payload.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    match acked {
                        true => latencies_us.push(started.elapsed().as_micros() as u32),
                        false => n_errors += 1,
                    }
                }
            }
            (latencies_us, n_errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (mut latencies_us, mut n_errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        latencies_us.extend(l);
        n_errors += e;
    }
    let _ = jetstream.delete_stream(name).await;
    latencies_us.sort_unstable();
    let pct = |p: f64| crate::quantile_ms(&latencies_us, p);
    let n = latencies_us.len() as f64;
    let out = serde_json::json!({
        "label": args.label,
        "op": args.op.name(),
        "connections": args.connections,
        "streams": 1,
        "record_bytes": args.record_bytes,
        "records_per_request": n_records,
        "seconds": elapsed,
        "requests_per_s": n / elapsed,
        "records_per_s": n * n_records as f64 / elapsed,
        "record_mb_per_s": n * (n_records * args.record_bytes) as f64 / elapsed / 1e6,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "errors": n_errors,
        "rate": args.rate,
    });
    println!("{out}");
    Ok(())
}
