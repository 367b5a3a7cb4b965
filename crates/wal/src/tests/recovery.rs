//! Recovery tests: torn tails cut at every offset, zero-filled tails, bit flips in
//! the middle of the log, and encryption leaving no plaintext on disk.

use std::fs;
use std::path::{Path, PathBuf};

use super::{open, read_all, runtime, small_options};
use crate::{Encryption, WalOptions};

const STREAM: u64 = 0xabc;

fn record(i: u64) -> Vec<u8> {
    format!("record-{i:05}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

/// Writes `n` records one append each, closes the log, and returns the segment files.
fn write_log(dir: &Path, n: u64, encryption: Encryption, options: WalOptions) -> Vec<PathBuf> {
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir, options);
    wal.create_stream(STREAM, b"").unwrap();
    for i in 1..=n {
        let appended = rt.block_on(wal.append(STREAM, vec![record(i)], encryption.clone())).unwrap();
        assert_eq!(appended.first_seq, i);
    }
    rt.block_on(wal.shutdown());
    segments(dir)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(format!("{STREAM:016x}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Reopens and returns the sequence numbers recovered, after checking contents and
/// that the log still accepts and returns a new record.
fn recover(dir: &Path) -> (Vec<u64>, crate::RecoveryReport) {
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, report) = open(dir, small_options());
    let records = read_all(&wal, STREAM, 1);
    for r in &records {
        assert_eq!(r.data, record(r.seq), "record {} damaged but returned", r.seq);
    }
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let next = rt.block_on(wal.append(STREAM, vec![b"after".to_vec()], Encryption::None)).unwrap();
    assert!(next.first_seq > seqs.last().copied().unwrap_or(0));
    let again = read_all(&wal, STREAM, next.first_seq);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].data, b"after");
    rt.block_on(wal.shutdown());
    (seqs, report)
}

/// The offsets at which each frame of a segment starts, and its end.
fn frame_offsets(path: &Path) -> Vec<u64> {
    frames(path)
        .iter()
        .map(|(start, _)| *start)
        .chain(frames(path).last().map(|(_, end)| end.next_multiple_of(8)))
        .collect()
}

/// Each frame's start and the end of its payload (before padding).
fn frames(path: &Path) -> Vec<(u64, u64)> {
    let data = fs::read(path).unwrap();
    let (_, header_len) = crate::segment::decode_header(&data, path).unwrap();
    let mut frames = vec![];
    let mut at = header_len;
    while let crate::frame::Decoded::Frame { header, next, .. } = crate::frame::decode(&data[at..], 2_000_000) {
        frames.push((at as u64, (at + crate::FRAME_HEADER_BYTES) as u64 + header.len as u64));
        at += next;
    }
    frames
}

#[test]
fn truncation_at_every_offset_of_the_last_frames_keeps_every_whole_frame() {
    let source = tempfile::tempdir().unwrap();
    let files = write_log(source.path(), 100, Encryption::None, small_options());
    assert!(files.len() > 2, "the test needs several segments, got {}", files.len());
    let last = files.last().unwrap();
    let offsets = frame_offsets(last);
    let n_before_last: u64 = 100 - (offsets.len() as u64 - 1);
    let tail_start = offsets[offsets.len().saturating_sub(4)];
    let end = *offsets.last().unwrap();
    for cut in tail_start..=end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(source.path(), dir.path());
        let target = segments(dir.path()).pop().unwrap();
        let file = fs::OpenOptions::new().write(true).open(&target).unwrap();
        file.set_len(cut).unwrap();
        let whole_frames = frames(last).iter().filter(|(_, end)| *end <= cut).count() as u64;
        let (seqs, report) = recover(dir.path());
        assert_eq!(seqs, (1..=n_before_last + whole_frames).collect::<Vec<_>>(), "cut at {cut}");
        assert!(report.quarantined.is_empty(), "cut at {cut}: a torn tail is not corruption");
    }
}

