//! The record log on a real three-node JetStream cluster (`sync_interval: always`):
//! appends and reads, group commit, progress with fencing between nodes, purging,
//! the size limit, and the failures of NATS servers.

use std::sync::Arc;
use std::time::Duration;

use sluice_jetstream::{connect, Error, StreamLogs};
use sluice_nats_testing::{when_ready, Cluster, Setup};

async fn logs(cluster: &Cluster, node: &str) -> StreamLogs {
    let options = cluster.options();
    let connection = when_ready(|| connect(&options)).await;
    when_ready(|| StreamLogs::open(&connection, options.clone(), node.to_string())).await
}

/// Every record from `from` on. A read that fails is asked again, as a delivery lane
/// does (a cursor keeps its position): servers just restarted may time a read out
/// once while its consumer is made again; one that keeps failing fails the test.
async fn read_all(logs: &StreamLogs, id: u64, from: u64) -> Vec<sluice_jetstream::StoredRecord> {
    let mut cursor = logs.cursor(id, from, None);
    let mut out = Vec::new();
    let mut idle = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while idle < 20 {
        let records = match cursor.read(1000, 1 << 20).await {
            Ok(records) => records,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "read: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if records.is_empty() {
            idle += 1;
            cursor.wait(Duration::from_millis(50)).await;
        } else {
            idle = 0;
            out.extend(records);
        }
    }
    out
}

/// A consumer made again after a read error starts at the reader's position,
/// before messages the cursor may already hold: no record is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_again_hands_out_no_record_twice() {
    let cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "again").await;
    logs.create_stream(1, None).await.unwrap();
    for m in 0..3 {
        let records = (0..10).map(|i| format!("m{m}-{i}").into_bytes()).collect();
        logs.append(1, records, 1, false).await.unwrap();
    }
    let mut cursor = logs.cursor(1, 0, None);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    while seen.len() < 5 {
        seen.extend(cursor.read(5 - seen.len(), 1 << 20).await.unwrap().into_iter().map(|r| r.data));
    }
    cursor.drop_consumer();
    while seen.len() < 30 {
        let records = cursor.read(1000, 1 << 20).await.unwrap();
        assert!(!records.is_empty(), "the rest is stored: {} of 30 read", seen.len());
        seen.extend(records.into_iter().map(|r| r.data));
    }
    assert!(cursor.read(1000, 1 << 20).await.unwrap().is_empty(), "nothing more");
    let expected: Vec<Vec<u8>> = (0..3).flat_map(|m| (0..10).map(move |i| format!("m{m}-{i}").into_bytes())).collect();
    assert_eq!(seen, expected);
}

