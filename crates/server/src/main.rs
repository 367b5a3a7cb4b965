//! The `sluice` binary: parses the command line, sets up logging, and runs the
//! server (or a maintenance command). The only place `anyhow` is used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_server::catalog::Catalog;
use sluice_server::config::RawConfig;
use sluice_server::keys::KeyRegistry;

/// glibc's allocator showed up at 15% of PutRecord CPU time in profiles; mimalloc
/// keeps per-thread free lists and is markedly cheaper for the many short-lived
/// request buffers. Built with `no_thp`: transparent huge pages doubled resident
/// memory for no measurable gain.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A self-hosted server that speaks the Amazon Data Firehose API.
/// Threads for blocking work (log syncs, file reads). Eight parallel syncs already
/// saturate a disk, and every extra thread keeps its own allocator cache: with 32,
/// 100 busy streams pushed resident memory past 350 MiB; with 8 it stays near 200.
const BLOCKING_THREADS_MAX: usize = 8;

#[derive(Parser)]
#[command(name = "sluice", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Firehose API (the default).
    Serve(ServeArgs),
    /// Print a stream's records still held in the log (not yet delivered), as JSON
    /// lines. Run it while the server is stopped: opening the log runs recovery.
    Dump(DumpArgs),
    /// Exit 0 when a server's `/health` answers 200 and 1 otherwise (a container
    /// health check without curl). By default asks the address `serve` would listen
    /// on, with the same options and environment.
    Health(HealthArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:4573].
    #[arg(long, env = "SLUICE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the catalog, the log and keys [default: ./sluice-data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Deliver to this S3-compatible endpoint instead of `<data-dir>/buckets/`.
    #[arg(long, env = "SLUICE_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// With no `[auth]` keys, accept unsigned requests on a non-loopback address
    /// too (on loopback they always are).
    #[arg(long, env = "SLUICE_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Cluster mode: keep records, the catalog and delivery ownership in this NATS
    /// JetStream cluster (`nats://HOST:PORT[,nats://HOST:PORT...]`); see `[jetstream]`.
    #[arg(long, env = "SLUICE_JETSTREAM", value_delimiter = ',')]
    jetstream: Option<Vec<String>>,
    /// Keep everything in a new temporary directory, removed when the server stops
    /// (for tests; a killed server leaves it behind in the system's temp directory).
    #[arg(long, env = "SLUICE_EPHEMERAL", conflicts_with = "data_dir")]
    ephemeral: bool,
    /// Buckets and delivery streams to create at start, or bring up to date on a
    /// restart: `{"buckets": [...], "streams": [<CreateDeliveryStream request>...]}`.
    #[arg(long, env = "SLUICE_STREAMS")]
    streams: Option<PathBuf>,
    /// Deliver every batch within this many seconds, whatever a stream's
    /// IntervalInSeconds (for tests written for emulators that deliver at once).
    #[arg(long, env = "SLUICE_BUFFER_INTERVAL_MAX")]
    buffer_interval_max: Option<u64>,
    /// Read KinesisStreamAsSource streams' data streams through this Kinesis API
    /// endpoint (kinesalite, LocalStack, ...) instead of AWS's; see `[kinesis]`.
    #[arg(long, env = "SLUICE_KINESIS_ENDPOINT")]
    kinesis_endpoint: Option<String>,
}

#[derive(Args)]
struct HealthArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// The server's URL [default: http(s)://<the address serve would listen on>].
    #[arg(long)]
    endpoint: Option<String>,
}