#[test]
fn zero_filled_and_garbage_tails_are_cut() {
    for fill in [0u8, 0xA5] {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 40, Encryption::None, small_options());
        let last = files.last().unwrap();
        let offsets = frame_offsets(last);
        let from = offsets[offsets.len() - 3];
        let mut data = fs::read(last).unwrap();
        for b in &mut data[from as usize..] {
            *b = fill;
        }
        data.extend(std::iter::repeat_n(fill, 4096));
        fs::write(last, &data).unwrap();
        let (seqs, report) = recover(dir.path());
        assert_eq!(seqs, (1..=38).collect::<Vec<_>>(), "fill {fill:#x}");
        assert!(report.quarantined.is_empty());
        assert_eq!(report.torn_tail_bytes > 0, fill != 0);
    }
}

#[test]
fn a_flipped_bit_mid_log_is_quarantined_and_nothing_after_it_is_lost() {
    for segment_index in [0usize, 1, usize::MAX] {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 40, Encryption::None, small_options());
        let target = if segment_index == usize::MAX { files.last().unwrap() } else { &files[segment_index] };
        let offsets = frame_offsets(target);
        assert!(offsets.len() > 3);
        // Damage the second frame of the segment, so valid frames follow it.
        let mut data = fs::read(target).unwrap();
        let damaged_at = offsets[1] as usize + 40;
        data[damaged_at] ^= 0x04;
        fs::write(target, &data).unwrap();
        let damaged_seq = {
            let all_offsets: Vec<_> = files.iter().map(|f| frame_offsets(f).len() as u64 - 1).collect();
            let position = files.iter().position(|f| f == target).unwrap();
            all_offsets[..position].iter().sum::<u64>() + 2
        };
        let (seqs, report) = recover(dir.path());
        let want: Vec<u64> = (1..=40).filter(|s| *s != damaged_seq).collect();
        assert_eq!(seqs, want, "segment {segment_index}");
        assert_eq!(report.quarantined.len(), 1, "segment {segment_index}");
        let q = &report.quarantined[0];
        assert!(q.copy.exists());
        assert!(q.start <= damaged_at as u64 && (damaged_at as u64) < q.end);
    }
}

#[test]
fn encrypted_records_leave_no_plaintext_on_disk_and_survive_key_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    wal.create_stream(STREAM, b"").unwrap();
    let secret = |i: u32| format!("TOP-SECRET-PAYLOAD-{i:04}").into_bytes();
    for i in 0..30 {
        let key = if i < 15 { "k1" } else { "k2" };
        let appended = rt.block_on(wal.append(STREAM, vec![secret(i)], Encryption::Key(key.into()))).unwrap();
        assert!(appended.encrypted);
    }
    let refused = rt.block_on(wal.append(STREAM, vec![secret(99)], Encryption::Key("nope".into())));
    assert!(matches!(refused, Err(crate::Error::Key { .. })));
    rt.block_on(wal.shutdown());
    drop(wal);
    for entry in walk(dir.path()) {
        let bytes = fs::read(&entry).unwrap();
        assert!(!bytes.windows(10).any(|w| w == b"TOP-SECRET"), "plaintext in {}", entry.display());
    }
    let (wal, _) = open(dir.path(), small_options());
    let records = read_all(&wal, STREAM, 1);
    assert_eq!(records.len(), 30);
    for (i, r) in records.iter().enumerate() {
        assert!(r.encrypted);
        assert_eq!(r.data, secret(i as u32));
    }
    rt.block_on(wal.shutdown());
}

/// A read that fails part-way (here: a segment file gone for a while, as when
/// descriptors run out) hands over the records it read before the failure; the
/// failure comes at the next read, and once it passes nothing is missing.
#[test]
fn a_read_failing_part_way_loses_none_of_what_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 100, Encryption::None, small_options());
    assert!(files.len() >= 3, "{files:?}");
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    let mut reader = wal.reader(STREAM, 1).unwrap();
    let aside = files[1].with_extension("aside");
    fs::rename(&files[1], &aside).unwrap();
    let first = reader.read(1000, 1 << 20).expect("the records before the failure");
    assert!(!first.is_empty());
    assert!(reader.read(1000, 1 << 20).is_err());
    fs::rename(&aside, &files[1]).unwrap();
    let mut seqs: Vec<u64> = first.iter().map(|r| r.seq).collect();
    loop {
        let batch = reader.read(1000, 1 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        seqs.extend(batch.iter().map(|r| r.seq));
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    rt.block_on(wal.shutdown());
}

#[test]
fn acknowledged_segments_are_deleted_and_stay_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 40, Encryption::None, small_options());
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    wal.acknowledge(STREAM, 39).unwrap();
    let left = segments(dir.path());
    assert!(left.len() < files.len());
    assert_eq!(read_all(&wal, STREAM, 1).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![40]);
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, _) = open(dir.path(), small_options());
    assert_eq!(wal.acknowledged(STREAM).unwrap(), 39);
    assert_eq!(wal.durable_next(STREAM).unwrap(), 41);
    rt.block_on(wal.shutdown());
}

