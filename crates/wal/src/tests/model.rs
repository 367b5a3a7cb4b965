//! Model-based property test: random appends (plain and encrypted), reads,
//! acknowledgements and restarts against the real log and a plain in-memory model.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{open, read_all, runtime, small_options};
use crate::Encryption;

#[derive(Debug, Clone)]
enum Action {
    Append { stream: u64, sizes: Vec<usize>, key: u8 },
    Read { stream: u64, records_max: usize },
    Ack { stream: u64, fraction: u8 },
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u64..3, prop::collection::vec(0usize..700, 1..12), 0u8..3)
            .prop_map(|(stream, sizes, key)| Action::Append { stream, sizes, key }),
        2 => (0u64..3, 1usize..20).prop_map(|(stream, records_max)| Action::Read { stream, records_max }),
        1 => (0u64..3, 0u8..=100).prop_map(|(stream, fraction)| Action::Ack { stream, fraction }),
        1 => Just(Action::Restart),
    ]
}

#[derive(Default)]
struct ModelStream {
    /// Every record ever appended and not yet acknowledged, by sequence number.
    records: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    acked: u64,
    /// Where the model's reader is.
    cursor: u64,
}

fn payload(stream: u64, seq: u64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (stream as usize * 31 + seq as usize * 7 + i) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn log_behaves_like_the_model(actions in prop::collection::vec(action(), 1..60)) {
        // Memory-backed when available: this test checks logic, not the disk, and
        // runs thousands of syncs. The recovery tests use the real disk.
        let dir = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm").unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        let rt = runtime();
        let _guard = rt.enter();
        let (mut wal, _) = open(dir.path(), small_options());
        let mut model: BTreeMap<u64, ModelStream> = BTreeMap::new();
        let mut readers = BTreeMap::new();
        for id in 0..3u64 {
            wal.create_stream(id, b"").unwrap();
            model.insert(id, ModelStream { next_seq: 1, cursor: 1, ..ModelStream::default() });
        }
        for action in actions {
            match action {
                Action::Append { stream, sizes, key } => {
                    let m = model.get_mut(&stream).unwrap();
                    let records: Vec<Vec<u8>> =
                        sizes.iter().enumerate().map(|(i, s)| payload(stream, m.next_seq + i as u64, *s)).collect();
                    let encryption = match key { 0 => Encryption::None, 1 => Encryption::Key("k1".into()), _ => Encryption::Key("k2".into()) };
                    let appended = rt.block_on(wal.append(stream, records.clone(), encryption)).unwrap();
                    prop_assert_eq!(appended.first_seq, m.next_seq);
                    prop_assert_eq!(appended.last_seq, m.next_seq + records.len() as u64 - 1);
                    prop_assert_eq!(appended.encrypted, key != 0);
                    for record in records {
                        m.records.insert(m.next_seq, record);
                        m.next_seq += 1;
                    }
                }
                Action::Read { stream, records_max } => {
                    let m = model.get_mut(&stream).unwrap();
                    let reader = readers.entry(stream).or_insert_with(|| wal.reader(stream, m.cursor).unwrap());
                    let got = reader.read(records_max, usize::MAX).unwrap();
                    let want: Vec<(u64, Vec<u8>)> =
                        m.records.range(m.cursor..).take(records_max).map(|(s, d)| (*s, d.clone())).collect();
                    let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|r| (r.seq, r.data)).collect();
                    prop_assert_eq!(&got, &want);
                    if let Some((last, _)) = got.last() {
                        m.cursor = last + 1;
                    }
                }
                Action::Ack { stream, fraction } => {
                    let m = model.get_mut(&stream).unwrap();
                    // Delivery only acknowledges what it has read.
                    let upto = m.acked + (m.cursor - 1 - m.acked) * fraction as u64 / 100;
                    wal.acknowledge(stream, upto).unwrap();
                    m.acked = m.acked.max(upto);
                    m.records = m.records.split_off(&(m.acked + 1));
                    prop_assert_eq!(wal.acknowledged(stream).unwrap(), m.acked);
                }
                Action::Restart => {
                    readers.clear();
                    rt.block_on(wal.shutdown());
                    drop(wal);
                    let (reopened, report) = open(dir.path(), small_options());
                    prop_assert!(report.quarantined.is_empty());
                    prop_assert!(report.gaps.is_empty(), "{:?}", report.gaps);
                    prop_assert!(report.failed.is_empty());
                    prop_assert_eq!(report.torn_tail_bytes, 0);
                    wal = reopened;
                    for (id, m) in model.iter_mut() {
                        // After a restart delivery resumes from the checkpoint.
                        m.cursor = m.acked + 1;
                        prop_assert_eq!(wal.acknowledged(*id).unwrap(), m.acked);
                        prop_assert_eq!(wal.durable_next(*id).unwrap(), m.next_seq);
                    }
                }
            }
            // Back-pressure counts only what is not yet delivered.
            let mut total = 0;
            for (id, m) in &model {
                let undelivered = wal.undelivered_bytes(*id).unwrap();
                prop_assert_eq!(undelivered == 0, m.acked + 1 == m.next_seq, "stream {} holds {} bytes", id, undelivered);
                total += undelivered;
            }
            prop_assert_eq!(wal.undelivered_bytes_total(), total);
        }
        for (id, m) in &model {
            let all: Vec<(u64, Vec<u8>)> = read_all(&wal, *id, m.acked + 1).into_iter().map(|r| (r.seq, r.data)).collect();
            let want: Vec<(u64, Vec<u8>)> = m.records.iter().map(|(s, d)| (*s, d.clone())).collect();
            prop_assert_eq!(all, want);
        }
        rt.block_on(wal.shutdown());
    }
}