/// A commit group stored twice under one `Nats-Msg-Id` (past the duplicate
/// window here; seen once after a NATS server lost its disk) is read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_twice_under_one_id_is_read_once() {
    let cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "twice").await;
    logs.create_stream(1, None).await.unwrap();
    logs.append(1, vec![b"before".to_vec()], 1, false).await.unwrap();
    let client = async_nats::connect(cluster.urls()[0].as_str()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(logs.stream_name(1)).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.duplicate_window = Duration::from_millis(100);
    jetstream.update_stream(config).await.unwrap();
    // The same message as the writer would publish it, twice, outside the window.
    let stored = stream.get_raw_message(1).await.unwrap();
    for _ in 0..2 {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(stored.payload.clone())
            .message_id("copied-id");
        jetstream.send_publish(stored.subject.to_string(), publish).await.unwrap().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    logs.append(1, vec![b"after".to_vec()], 1, false).await.unwrap();
    let data: Vec<Vec<u8>> = read_all(&logs, 1, 0).await.into_iter().map(|r| r.data).collect();
    assert_eq!(data, vec![b"before".to_vec(), b"before".to_vec(), b"after".to_vec()]);
}

/// A consumer reads the store of the replica it was placed on and steps over what
/// that store lacks. A message the stream should hold (it is above the purged
/// ones) but the consumer stepped over is never skipped: it is read from the
/// leader, and if the leader lacks it too the read fails rather than go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_consumer_steps_over_is_never_skipped() {
    let cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "holes").await;
    logs.create_stream(1, None).await.unwrap();
    let client = async_nats::connect(cluster.urls()[0].as_str()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    // Stream 2: stream 1's configuration but deletes allowed, to make a hole.
    let mut config = jetstream.get_stream(logs.stream_name(1)).await.unwrap().info().await.unwrap().config.clone();
    config.name = logs.stream_name(2);
    config.subjects = config.subjects.iter().map(|s| format!("{}2", s.trim_end_matches('1'))).collect();
    config.deny_delete = false;
    jetstream.create_stream(config).await.unwrap();
    for data in [b"one", b"two", b"six"] {
        logs.append(2, vec![data.to_vec()], 1, false).await.unwrap();
    }
    let stream = jetstream.get_stream(logs.stream_name(2)).await.unwrap();
    assert!(stream.delete_message(2).await.unwrap());
    let mut cursor = logs.cursor(2, 0, None);
    let (mut read, mut errors) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        match cursor.read(1000, 1 << 20).await {
            Ok(records) if records.is_empty() => cursor.wait(Duration::from_millis(50)).await,
            Ok(records) => read.extend(records.into_iter().map(|r| r.data)),
            Err(error) => errors.push(error.to_string()),
        }
    }
    // What was read before the hole is handed over; nothing after it ever is.
    assert_eq!(read, vec![b"one".to_vec()]);
    assert!(!errors.is_empty() && errors.iter().all(|e| e.contains("message 2 of")), "{errors:?}");
}