#[test]
fn concurrent_appends_share_syncs_and_get_disjoint_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let wal = std::sync::Arc::new(rt.block_on(async { open(dir.path(), WalOptions::default()).0 }));
    wal.create_stream(STREAM, b"").unwrap();
    let ranges = rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(STREAM, vec![record(i); 3], Encryption::None).await.unwrap() })
            })
            .collect();
        let mut ranges = Vec::new();
        for t in tasks {
            ranges.push(t.await.unwrap());
        }
        ranges
    });
    let mut seqs: Vec<u64> = ranges.iter().flat_map(|a| a.first_seq..=a.last_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>());
    rt.block_on(wal.shutdown());
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_failed_fsync_poisons_the_log_and_is_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    let options = WalOptions { fail_syncs_after: Some(2), ..small_options() };
    let (wal, _) = open(dir.path(), options);
    wal.create_stream(STREAM, b"").unwrap();
    let mut fatal = wal.fatal();
    for i in 1..=2 {
        rt.block_on(wal.append(STREAM, vec![record(i)], Encryption::None)).unwrap();
    }
    assert!(fatal.borrow_and_update().is_none());
    let failed = rt.block_on(wal.append(STREAM, vec![record(3)], Encryption::None));
    assert!(matches!(failed, Err(crate::Error::Poisoned(_))), "{failed:?}");
    assert!(fatal.borrow_and_update().as_deref().is_some_and(|r| r.contains("fdatasync")));
    // Later appends are refused up front: the sync is never tried again.
    let refused = rt.block_on(wal.append(STREAM, vec![record(4)], Encryption::None));
    assert!(matches!(refused, Err(crate::Error::Poisoned(_))), "{refused:?}");
    rt.block_on(wal.shutdown());
    drop(wal);
    let (seqs, _) = recover(dir.path());
    assert!(seqs.starts_with(&[1, 2]), "acknowledged records survive: {seqs:?}");
    assert!(!seqs.contains(&4), "a refused append never reaches the log");
}

#[test]
fn consumer_state_survives_restarts_and_acknowledging_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10, Encryption::None, small_options());
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    assert_eq!(wal.state(STREAM).unwrap(), None);
    wal.acknowledge(STREAM, 3).unwrap();
    wal.commit(STREAM, 0, b"batch 4..7 key k".to_vec()).unwrap();
    assert!(matches!(wal.commit(STREAM, 9, vec![0; 65 << 10]), Err(crate::Error::StateTooLarge { .. })));
    assert_eq!(wal.acknowledged(STREAM).unwrap(), 3, "a refused commit changes nothing");
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, _) = open(dir.path(), small_options());
    assert_eq!(wal.state(STREAM).unwrap().as_deref(), Some(&b"batch 4..7 key k"[..]));
    assert_eq!(wal.acknowledged(STREAM).unwrap(), 3, "a commit never moves the position back");
    wal.acknowledge(STREAM, 5).unwrap();
    assert_eq!(wal.state(STREAM).unwrap().as_deref(), Some(&b"batch 4..7 key k"[..]), "acknowledging keeps the state");
    wal.commit(STREAM, 7, Vec::new()).unwrap();
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, _) = open(dir.path(), small_options());
    assert_eq!(wal.state(STREAM).unwrap(), None, "an empty state is no state");
    assert_eq!(wal.acknowledged(STREAM).unwrap(), 7);
    assert_eq!(read_all(&wal, STREAM, 1).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
    rt.block_on(wal.shutdown());
}

