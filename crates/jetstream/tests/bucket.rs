//! Key-value buckets on a real three-node cluster: exactly one winner of a create
//! race between two connections, a stale update or delete refused, changes seen by
//! a watcher on another connection, and keys expiring in a bucket with a maximum age.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sluice_jetstream::{connect, Bucket, Change, Connection, Error, JetStreamOptions};
use sluice_nats_testing::{when_ready, Cluster, Setup};

async fn connection(cluster: &Cluster) -> (Connection, JetStreamOptions) {
    let options = cluster.options();
    (when_ready(|| connect(&options)).await, options)
}

async fn bucket(connection: &Connection, options: &JetStreamOptions, max_age: Option<Duration>) -> Bucket {
    when_ready(|| Bucket::open(connection, options, "TEST", max_age)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_changes_have_exactly_one_winner_and_watchers_see_them() {
    let cluster = Cluster::start(Setup::default());
    let (one, options) = connection(&cluster).await;
    let (two, _) = connection(&cluster).await;
    let a = bucket(&one, &options, None).await;
    let b = bucket(&two, &options, None).await;
    let mut watch = b.watch(0).await.unwrap();
    for round in 0..10 {
        let key = format!("race-{round}");
        let (ra, rb) = tokio::join!(a.create(&key, Bytes::from("a")), b.create(&key, Bytes::from("b")));
        assert!(ra.is_ok() != rb.is_ok(), "exactly one create wins: {ra:?} {rb:?}");
        assert!(matches!(ra.as_ref().err().or(rb.as_ref().err()), Some(Error::Conflict(_))));
        let winner = if ra.is_ok() { "a" } else { "b" };
        let stored = a.get(&key).await.unwrap().unwrap();
        assert_eq!(stored.value, Bytes::from(winner));
        // Both update from the revision they read: one wins, the other is told.
        let (ua, ub) = tokio::join!(
            a.update(&key, Bytes::from("a2"), stored.revision),
            b.update(&key, Bytes::from("b2"), stored.revision)
        );
        assert!(ua.is_ok() != ub.is_ok(), "exactly one update wins: {ua:?} {ub:?}");
        assert!(matches!(a.delete(&key, stored.revision).await, Err(Error::Conflict(_))), "a stale delete is refused");
    }
    // The other connection's watcher saw every create.
    let mut created = std::collections::BTreeSet::new();
    while created.len() < 10 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(Ok(Change::Put(v)))) => {
                created.insert(v.key);
            }
            Ok(Some(Ok(Change::Deleted { .. }))) => {}
            other => panic!("watch ended early: {other:?}"),
        }
    }
    let loaded = a.load().await.unwrap();
    assert_eq!(loaded.len(), 10);
    let last = b.get("race-9").await.unwrap().unwrap();
    b.delete("race-9", last.revision).await.unwrap();
    assert_eq!(a.get("race-9").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_not_renewed_expires_in_a_bucket_with_a_maximum_age() {
    let cluster = Cluster::start(Setup::default());
    let (connection, options) = connection(&cluster).await;
    let leases = bucket(&connection, &options, Some(Duration::from_secs(2))).await;
    let first = leases.create("lease", Bytes::from("node-a")).await.unwrap();
    let mut revision = first;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        revision = leases.update("lease", Bytes::from("node-a"), revision).await.expect("renewed in time");
    }
    assert!(matches!(leases.create("lease", Bytes::from("node-b")).await, Err(Error::Conflict(_))), "still held");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match leases.create("lease", Bytes::from("node-b")).await {
            Ok(_) => break,
            Err(Error::Conflict(_)) => assert!(tokio::time::Instant::now() < deadline, "never expired"),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(leases.update("lease", Bytes::from("node-a"), revision).await.is_err(), "the old holder cannot renew");
}

/// Reads that decide what is written next must see the latest write: the buckets
/// (and the progress bucket) are read through their stream's leader, never by
/// direct gets, which a lagging replica may answer with an old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_read_through_the_leader() {
    let cluster = Cluster::start(Setup::default());
    let (connection, options) = connection(&cluster).await;
    let opened = bucket(&connection, &options, None).await;
    // Opened again (as a restarted node does) it stays so.
    let again = bucket(&connection, &options, None).await;
    let logs = sluice_jetstream::StreamLogs::open(&connection, options.clone(), "n".into()).await.unwrap();
    drop((again, logs));
    let jetstream = async_nats::jetstream::new(async_nats::connect(cluster.urls()[0].as_str()).await.unwrap());
    for name in [opened.name().to_string(), format!("{}_PROGRESS", options.prefix)] {
        let mut stream = jetstream.get_stream(format!("KV_{name}")).await.unwrap();
        assert!(!stream.info().await.unwrap().config.allow_direct, "{name} allows direct gets");
    }
}
