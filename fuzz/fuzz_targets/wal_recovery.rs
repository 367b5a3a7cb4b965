//! Fuzz target: write-ahead-log recovery from damaged files (issue 5). A template
//! log is written once by the real `Wal` (two stream logs: one in the clear over
//! two segments, one encrypted; both with checkpoints and definitions). The input
//! is a script of edits to the template's files: truncations, flipped bytes,
//! overwritten ranges, deleted files. Recovery must then either refuse with an
//! error or open a log whose streams either failed recovery (and fail it again on
//! the next open) or read back strictly increasing records, take a new append, and
//! recover to exactly the same records plus that append, with no newly damaged
//! region, no new gap and no torn tail, when opened again. Never a panic.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice_wal::{Encryption, KeyError, KeyWrapper, StoredRecord, Wal, WalOptions, DATA_KEY_BYTES};

/// Wraps data keys by XOR with a fixed key, so encrypted segments can be recovered.
struct XorKeys;

const KEY_REF: &str = "fuzz-key";

impl KeyWrapper for XorKeys {
    fn wrap(&self, key_ref: &str, data_key: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
        if key_ref != KEY_REF {
            return Err(KeyError::NotFound);
        }
        Ok(data_key.iter().map(|b| b ^ 0x5a).collect())
    }
    fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<[u8; DATA_KEY_BYTES], KeyError> {
        let key: [u8; DATA_KEY_BYTES] = wrapped.try_into().map_err(|_| KeyError::NotFound)?;
        if key_ref != KEY_REF {
            return Err(KeyError::NotFound);
        }
        Ok(key.map(|b| b ^ 0x5a))
    }
}

fn options() -> WalOptions {
    // Small segments: the template spans several files.
    WalOptions { segment_bytes_max: 4096, ..WalOptions::default() }
}

fn runtime() -> tokio::runtime::Runtime {
    // The log's writers close idle files on a timer.
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime")
}

/// Where temporary logs go: memory when possible, fsyncs are cheap there.
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// The template's files, relative path and contents, in a stable order.
fn template() -> &'static Vec<(PathBuf, Vec<u8>)> {
    static TEMPLATE: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = scratch();
        runtime().block_on(async {
            let (wal, _) = Wal::open(dir.path(), options(), Arc::new(XorKeys)).expect("open");
            for (id, encryption) in [(1, Encryption::None), (2, Encryption::Key(KEY_REF.into()))] {
                wal.create_stream(id, b"definition").expect("create");
                for batch in 0..6u8 {
                    let records = (0..5u8).map(|i| vec![b'a' + i; 100 + 37 * usize::from(batch)]).collect();
                    wal.append(id, records, encryption.clone()).await.expect("append");
                }
                wal.commit(id, 3, b"state".to_vec()).expect("commit");
            }
            wal.shutdown().await;
        });
        let mut files = Vec::new();
        collect(dir.path(), dir.path(), &mut files);
        files.sort();
        // Preallocated tails are zeros: cut them so edits land on real bytes.
        for (_, bytes) in &mut files {
            while bytes.len() % 8 == 0 && bytes.len() > 8 && bytes[bytes.len() - 8..] == [0; 8] {
                bytes.truncate(bytes.len() - 8);
            }
        }
        files
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let bytes = std::fs::read(&path).expect("read");
            out.push((path.strip_prefix(root).expect("under root").to_path_buf(), bytes));
        }
    }
}

/// Every readable record of every stream, from just after its acknowledged position.
fn contents(wal: &Wal) -> Vec<(u64, Vec<StoredRecord>)> {
    let mut streams = wal.streams();
    streams.sort();
    streams
        .into_iter()
        .map(|id| {
            let from = wal.acknowledged(id).expect("acknowledged") + 1;
            let mut reader = wal.reader(id, from).expect("reader");
            let mut records: Vec<StoredRecord> = Vec::new();
            loop {
                let batch = reader.read(1000, 1 << 20).expect("a recovered log reads without error");
                if batch.is_empty() {
                    break;
                }
                records.extend(batch);
            }
            for pair in records.windows(2) {
                assert!(pair[0].seq < pair[1].seq, "sequence numbers must increase");
            }
            if let Some(first) = records.first() {
                assert!(first.seq >= from, "records at or below the acknowledged position are not read");
            }
            (id, records)
        })
        .collect()
}

fn summary(streams: &[(u64, Vec<StoredRecord>)]) -> Vec<(u64, Vec<(u64, Vec<u8>)>)> {
    streams.iter().map(|(id, records)| (*id, records.iter().map(|r| (r.seq, r.data.clone())).collect())).collect()
}

fuzz_target!(|script: &[u8]| {
    let template = template();
    let mut files = template.clone();
    // Edits: [op, file, offset_lo, offset_hi, value] each.
    for edit in script.chunks_exact(5) {
        let (op, file, offset, value) =
            (edit[0], edit[1], usize::from(u16::from_le_bytes([edit[2], edit[3]])), edit[4]);
        let Some((_, bytes)) = files.get_mut(usize::from(file) % template.len()) else { continue };
        let at = if bytes.is_empty() { 0 } else { offset % bytes.len() };
        match op % 5 {
            0 => bytes.truncate(at),
            1 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= value.max(1);
                }
            }
            2 => bytes[at..].iter_mut().take(usize::from(value)).for_each(|b| *b = 0),
            3 => bytes.extend(std::iter::repeat(value).take(usize::from(value))),
            _ => bytes.clear(),
        }
    }
    let dir = scratch();
    for (path, bytes) in &files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
    }
    runtime().block_on(async {
        let Ok((wal, first)) = Wal::open(dir.path(), options(), Arc::new(XorKeys)) else { return };
        let recovered = summary(&contents(&wal));
        let mut expected = recovered.clone();
        for (id, records) in &mut expected {
            let Ok(appended) = wal.append(*id, vec![b"after recovery".to_vec()], Encryption::None).await else {
                continue;
            };
            assert!(records.last().is_none_or(|(seq, _)| *seq < appended.first_seq), "appended above the recovered");
            records.push((appended.first_seq, b"after recovery".to_vec()));
        }
        wal.shutdown().await;
        drop(wal);
        let (wal, report) = Wal::open(dir.path(), options(), Arc::new(XorKeys)).expect("a recovered log opens again");
        // Damaged frames stay where they are (copied aside, skipped) and are found
        // again; segments with a damaged header were moved aside. Nothing new.
        let regions = |report: &sluice_wal::RecoveryReport| {
            let mut regions: Vec<_> = report.quarantined.iter().map(|q| (q.segment.clone(), q.start, q.end)).collect();
            regions.sort();
            regions
        };
        let (again, before) = (regions(&report), regions(&first));
        assert!(again.iter().all(|r| before.contains(r)), "a second recovery cut out more: {again:?} after {before:?}");
        assert_eq!(report.torn_tail_bytes, 0, "the first recovery left no torn tail");
        let failed = |report: &sluice_wal::RecoveryReport| {
            let mut ids: Vec<u64> = report.failed.iter().map(|f| f.stream).collect();
            ids.sort();
            ids
        };
        assert_eq!(failed(&report), failed(&first), "a stream fails recovery again, and only then");
        assert!(report.gaps.iter().all(|g| first.gaps.contains(g)), "no new gap: {:?} after {:?}", report.gaps, first.gaps);
        assert_eq!(summary(&contents(&wal)), expected, "the second recovery reads what the first did, plus the append");
        wal.shutdown().await;
    });
});