#[test]
fn after_one_stream_poisons_the_log_no_stream_acknowledges_anything() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), WalOptions { fail_syncs_after: Some(1), ..small_options() });
    wal.create_stream(1, b"").unwrap();
    wal.create_stream(2, b"").unwrap();
    rt.block_on(wal.append(1, vec![record(1)], Encryption::None)).unwrap();
    assert!(rt.block_on(wal.append(1, vec![record(2)], Encryption::None)).is_err());
    // The other stream's sync would "work" now (the hook only counts), but the log
    // as a whole is poisoned: nothing more may be acknowledged anywhere.
    let other = rt.block_on(wal.append(2, vec![record(3)], Encryption::None));
    assert!(matches!(other, Err(crate::Error::Poisoned(_))), "{other:?}");
    rt.block_on(wal.shutdown());
}

#[test]
fn undelivered_bytes_count_only_what_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 100, Encryption::None, small_options());
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    let frames_on_disk: u64 = segments(dir.path())
        .iter()
        .map(|p| {
            let data = fs::read(p).unwrap();
            data.len() as u64 - crate::segment::decode_header(&data, p).unwrap().1 as u64
        })
        .sum();
    let after_open = wal.undelivered_bytes(STREAM).unwrap();
    assert_eq!(after_open, frames_on_disk, "nothing acknowledged: every frame counts");
    assert_eq!(wal.undelivered_bytes_total(), after_open);
    rt.block_on(wal.append(STREAM, vec![record(101)], Encryption::None)).unwrap();
    let after_append = wal.undelivered_bytes(STREAM).unwrap();
    assert!(after_append > after_open);
    wal.acknowledge(STREAM, 90).unwrap();
    let after_ack = wal.undelivered_bytes(STREAM).unwrap();
    assert!(after_ack < after_append / 4, "delivered records no longer count: {after_ack} of {after_append}");
    assert!(after_ack > 0);
    wal.create_stream(7, b"").unwrap();
    rt.block_on(wal.append(7, vec![record(1)], Encryption::None)).unwrap();
    assert_eq!(wal.undelivered_bytes_total(), after_ack + wal.undelivered_bytes(7).unwrap());
    wal.delete_stream(7).unwrap();
    assert_eq!(wal.undelivered_bytes_total(), after_ack);
    wal.acknowledge(STREAM, 101).unwrap();
    assert_eq!(wal.undelivered_bytes(STREAM).unwrap(), 0, "everything delivered: nothing counts");
    assert_eq!(wal.undelivered_bytes_total(), 0);
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, _) = open(dir.path(), small_options());
    assert_eq!(wal.undelivered_bytes(STREAM).unwrap(), 0, "also after a restart");
    rt.block_on(wal.shutdown());
}

/// Waits (polling; no timing is asserted) until `done` holds, for at most 10 s.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    done()
}

#[test]
fn a_fully_delivered_stream_keeps_no_segment_and_takes_appends_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    wal.create_stream(STREAM, b"").unwrap();
    for i in 1..=5 {
        rt.block_on(wal.append(STREAM, vec![record(i)], Encryption::None)).unwrap();
    }
    assert_eq!(segments(dir.path()).len(), 1, "one segment, still being appended to");
    wal.acknowledge(STREAM, 5).unwrap();
    assert!(eventually(|| segments(dir.path()).is_empty()), "the delivered active segment was released");
    let next = rt.block_on(wal.append(STREAM, vec![record(6)], Encryption::None)).unwrap();
    assert_eq!(next.first_seq, 6);
    assert_eq!(read_all(&wal, STREAM, 1).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![6]);
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, report) = open(dir.path(), small_options());
    assert!(report.gaps.is_empty(), "{:?}", report.gaps);
    assert_eq!(wal.durable_next(STREAM).unwrap(), 7);
    // The last segment recovery found is released too once delivered, before any append.
    assert_eq!(segments(dir.path()).len(), 1);
    wal.acknowledge(STREAM, 6).unwrap();
    assert!(eventually(|| segments(dir.path()).is_empty()), "the recovered last segment was released");
    rt.block_on(wal.append(STREAM, vec![record(7)], Encryption::None)).unwrap();
    rt.block_on(wal.shutdown());
    drop(wal);
    {
        let (wal, _) = open(dir.path(), small_options());
        assert_eq!(read_all(&wal, STREAM, 1).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![7]);
        rt.block_on(wal.shutdown());
    }
    // A segment whose records are all acknowledged is deleted at recovery too.
    let (wal, _) = open(dir.path(), small_options());
    wal.acknowledge(STREAM, 7).unwrap();
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, _) = open(dir.path(), small_options());
    assert!(segments(dir.path()).is_empty());
    assert_eq!(wal.durable_next(STREAM).unwrap(), 8, "sequence numbers are never reused");
    rt.block_on(wal.shutdown());
}

