//! `sluice-server`: everything that does IO. It turns HTTP requests into typed
//! operations (`api`), keeps stream definitions (`catalog`), stores records durably
//! through the record log (`log`, backed by `sluice-wal`), holds encryption keys
//! (`keys`) and exposes metrics (`metrics`).
//!
//! Layout, in the order a record travels:
//!
//! * [`api`]: the HTTP edge and one handler per operation;
//! * [`catalog`]: streams by region and name, persisted atomically;
//! * [`log`]: the narrow append / read / acknowledge interface to the record log;
//! * [`keys`]: key-encryption keys for encryption at rest;
//! * [`config`]: the config file and flags, validated up front;
//! * [`metrics`]: Firehose's metric names in Prometheus form.

pub mod api;
pub use sluice_auth as auth;
pub mod catalog;
pub mod config;
pub mod delivery;
pub mod installation;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod reconcile;
pub mod resources;
mod serve;
pub mod tables;
pub mod throttle;
pub mod tls;

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use sluice_wal::{Wal, WalOptions};

use crate::api::AppState;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::keys::KeyRegistry;
use crate::log::WalLog;

/// How long shutdown waits for buffered batches to be delivered; what is not
/// delivered by then stays in the log and is delivered after the next start.
const SHUTDOWN_DELIVERY_DEADLINE: Duration = Duration::from_secs(20);

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    /// The log could not be opened.
    #[error("write-ahead log: {0}")]
    Wal(#[from] sluice_wal::Error),
    /// Records in the log are encrypted under a key that is missing or wrong.
    #[error("{0}")]
    KeyUnavailable(String),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// The installation id could not be read or created.
    #[error("installation id {path}: {reason}")]
    Installation {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The declared streams file is wrong, or a declared stream could not be made.
    #[error("declared streams: {0}")]
    Declared(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No access keys are configured and the address is not loopback.
    #[error("no [auth] keys are configured, so requests would not be verified; refusing to listen on {0} (not loopback) without --allow-anonymous")]
    Anonymous(std::net::SocketAddr),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Delivery could not be set up.
    #[error("delivery: {0}")]
    Delivery(String),
    /// The NATS JetStream cluster could not be used.
    #[error("cluster mode: {0}")]
    Cluster(String),
    /// This node cannot join the cluster as configured (retrying would not help).
    #[error("cluster mode: {0}")]
    ClusterRefused(String),
    /// Storage failed while running; acknowledged data is safe, the process must stop.
    #[error("stopped after a fatal storage failure: {0}")]
    Fatal(String),
}

/// Opens the data directory, recovers the log and catalog, serves until `shutdown`
/// resolves (or storage fails), then drains in-flight requests and stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    if config.auth_keys.is_empty() && !config.listen.ip().is_loopback() && !config.allow_anonymous {
        return Err(ServerError::Anonymous(config.listen));
    }
    let data_dir = config.data_dir.clone();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .map_err(|source| ServerError::DataDir { path: data_dir.display().to_string(), source })?;
    let fd_limit = resources::raise_fd_limit(config.connections.connections_max);
    let installation_id = installation::load_or_create(&data_dir)?;
    let keys = Arc::new(KeyRegistry::load(&config.master_key_file, &config.kms_keys)?);
    let metrics = metrics::Metrics::install();
    // Background tasks of the storage (cluster mode) stop with this.
    let (background_stop, background) = tokio::sync::watch::channel(false);
    let storage = match &config.cluster {
        None => open_embedded(&config, &keys, fd_limit).await?,
        Some(cluster) => open_cluster(cluster, &keys, background.clone()).await?,
    };
    for stream in storage.catalog.snapshot().streams.values() {
        metrics.register_stream(stream);
        if let Err(error) = stream.destination.validate() {
            // Accepted by an older version of Sluice; the data is delivered as it comes.
            tracing::warn!(stream = %stream.name, error = %error.message, "The stream has a setting this version refuses for new streams.");
        }
    }
    let state = Arc::new(AppState {
        config: config.clone(),
        catalog: storage.catalog.clone(),
        log: storage.log.clone(),
        keys,
        metrics,
        body_kib_in_flight: tokio::sync::Semaphore::new(api::BODY_BYTES_IN_FLIGHT_MAX / 1024),
        throttle: throttle::Throttle::new(config.throttle.clone()),
        disk: resources::DiskState::new(data_dir.join("wal")),
        installation_id,
        flushes: Arc::default(),
        iceberg: tokio::sync::OnceCell::new(),
    });
    let ownership_task = storage.ownership.clone().map(|o| tokio::spawn(o.run(state.clone(), background.clone())));
    let upkeep_state = state.clone();
    let upkeep = tokio::spawn(async move {
        for tick in 0u64.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            upkeep_state.disk.probe();
            if tick % 5 == 4 {
                upkeep_state.metrics.upkeep();
            }
        }
    });

    // Declared buckets and streams exist before the first request is answered.
    if let Some(path) = &config.streams_file {
        let options = sluice_protocol::ParseOptions { allow_http_endpoints: config.http.allow_http };
        let declaration = api::declared::load(path, &options).map_err(ServerError::Declared)?;
        let buckets_root = config.local_buckets_root();
        api::declared::apply(&state, &declaration, buckets_root.as_deref()).await.map_err(ServerError::Declared)?;
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind { address: config.listen, source })?;
    let address = listener.local_addr().map_err(|source| ServerError::Bind { address: config.listen, source })?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    match &config.cluster {
        None => println!("Sluice is serving the Firehose API at {scheme}://{address} (data in {})", data_dir.display()),
        Some(cluster) => println!(
            "Sluice node {} is serving the Firehose API at {scheme}://{address} (records in NATS JetStream at {})",
            cluster.node_id,
            cluster.options.servers.join(",")
        ),
    }
    if config.auth_keys.is_empty() {
        println!(
            "Try: AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test aws firehose list-delivery-streams --endpoint-url http://{address} --region {}",
            config.region
        );
    }
    tracing::info!(%address, "Listening.");
    if config.auth_keys.is_empty() {
        println!("No [auth] keys are configured: requests are accepted without verifying their signatures.");
    } else {
        println!("Requests must be signed (SigV4) with one of the {} configured access keys.", config.auth_keys.len());
    }

    // Only the embedded log can fail for good (an fsync error); JetStream being
    // unreachable is unhealthy, not fatal.
    let fatal = storage.wal.as_ref().map(|wal| wal.fatal());
    let stop = async move {
        let failed = async {
            match fatal {
                Some(mut fatal) => {
                    let _ = fatal.wait_for(Option::is_some).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => tracing::info!("Shutting down: no new connections; finishing requests in flight."),
            () = failed => tracing::error!("Shutting down after a fatal storage failure."),
        }
    };
    let mut delivery =
        delivery::Delivery::new(state.clone(), delivery::Clock::system()).map_err(ServerError::Delivery)?;
    delivery.ownership = storage.ownership.clone();
    let delivery = delivery::DeliveryEngine::start(delivery);
    let acceptor = match &config.tls {
        None => None,
        Some((cert, key)) => Some(tls::acceptor(cert, key).map_err(ServerError::Tls)?),
    };
    serve::serve(listener, acceptor, api::router(state.clone()), config.connections, stop).await;
    upkeep.abort();
    // No more puts: deliver what is buffered (no minimum), within a bounded time.
    delivery.stop(SHUTDOWN_DELIVERY_DEADLINE).await;
    // Then give the leases back (cluster mode), so other nodes take over at once.
    let _ = background_stop.send(true);
    if let Some(task) = ownership_task {
        let _ = task.await;
    }
    // Every answered put was already synced; this waits for the log's writers to
    // answer anything still queued, so no request is left hanging.
    if let Some(wal) = &storage.wal {
        wal.shutdown().await;
    }
    if let Some(reason) = state.log.fatal() {
        return Err(ServerError::Fatal(reason));
    }
    tracing::info!("Stopped cleanly.");
    Ok(())
}

/// Where records, the catalog and delivery ownership live.
struct Storage {
    log: Arc<dyn log::RecordLog>,
    catalog: Arc<Catalog>,
    /// The embedded log, when it is the backend.
    wal: Option<Arc<Wal>>,
    /// Cluster mode: which streams this node delivers.
    ownership: Option<Arc<delivery::ownership::Ownership>>,
}

/// The embedded log in the data directory, recovered, and the catalog file made to
/// agree with it.
async fn open_embedded(
    config: &Config,
    keys: &Arc<KeyRegistry>,
    fd_limit: Option<u64>,
) -> Result<Storage, ServerError> {
    let data_dir = &config.data_dir;
    let files_open_max = resources::log_files_open_max(fd_limit, config.connections.connections_max);
    let options = WalOptions { segment_bytes_max: config.segment_bytes_max, files_open_max, ..WalOptions::default() };
    #[cfg(feature = "failpoints")]
    let options = WalOptions {
        fail_syncs_after: std::env::var("SLUICE_FAIL_SYNCS_AFTER").ok().and_then(|v| v.parse().ok()),
        ..options
    };
    let (wal, report) = match Wal::open(&data_dir.join("wal"), options, keys.clone()) {
        Ok(opened) => opened,
        Err(sluice_wal::Error::Key { key_ref, source }) => return Err(key_unavailable(keys, &key_ref, &source)),
        Err(other) => return Err(other.into()),
    };
    // Only now, with every undelivered record's key unwrapped, may a missing master
    // key be created: nothing in the log needs the old one.
    keys.ensure_master()?;
    tracing::info!(
        n_streams = report.n_streams,
        n_records = report.n_records,
        torn_tail_bytes = report.torn_tail_bytes,
        n_quarantined = report.quarantined.len(),
        n_gaps = report.gaps.len(),
        n_failed = report.failed.len(),
        "Recovered the write-ahead log."
    );
    if report.n_streams > files_open_max {
        // Not a problem, but it explains the descriptors: see resources.rs.
        tracing::info!(
            n_streams = report.n_streams,
            files_open_max,
            "More streams than segment files kept open: beyond that many busy streams, files are opened for each commit and read."
        );
    }
    let wal = Arc::new(wal);
    let catalog_found = Catalog::exists(data_dir);
    let catalog = Catalog::open(data_dir)?;
    reconcile::reconcile(&catalog, &wal, catalog_found).await?;
    report_recovery(&catalog, &report);
    ::metrics::counter!("sluice_wal_quarantined_regions").absolute(report.quarantined.len() as u64);
    ::metrics::counter!("sluice_wal_torn_tail_bytes").absolute(report.torn_tail_bytes);
    ::metrics::counter!("sluice_wal_missing_ranges").absolute(report.gaps.len() as u64);
    let missing: u64 = report.gaps.iter().map(|g| g.last_seq - g.first_seq + 1).sum();
    ::metrics::counter!("sluice_wal_missing_records").absolute(missing);
    ::metrics::gauge!("sluice_wal_unavailable_streams").set(wal.failed_streams().len() as f64);
    Ok(Storage { log: Arc::new(WalLog::new(wal.clone())), catalog: Arc::new(catalog), wal: Some(wal), ownership: None })
}

/// Cluster mode: the log, catalog and leases in NATS JetStream, after checking
/// that the servers can keep Sluice's durability promise. A node (re)started while
/// NATS elects leaders (a NATS server just restarted) keeps trying for a while
/// rather than exit; servers unfit for Sluice are refused at once.
async fn open_cluster(
    cluster: &config::ClusterConfig,
    keys: &Arc<KeyRegistry>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Storage, ServerError> {
    let unavailable = |e: sluice_jetstream::Error| ServerError::Cluster(e.to_string());
    let connection = sluice_jetstream::connect(&cluster.options).await.map_err(unavailable)?;
    let options = &cluster.options;
    let started = std::time::Instant::now();
    let (logs, catalog, nodes, leases) = loop {
        let opened = async {
            let logs = sluice_jetstream::StreamLogs::open(&connection, options.clone(), cluster.node_id.clone())
                .await
                .map_err(unavailable)?;
            let bucket =
                sluice_jetstream::Bucket::open(&connection, options, "CATALOG", None).await.map_err(unavailable)?;
            same_master_key(&bucket, keys).await?;
            let catalog = Catalog::open_bucket(catalog::BucketStore::new(bucket)).await?;
            let nodes = sluice_jetstream::Bucket::open(&connection, options, "NODES", Some(cluster.lease))
                .await
                .map_err(unavailable)?;
            let leases = sluice_jetstream::Bucket::open(&connection, options, "LEASES", Some(cluster.lease))
                .await
                .map_err(unavailable)?;
            Ok::<_, ServerError>((logs, catalog, nodes, leases))
        };
        match opened.await {
            Ok(opened) => break opened,
            Err(error @ (ServerError::Cluster(_) | ServerError::Catalog(_)))
                if started.elapsed() < CLUSTER_OPEN_RETRY =>
            {
                tracing::warn!(%error, "Could not open Sluice's streams and buckets in JetStream yet; retrying.");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let (log, refresh) = log::JetStreamLog::new(logs, keys.clone(), shutdown.clone());
    tokio::spawn(refresh);
    let catalog = Arc::new(catalog);
    tokio::spawn(catalog.clone().follow(shutdown));
    let ownership = delivery::ownership::Ownership::new(cluster.node_id.clone(), nodes, leases, cluster.lease);
    tracing::info!(node = %cluster.node_id, version = %connection.server_version, "Cluster mode: records, catalog and leases in NATS JetStream.");
    Ok(Storage { log: Arc::new(log), catalog, wal: None, ownership: Some(Arc::new(ownership)) })
}

/// Every node of a cluster must have the same master key: records one node seals
/// under `AWS_OWNED_CMK` are opened by whichever node delivers them. The catalog
/// bucket keeps the key's check digest (never the key): the first node publishes
/// it, creating its key file if it has none; a node whose key differs, or that has
/// no key file while the cluster has a key, is refused with what to do.
async fn same_master_key(bucket: &sluice_jetstream::Bucket, keys: &KeyRegistry) -> Result<(), ServerError> {
    const KEY: &str = "master-key-check";
    let unavailable = |e: sluice_jetstream::Error| ServerError::Cluster(e.to_string());
    let file = keys.master_key_file().display().to_string();
    let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
    // Nodes started together on one key file: the first may have made it since.
    keys.reload_master()?;
    let theirs = match (bucket.get(KEY).await.map_err(unavailable)?, keys.master_check()) {
        (Some(entry), None) => {
            return Err(ServerError::ClusterRefused(format!(
                "the cluster's nodes already use a master key (check {}), and this node has none at {file}: copy the master key file from another node",
                text(&entry.value)
            )))
        }
        (Some(entry), Some(_)) => text(&entry.value),
        (None, _) => {
            keys.ensure_master()?;
            let ours = keys.master_check().expect("just ensured").to_string();
            match bucket.create(KEY, bytes::Bytes::from(ours.clone())).await {
                Ok(_) => ours,
                // Another node published first: compare with its key.
                Err(sluice_jetstream::Error::Conflict(_)) => {
                    bucket.get(KEY).await.map_err(unavailable)?.map(|e| text(&e.value)).unwrap_or(ours)
                }
                Err(other) => return Err(unavailable(other)),
            }
        }
    };
    match keys.master_check() {
        Some(ours) if ours == theirs => Ok(()),
        ours => Err(ServerError::ClusterRefused(format!(
            "this node's master key ({file}, check {}) is not the one the cluster's other nodes use (check {theirs}): give every node the same master key file",
            ours.unwrap_or("none")
        ))),
    }
}

/// How long a starting node keeps trying to open its streams and buckets.
const CLUSTER_OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the log cannot be opened with the keys at hand, and what to do about it.
fn key_unavailable(keys: &KeyRegistry, key_ref: &str, error: &sluice_wal::KeyError) -> ServerError {
    let path = keys.master_key_file().display();
    let message = match (key_ref, error) {
        (keys::AWS_OWNED_KEY_REF, sluice_wal::KeyError::NotFound) => format!(
            "the log holds undelivered records encrypted with the master key (AWS_OWNED_CMK), but {path} does not exist. Restore that file from a backup and start again. Sluice never creates a new master key over existing encrypted data: the records could never be read again."
        ),
        (keys::AWS_OWNED_KEY_REF, _) => format!(
            "the master key in {path} is not the one the log's undelivered records were encrypted with (was the file replaced?). Restore the original file and start again."
        ),
        (arn, sluice_wal::KeyError::NotFound) => format!(
            "the log holds undelivered records encrypted with the customer managed key {arn}, which is not configured; add it back to [[encryption.keys]] and start again."
        ),
        (arn, _) => format!(
            "the key configured for {arn} is not the one the log's undelivered records were encrypted with; configure the original key and start again."
        ),
    };
    ServerError::KeyUnavailable(message)
}

/// Says, by stream name, what recovery lost or could not recover: the log itself
/// knows streams only by id.
fn report_recovery(catalog: &Catalog, report: &sluice_wal::RecoveryReport) {
    let name = |id: u64| catalog.get_by_id(id).map_or_else(|| format!("(log {id:016x})"), |s| s.name.clone());
    for gap in &report.gaps {
        tracing::error!(
            stream = %name(gap.stream),
            first_seq = gap.first_seq,
            last_seq = gap.last_seq,
            n_records = gap.last_seq - gap.first_seq + 1,
            "Acknowledged records are missing from the stream's log and cannot be delivered (counted in sluice_wal_missing_records)."
        );
    }
    for failed in &report.failed {
        tracing::error!(
            stream = %name(failed.stream),
            reason = %failed.reason,
            "The stream's log could not be recovered: its files are kept as they are, puts to it get ServiceUnavailableException and nothing is delivered from it. Fix the cause (restore the file from a backup, or move a damaged checkpoint aside to deliver from the start again) and restart; the other streams are served."
        );
    }
}
