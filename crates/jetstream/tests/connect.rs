//! Connecting to real NATS servers: a fit cluster is accepted, and each unfit
//! setting is refused with a message that says what to change.

use std::time::Duration;

use sluice_jetstream::{connect, Error, JetStreamOptions};
use sluice_nats_testing::{Cluster, Setup};

fn options(cluster: &Cluster, monitoring: bool) -> JetStreamOptions {
    JetStreamOptions {
        servers: cluster.urls(),
        monitoring_urls: if monitoring { cluster.monitoring_urls() } else { Vec::new() },
        timeout: Duration::from_secs(20),
        ..JetStreamOptions::default()
    }
}

/// Connects, retrying while a fresh cluster elects its JetStream leader.
async fn connect_when_ready(options: &JetStreamOptions) -> Result<sluice_jetstream::Connection, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match connect(options).await {
            Err(Error::Unfit(reason)) if reason.contains("not available") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn unfit(result: Result<sluice_jetstream::Connection, Error>) -> String {
    match result {
        Err(Error::Unfit(reason)) => reason,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_that_syncs_every_write_is_accepted() {
    let cluster = Cluster::start(Setup::default());
    let connection = connect_when_ready(&options(&cluster, true)).await.expect("a fit cluster connects");
    assert!(sluice_jetstream::version_at_least(&connection.server_version, sluice_jetstream::MIN_SERVER_VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_do_not_sync_every_write_are_refused_when_monitoring_is_given() {
    let cluster = Cluster::start(Setup { sync_always: false, ..Setup::default() });
    let reason = unfit(connect_when_ready(&options(&cluster, true)).await);
    assert!(reason.contains("sync_interval: always"), "{reason}");
    // Without the monitoring endpoints nothing can tell; the docs say to check.
    connect_when_ready(&options(&cluster, false)).await.expect("accepted without monitoring");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_limit_below_a_commit_group_is_refused() {
    let cluster = Cluster::start(Setup { nodes: 1, max_payload: "1MB", ..Setup::default() });
    let reason = unfit(connect_when_ready(&options(&cluster, false)).await);
    assert!(reason.contains("max_payload: 8MB"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_refused() {
    let cluster = Cluster::start(Setup { nodes: 1, jetstream: false, ..Setup::default() });
    let options = JetStreamOptions { timeout: Duration::from_secs(3), ..options(&cluster, false) };
    let reason = unfit(connect(&options).await);
    assert!(reason.contains("JetStream is not available"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_is_a_connection_error_within_the_timeout() {
    let options = JetStreamOptions {
        servers: vec!["nats://127.0.0.1:1".into()],
        timeout: Duration::from_millis(500),
        ..JetStreamOptions::default()
    };
    let started = std::time::Instant::now();
    assert!(matches!(connect(&options).await, Err(Error::Connect { .. })));
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the timeout");
}