#[test]
fn a_deleted_segment_is_reported_as_a_gap_and_reading_goes_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 100, Encryption::None, small_options());
    assert!(files.len() >= 4, "{files:?}");
    let base =
        |p: &PathBuf| crate::segment::parse_segment_file_name(&p.file_name().unwrap().to_string_lossy()).unwrap();
    let (lost_first, lost_last) = (base(&files[1]), base(&files[2]) - 1);
    fs::remove_file(&files[1]).unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    let (wal, report) = open(dir.path(), small_options());
    assert_eq!(report.gaps, vec![crate::Gap { stream: STREAM, first_seq: lost_first, last_seq: lost_last }]);
    let seqs: Vec<u64> = read_all(&wal, STREAM, 1).iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..lost_first).chain(lost_last + 1..=100).collect();
    assert_eq!(seqs, expected);
    rt.block_on(wal.shutdown());
    drop(wal);

    // The first segment above the checkpoint missing: also a gap, from the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 100, Encryption::None, small_options());
    {
        let (wal, _) = open(dir.path(), small_options());
        wal.acknowledge(STREAM, base(&files[1]) + 1).unwrap();
        rt.block_on(wal.shutdown());
    }
    fs::remove_file(&files[1]).unwrap();
    let (wal, report) = open(dir.path(), small_options());
    assert_eq!(
        report.gaps,
        vec![crate::Gap { stream: STREAM, first_seq: base(&files[1]) + 2, last_seq: base(&files[2]) - 1 }]
    );
    rt.block_on(wal.shutdown());
    drop(wal);

    // A last segment without a readable frame still says, by its base, that records
    // below it existed (found by fuzzing: the gap showed only after the next append).
    let dir = tempfile::tempdir().unwrap();
    let files = write_log(dir.path(), 100, Encryption::None, small_options());
    let last = files.last().unwrap();
    for middle in &files[1..files.len() - 1] {
        fs::remove_file(middle).unwrap();
    }
    let data = fs::read(last).unwrap();
    let header_len = crate::segment::decode_header(&data, last).unwrap().1;
    fs::write(last, &data[..header_len]).unwrap();
    let (wal, report) = open(dir.path(), small_options());
    assert_eq!(report.gaps, vec![crate::Gap { stream: STREAM, first_seq: base(&files[1]), last_seq: base(last) - 1 }]);
    rt.block_on(wal.shutdown());
}

#[test]
fn an_unreadable_checkpoint_fails_only_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    {
        let (wal, _) = open(dir.path(), small_options());
        for id in [1, 2] {
            wal.create_stream(id, format!("stream {id}").as_bytes()).unwrap();
            rt.block_on(wal.append(id, vec![record(1), record(2)], Encryption::None)).unwrap();
            wal.acknowledge(id, 1).unwrap();
        }
        rt.block_on(wal.shutdown());
    }
    let checkpoint = dir.path().join(format!("{:016x}", 2)).join("checkpoint");
    let before = walk(dir.path());
    fs::write(&checkpoint, b"garbage, not a checkpoint").unwrap();
    let (wal, report) = open(dir.path(), small_options());
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].stream, 2);
    assert!(report.failed[0].reason.contains("checkpoint"), "{}", report.failed[0].reason);
    assert_eq!(wal.streams(), vec![1], "the other stream is served");
    assert_eq!(read_all(&wal, 1, 1).len(), 1);
    let refused = rt.block_on(wal.append(2, vec![record(3)], Encryption::None));
    assert!(matches!(refused, Err(crate::Error::StreamUnavailable { stream: 2, .. })), "{refused:?}");
    assert!(wal.reader(2, 1).is_err());
    assert!(matches!(wal.create_stream(2, b""), Err(crate::Error::StreamExists(2))), "its id is never reused");
    assert_eq!(wal.definition(2).as_deref(), Some(&b"stream 2"[..]), "its definition is still known");
    assert_eq!(walk(dir.path()), before, "its files are left as they are");
    rt.block_on(wal.shutdown());
}