/// Messages purged below a reader's position (delivered by every lane) are no
/// hole: a cursor from before them starts at the first one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_before_purged_messages_starts_at_the_first_kept() {
    let cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "purged").await;
    logs.create_stream(1, None).await.unwrap();
    for data in [b"one", b"two", b"six"] {
        logs.append(1, vec![data.to_vec()], 1, false).await.unwrap();
    }
    let client = async_nats::connect(cluster.urls()[0].as_str()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream(logs.stream_name(1)).await.unwrap();
    stream.purge().sequence(3).await.unwrap();
    let data: Vec<Vec<u8>> = read_all(&logs, 1, 0).await.into_iter().map(|r| r.data).collect();
    assert_eq!(data, vec![b"six".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_in_order_and_concurrent_appends_share_messages() {
    let cluster = Cluster::start(Setup::default());
    let logs = Arc::new(logs(&cluster, "a").await);
    logs.create_stream(1, Some(1 << 30)).await.unwrap();
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let logs = logs.clone();
            tokio::spawn(async move {
                let records = vec![format!("r{i}-0").into_bytes(), format!("r{i}-1").into_bytes()];
                (i, logs.append(1, records, 1_000 + u64::from(i), false).await.unwrap())
            })
        })
        .collect();
    let mut appended = Vec::new();
    for task in tasks {
        appended.push(task.await.unwrap());
    }
    let records = read_all(&logs, 1, 0).await;
    assert_eq!(records.len(), 400);
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase");
    for (i, a) in &appended {
        assert_eq!(a.last_seq, a.first_seq + 1);
        let first = records.iter().find(|r| r.seq == a.first_seq).expect("the append's first record");
        assert_eq!(first.data, format!("r{i}-0").into_bytes());
        assert_eq!(first.arrival_ms, 1_000 + u64::from(*i));
    }
    let messages: std::collections::BTreeSet<u64> =
        records.iter().map(|r| sluice_jetstream::message::message_seq(r.seq)).collect();
    assert!(messages.len() < 200, "{} messages for 200 concurrent appends: they share commit groups", messages.len());
    // A cursor starts at a record inside a message.
    let from = records[3].seq;
    assert_eq!(read_all(&logs, 1, from).await.first().map(|r| r.seq), Some(from));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_is_caught_up_only_once_it_read_every_stored_message() {
    let cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "a").await;
    logs.create_stream(1, Some(1 << 30)).await.unwrap();
    logs.append(1, vec![b"first".to_vec()], 1, false).await.unwrap();
    let mut cursor = logs.cursor(1, 0, None);
    let mut got = Vec::new();
    while got.is_empty() {
        got = cursor.read(100, 1 << 20).await.unwrap();
    }
    assert!(cursor.read(100, 1 << 20).await.unwrap().is_empty());
    assert!(cursor.caught_up().await.unwrap(), "everything stored is read");
    // Stored after the last message the cursor took: the pending count that message
    // carried does not know of it, the stream does.
    logs.append(1, vec![b"second".to_vec()], 2, false).await.unwrap();
    assert!(!cursor.caught_up().await.unwrap(), "a message stored and not read");
    let mut more = Vec::new();
    while more.is_empty() {
        more = cursor.read(100, 1 << 20).await.unwrap();
    }
    assert_eq!(more[0].data, b"second");
    assert!(cursor.caught_up().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_appends_published_side_by_side_each_get_their_own_records_back() {
    // Appends of 600 KiB: each group is large enough to be published while another
    // is in flight, so the answers come from concurrent publishes.
    let cluster = Cluster::start(Setup::default());
    let logs = Arc::new(logs(&cluster, "a").await);
    logs.create_stream(1, Some(1 << 30)).await.unwrap();
    let record = |i: u32, j: u32| {
        let mut r = format!("r{i}-{j}-").into_bytes();
        r.resize(300 << 10, b'a' + (i % 26) as u8);
        r
    };
    let tasks: Vec<_> = (0..24u32)
        .map(|i| {
            let logs = logs.clone();
            tokio::spawn(async move { (i, logs.append(1, vec![record(i, 0), record(i, 1)], 7, false).await.unwrap()) })
        })
        .collect();
    let mut appended = Vec::new();
    for task in tasks {
        appended.push(task.await.unwrap());
    }
    let records = read_all(&logs, 1, 0).await;
    assert_eq!(records.len(), 48);
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase");
    for (i, a) in &appended {
        assert_eq!(a.last_seq, a.first_seq + 1);
        for (j, seq) in [(0, a.first_seq), (1, a.last_seq)] {
            let stored = records.iter().find(|r| r.seq == seq).expect("the append's record");
            assert!(stored.data == record(*i, j), "append {i} record {j} is read back at its sequence");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_fenced_between_nodes_and_delivered_messages_are_purged() {
    let cluster = Cluster::start(Setup::default());
    let a = logs(&cluster, "a").await;
    let b = logs(&cluster, "b").await;
    a.create_stream(2, Some(1 << 30)).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = a.append(2, vec![vec![b'x'; 10_000]], i, false).await.unwrap().last_seq;
    }
    assert_eq!(a.progress(2).await.unwrap(), (0, None));
    let before = a.retained_bytes(2).await.unwrap();
    let a_tenure = a.take_over(2).await.unwrap();
    assert_eq!((a_tenure.acked, a_tenure.state.clone()), (0, None));
    a.commit(2, a_tenure.token, last - 1, Some(b"lane state".to_vec())).await.unwrap();
    assert_eq!(b.progress(2).await.unwrap(), (last - 1, Some(b"lane state".to_vec())), "seen from the other node");
    assert!(a.retained_bytes(2).await.unwrap() < before / 4, "messages below the acknowledged one are purged");
    // b takes the stream over: the progress entry's revision moves, and a's next
    // commit fails, whatever a believes it still holds.
    let b_tenure = b.take_over(2).await.unwrap();
    assert_eq!((b_tenure.acked, b_tenure.state), (last - 1, Some(b"lane state".to_vec())));
    assert!(matches!(a.commit(2, a_tenure.token, last, None).await, Err(Error::Fenced(2))));
    b.commit(2, b_tenure.token, last - 1, Some(b"b's state".to_vec())).await.unwrap();
    assert_eq!(b.progress(2).await.unwrap(), (last - 1, Some(b"b's state".to_vec())));
    // A commit never moves the position back, and keeps the state when given none.
    b.commit(2, b_tenure.token, 3, None).await.unwrap();
    assert_eq!(b.progress(2).await.unwrap(), (last - 1, Some(b"b's state".to_vec())));
    let left = read_all(&b, 2, last).await;
    assert_eq!(left.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![last], "the unacknowledged record is still there");
}

/// The cluster's fault test once saw two overlapping batches delivered: a node
/// handed a stream away and got it back, and its earlier delivery worker, still
/// running with the old position, committed through the revision its new worker's
/// take-over had just read. Each tenure now commits only through its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_tenure_on_the_same_node_cannot_commit_after_a_take_over() {
    let cluster = Cluster::start(Setup::default());
    let a = logs(&cluster, "a").await;
    let b = logs(&cluster, "b").await;
    a.create_stream(3, None).await.unwrap();
    let first = a.take_over(3).await.unwrap();
    a.commit(3, first.token, 0, Some(b"old worker".to_vec())).await.unwrap();
    // The stream goes to b, which commits, and comes back to a.
    let on_b = b.take_over(3).await.unwrap();
    b.commit(3, on_b.token, 0, Some(b"b delivered more".to_vec())).await.unwrap();
    let second = a.take_over(3).await.unwrap();
    assert_eq!(second.state.as_deref(), Some(&b"b delivered more"[..]));
    // a's first worker has not stopped yet: its commit must fail, before and after
    // the second tenure's own commits.
    assert!(matches!(a.commit(3, first.token, 0, Some(b"stale".to_vec())).await, Err(Error::Fenced(3))));
    a.commit(3, second.token, 0, Some(b"new worker".to_vec())).await.unwrap();
    assert!(matches!(a.commit(3, first.token, 0, Some(b"stale".to_vec())).await, Err(Error::Fenced(3))));
    assert!(matches!(b.commit(3, on_b.token, 0, Some(b"stale".to_vec())).await, Err(Error::Fenced(3))));
    assert_eq!(a.progress(3).await.unwrap().1.as_deref(), Some(&b"new worker"[..]));
}

/// A Kinesis source's owner appends only onto the log it read: an append made by
/// anyone since (a former owner still reading) makes its next one fail, so that it
/// reads the log again instead of appending records the other already stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_append_fails_once_someone_else_appended_until_the_log_is_read_again() {
    let cluster = Cluster::start(Setup::default());
    let old = logs(&cluster, "old").await;
    let new = logs(&cluster, "new").await;
    old.create_stream(4, None).await.unwrap();
    let old_tenure = old.take_over(4).await.unwrap();
    // Unsettled, nothing is appended.
    let unsettled = old.append_exclusive(4, old_tenure.token, vec![b"k1".to_vec()], 1).await;
    assert!(matches!(unsettled, Err(Error::Conflict(_))), "{unsettled:?}");
    old.settle_exclusive(4, old_tenure.token).await.unwrap();
    old.append_exclusive(4, old_tenure.token, vec![b"k1".to_vec()], 1).await.unwrap();
    let new_tenure = new.take_over(4).await.unwrap();
    new.settle_exclusive(4, new_tenure.token).await.unwrap();
    // The former owner, paused until now, appends once more: it has not seen
    // anything change, so this lands.
    old.append_exclusive(4, old_tenure.token, vec![b"k2".to_vec()], 1).await.unwrap();
    // The new owner read the log before that append: its own is refused, and so is
    // every later one until it settles and reads again.
    for _ in 0..2 {
        let refused = new.append_exclusive(4, new_tenure.token, vec![b"k2 again".to_vec()], 1).await;
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    }
    new.settle_exclusive(4, new_tenure.token).await.unwrap();
    let held: Vec<Vec<u8>> = read_all(&new, 4, 0).await.into_iter().map(|r| r.data).collect();
    assert_eq!(held, vec![b"k1".to_vec(), b"k2".to_vec()]);
    // It appends what comes after; now the former owner is refused.
    new.append_exclusive(4, new_tenure.token, vec![b"k3".to_vec()], 1).await.unwrap();
    new.append_exclusive(4, new_tenure.token, vec![b"k4".to_vec()], 1).await.unwrap();
    let stale = old.append_exclusive(4, old_tenure.token, vec![b"k3 again".to_vec()], 1).await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    let held: Vec<Vec<u8>> = read_all(&new, 4, 0).await.into_iter().map(|r| r.data).collect();
    assert_eq!(held, vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec(), b"k4".to_vec()]);
    // A later tenure on the same node fences the earlier one outright.
    let newer = new.take_over(4).await.unwrap();
    let fenced = new.append_exclusive(4, new_tenure.token, vec![b"x".to_vec()], 1).await;
    assert!(matches!(fenced, Err(Error::Fenced(4))), "{fenced:?}");
    new.settle_exclusive(4, newer.token).await.unwrap();
    new.append_exclusive(4, newer.token, vec![b"k5".to_vec()], 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_refuses_appends_and_loses_nothing() {
    let cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "a").await;
    logs.create_stream(3, Some(64 << 10)).await.unwrap();
    let mut stored = 0;
    let refusal = loop {
        match logs.append(3, vec![vec![b'f'; 4096]], 0, false).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "the 64 KiB limit never refused");
    };
    assert!(matches!(refusal, Error::Full(_)), "{refusal}");
    assert_eq!(read_all(&logs, 3, 0).await.len(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_server_down_is_survived_and_all_down_is_never_an_acknowledgement() {
    let mut cluster = Cluster::start(Setup::default());
    let logs = logs(&cluster, "a").await;
    logs.create_stream(4, Some(1 << 30)).await.unwrap();
    logs.append(4, vec![b"before".to_vec()], 0, false).await.unwrap();
    cluster.servers[2].kill();
    let mut acked = vec![b"before".to_vec()];
    for i in 0..20 {
        let record = format!("one down {i}").into_bytes();
        // The client may have been connected to the killed server: it reconnects.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match logs.append(4, vec![record.clone()], 0, false).await {
                Ok(_) => break,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "no quorum with two of three: {e}"),
            }
        }
        acked.push(record);
    }
    for server in &mut cluster.servers[..2] {
        server.kill();
    }
    let refused = logs.append(4, vec![b"never".to_vec()], 0, false).await;
    assert!(refused.is_err(), "no server: never acknowledged");
    for server in &mut cluster.servers {
        server.start();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match logs.append(4, vec![b"after".to_vec()], 0, false).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "did not recover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    acked.push(b"after".to_vec());
    let data: Vec<Vec<u8>> = read_all(&logs, 4, 0).await.into_iter().map(|r| r.data).collect();
    for record in &acked {
        assert!(data.contains(record), "{} lost", String::from_utf8_lossy(record));
    }
}

/// A create asked while the cluster has no meta leader (two of three servers down,
/// as just after a cluster starts) waits for it, within the timeout, rather than
/// failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_while_the_cluster_elects_a_leader_is_created_once_it_has_one() {
    let mut cluster = Cluster::start(Setup::default());
    let logs = Arc::new(logs(&cluster, "a").await);
    logs.create_stream(1, None).await.expect("a healthy cluster creates");
    for server in &mut cluster.servers[1..] {
        server.kill();
    }
    let creating = tokio::spawn({
        let logs = logs.clone();
        async move { logs.create_stream(2, None).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for server in &mut cluster.servers[1..] {
        server.start();
    }
    creating.await.unwrap().expect("created once the cluster has a leader again");
    logs.append(2, vec![b"first".to_vec()], 0, false).await.expect("the new stream takes records");
    assert_eq!(read_all(&logs, 2, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_name_never_has_its_appends_taken_for_duplicates() {
    let cluster = Cluster::start(Setup::default());
    let before = logs(&cluster, "node-1").await;
    before.create_stream(5, None).await.unwrap();
    before.append(5, vec![b"first life".to_vec()], 0, false).await.unwrap();
    drop(before);
    // The same node name, a new process: its first commit group must be stored,
    // not answered with the first life's message.
    let after = logs(&cluster, "node-1").await;
    let appended = after.append(5, vec![b"second life".to_vec()], 0, false).await.unwrap();
    let records = read_all(&after, 5, 0).await;
    let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(data, vec![&b"first life"[..], &b"second life"[..]]);
    assert_eq!(records[1].seq, appended.first_seq);
}
