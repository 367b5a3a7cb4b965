//! The Kinesis source's ceiling: a plain reader that reads every shard of a data
//! stream from its start as fast as the server serves GetRecords (shards in
//! parallel, 10,000 records per call, no pauses), and reports records per second.
//! Sluice's own reading of the same backlog is compared with it (bench/kinesis.sh).

use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_kinesis::client::Start;
use sluice_kinesis::{Client, ClientConfig};

/// `sluice-loadgen kinesis-read`.
#[derive(clap::Args)]
pub(crate) struct KinesisReadArgs {
    /// The Kinesis API endpoint.
    #[arg(long)]
    endpoint: String,
    /// The data stream.
    #[arg(long)]
    stream: String,
    /// Stop once this many records were read.
    #[arg(long)]
    records: u64,
}

pub(crate) async fn run(args: KinesisReadArgs) -> anyhow::Result<()> {
    let client = Client::new(ClientConfig {
        endpoint: args.endpoint.clone(),
        region: "us-east-1".into(),
        credentials: Some(("bench".into(), "bench".into())),
        timeout: Duration::from_secs(60),
    })?;
    let shards = client.shards(&args.stream).await.context("listing shards")?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for shard in shards {
        let client = client.clone();
        let stream = args.stream.clone();
        tasks.spawn(async move {
            let mut iterator = client.shard_iterator(&stream, &shard.shard_id, &Start::AtTimestamp(0)).await?;
            let (mut n_records, mut n_bytes) = (0u64, 0u64);
            loop {
                let read = client.records(&iterator, 10_000).await?;
                n_records += read.records.len() as u64;
                n_bytes += read.records.iter().map(|r| r.data.len() as u64).sum::<u64>();
                match read.next_iterator {
                    Some(next) if !read.records.is_empty() || read.millis_behind_latest > 0 => iterator = next,
                    _ => return Ok::<_, sluice_kinesis::KinesisError>((n_records, n_bytes)),
                }
            }
        });
    }
    let (mut n_records, mut n_bytes) = (0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        let (records, bytes) = done??;
        n_records += records;
        n_bytes += bytes;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(n_records >= args.records, "read {n_records} records, expected {}", args.records);
    let figures = serde_json::json!({
        "scenario": "plain reader",
        "records": n_records,
        "bytes": n_bytes,
        "seconds": seconds,
        "records_per_s": n_records as f64 / seconds,
    });
    println!("{figures}");
    Ok(())
}