#[test]
fn definitions_are_kept_beside_the_log_and_a_log_can_be_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    {
        let (wal, _) = open(dir.path(), small_options());
        wal.create_stream(5, b"v1").unwrap();
        wal.define_stream(5, b"v2").unwrap();
        assert!(matches!(wal.create_stream(5, b"again"), Err(crate::Error::StreamExists(5))));
        rt.block_on(wal.append(5, vec![record(1)], Encryption::None)).unwrap();
        rt.block_on(wal.shutdown());
    }
    let (wal, _) = open(dir.path(), small_options());
    assert_eq!(wal.definition(5).as_deref(), Some(&b"v2"[..]));
    let moved = wal.set_aside(5).unwrap();
    assert!(moved.starts_with(dir.path().join("set-aside")), "{moved:?}");
    assert!(moved.join("meta").is_file() && !dir.path().join(format!("{:016x}", 5)).exists());
    assert!(wal.streams().is_empty());
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, report) = open(dir.path(), small_options());
    assert_eq!(report.n_streams, 0, "a set-aside log is not recovered");
    rt.block_on(wal.shutdown());
}

#[test]
fn an_idle_stream_holds_no_file_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let (wal, _) = open(dir.path(), small_options());
    let open_in_log = || {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.starts_with(dir.path()))
            .count()
    };
    for id in 0..50 {
        wal.create_stream(id, b"").unwrap();
        rt.block_on(wal.append(id, vec![record(id)], Encryption::None)).unwrap();
        let mut reader = wal.reader(id, 1).unwrap();
        assert_eq!(reader.read(10, 1 << 20).unwrap().len(), 1);
    }
    assert!(eventually(|| open_in_log() == 0), "{} descriptors still open into the log", open_in_log());
    rt.block_on(wal.shutdown());
}

#[test]
fn a_failed_write_fails_its_group_leaves_nothing_behind_and_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    // Writes 0 and 1 succeed, write 2 (the third append) hits ENOSPC.
    let (wal, _) = open(dir.path(), WalOptions { fail_write_number: Some(2), ..small_options() });
    wal.create_stream(STREAM, b"").unwrap();
    for i in 1..=2 {
        rt.block_on(wal.append(STREAM, vec![record(i)], Encryption::None)).unwrap();
    }
    let failed = rt.block_on(wal.append(STREAM, vec![record(3)], Encryption::None));
    assert!(matches!(failed, Err(crate::Error::NoSpace { .. })), "ENOSPC is told apart: {failed:?}");
    assert!(wal.fatal().borrow().is_none(), "a failed write is not fatal");
    let after = rt.block_on(wal.append(STREAM, vec![record(4)], Encryption::None)).unwrap();
    assert_eq!(after.first_seq, 3, "the failed append's sequence number is reused");
    let read: Vec<Vec<u8>> = read_all(&wal, STREAM, 1).into_iter().map(|r| r.data).collect();
    assert_eq!(read, vec![record(1), record(2), record(4)]);
    rt.block_on(wal.shutdown());
    drop(wal);
    let (wal, report) = open(dir.path(), small_options());
    assert!(report.quarantined.is_empty());
    let read: Vec<Vec<u8>> = read_all(&wal, STREAM, 1).into_iter().map(|r| r.data).collect();
    assert_eq!(read, vec![record(1), record(2), record(4)], "the refused record never reappears");
    rt.block_on(wal.shutdown());
}