#[derive(Args)]
struct DumpArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Region of the stream [default: the configured region].
    #[arg(long)]
    region: Option<String>,
    /// Read this log directory instead of a stream's (one start-up set aside, under
    /// `<data-dir>/wal/set-aside/`).
    #[arg(long, conflicts_with = "stream")]
    log: Option<PathBuf>,
    /// The delivery stream's name.
    #[arg(required_unless_present = "log")]
    stream: Option<String>,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<sluice_server::config::Config> {
    let raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    let mut config =
        raw.into_config_with(args.listen, args.data_dir.clone(), args.s3_endpoint.clone(), args.jetstream.clone())?;
    config.allow_anonymous |= args.allow_anonymous;
    if args.streams.is_some() {
        config.streams_file = args.streams.clone();
    }
    if args.buffer_interval_max.is_some() {
        config.buffer_interval_s_max = args.buffer_interval_max;
    }
    if let Some(endpoint) = &args.kinesis_endpoint {
        config.kinesis.endpoint = Some(sluice_server::config::http_url("--kinesis-endpoint", endpoint)?);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some((cert.clone(), key.clone()));
    }
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Everything Sluice writes (records, keys, the catalog) is for its own user only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Log writers sync on the blocking pool, one thread per stream with a commit in
    // progress; bounding the pool bounds threads (and their stacks and allocator
    // caches) however many streams are active. Syncs beyond it wait their turn.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .build()
        .context("starting the Tokio runtime")?;
    match cli.command {
        None => runtime.block_on(serve(cli.serve)),
        Some(Command::Serve(args)) => runtime.block_on(serve(args)),
        Some(Command::Dump(args)) => runtime.block_on(dump(args)),
        Some(Command::Health(args)) => {
            if let Err(reason) = runtime.block_on(health(args)) {
                eprintln!("unhealthy: {reason:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    // Removed when dropped, after the server stopped.
    let ephemeral = match args.ephemeral {
        true => {
            let dir = tempfile::Builder::new().prefix("sluice-ephemeral-").tempdir()?;
            tracing::info!(data_dir = %dir.path().display(), "Ephemeral: the data directory is removed on exit.");
            args.data_dir = Some(dir.path().to_path_buf());
            Some(dir)
        }
        false => None,
    };
    let config = load_config(&args)?;
    let result = sluice_server::run(config, shutdown_signal()).await.context("sluice stopped with an error");
    drop(ephemeral);
    result
}

/// `health`: one GET of `/health`, answered 200 within five seconds.
async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let config = load_config(&args.serve)?;
    let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
    let endpoint = match args.endpoint {
        Some(endpoint) => endpoint,
        None => {
            // The server's own address: whether its certificate would verify is
            // not the question a liveness check asks.
            if config.tls.is_some() {
                client = client.danger_accept_invalid_certs(true);
            }
            config.local_endpoint()
        }
    };
    let url = format!("{}/health", endpoint.trim_end_matches('/'));
    let response = client.build()?.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(response.status() == reqwest::StatusCode::OK, "GET {url} answered {}", response.status());
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let config = load_config(&args.serve)?;
    if let Some(cluster) = &config.cluster {
        anyhow::ensure!(args.log.is_none(), "--log reads a log directory of the embedded log; cluster mode has none");
        let name = args.stream.as_deref().context("name a stream")?;
        let region = args.region.clone().unwrap_or(config.region.clone());
        let keys = KeyRegistry::load(&config.master_key_file, &config.kms_keys)?;
        return dump_cluster(cluster, &keys, &region, name).await;
    }
    let keys = Arc::new(KeyRegistry::load(&config.master_key_file, &config.kms_keys)?);
    // A log directory given by path is opened through a scratch directory that
    // links to it under its stream id, the layout the log expects.
    let (wal_dir, id, _scratch) = match (&args.log, &args.stream) {
        (Some(log), _) => {
            let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let id = u64::from_str_radix(name.get(..16).unwrap_or(""), 16).with_context(|| {
                format!("{} is not a stream log directory (its name starts with 16 hex digits)", log.display())
            })?;
            let scratch = Scratch::new()?;
            std::os::unix::fs::symlink(std::fs::canonicalize(log)?, scratch.0.join(&name[..16]))?;
            (scratch.0.clone(), id, Some(scratch))
        }
        (None, Some(name)) => {
            let region = args.region.clone().unwrap_or(config.region.clone());
            let catalog = Catalog::open(&config.data_dir)?;
            let stream = catalog.get(&region, name).with_context(|| format!("no stream {name} in region {region}"))?;
            (config.data_dir.join("wal"), stream.id, None)
        }
        (None, None) => anyhow::bail!("name a stream or give --log"),
    };
    let (wal, _) = sluice_wal::Wal::open(&wal_dir, sluice_wal::WalOptions::default(), keys)?;
    let mut reader = wal.reader(id, 1)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let records = reader.read(10_000, 64 << 20)?;
        if records.is_empty() {
            break;
        }
        for r in records {
            dump_line(&mut out, r.seq, r.arrival_ms, r.encrypted, &r.data)?;
        }
    }
    std::io::Write::flush(&mut out)?;
    wal.shutdown().await;
    Ok(())
}

/// One record as a JSON line of `dump`.
fn dump_line(
    out: &mut impl std::io::Write,
    seq: u64,
    arrival_ms: u64,
    encrypted: bool,
    data: &[u8],
) -> std::io::Result<()> {
    let line = serde_json::json!({
        "seq": seq,
        "arrival_ms": arrival_ms,
        "encrypted": encrypted,
        "data": base64_simd::STANDARD.encode_to_string(data),
    });
    writeln!(out, "{line}")
}

/// `dump` in cluster mode: the stream's records not yet acknowledged, read from its
/// JetStream stream.
async fn dump_cluster(
    cluster: &sluice_server::config::ClusterConfig,
    keys: &KeyRegistry,
    region: &str,
    name: &str,
) -> anyhow::Result<()> {
    use sluice_jetstream::{Bucket, StreamLogs};
    let connection = sluice_jetstream::connect(&cluster.options).await?;
    let logs = StreamLogs::open(&connection, cluster.options.clone(), format!("dump-{}", std::process::id())).await?;
    let bucket = Bucket::open(&connection, &cluster.options, "CATALOG", None).await?;
    let catalog = Catalog::open_bucket(sluice_server::catalog::BucketStore::new(bucket)).await?;
    let stream = catalog.get(region, name).with_context(|| format!("no stream {name} in region {region}"))?;
    let (acknowledged, _) = logs.progress(stream.id).await?;
    let mut cursor = logs.cursor(stream.id, acknowledged + 1, None);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // A cursor reads empty only once nothing is stored past it.
    loop {
        let records = cursor.read(10_000, 64 << 20).await?;
        if records.is_empty() {
            break;
        }
        for r in records {
            let data = sluice_server::log::open_record(keys, stream.id, &r.data, r.encrypted)?;
            dump_line(&mut out, r.seq, r.arrival_ms, r.encrypted, &data)?;
        }
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// A directory in the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let dir = std::env::temp_dir().join(format!("sluice-dump-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
