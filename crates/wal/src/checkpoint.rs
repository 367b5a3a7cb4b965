//! The checkpoint file: how far delivery has durably acknowledged a stream, and the
//! consumer's *state* (an opaque blob: the delivery engine keeps there the batches it
//! is delivering, so that a retry after a crash rebuilds exactly the same batches,
//! and how far each of its destinations got). Both change in one atomic write. Read
//! at recovery; rewritten on every commit.
//!
//! Version 3 (written since): two slots of `slot_bytes` each (a multiple of 4096;
//! the file is twice that). Each slot is
//! `magic "SLUICECP" | version u32 = 3 | slot_bytes u32 | generation u64 |
//! acked_seq u64 | state_len u32 | state [u8; state_len] | crc u32` (CRC32C of the
//! slot's bytes before it), then zeros. A commit overwrites, in place, the slot that
//! does *not* hold the newest generation, then `fdatasync`s. Nothing is created or
//! grown, so a commit needs no free space: on a full disk delivery can still record
//! its progress and free the segments it delivered (a checkpoint written through a
//! temporary file could not, and the log stayed full for good). A torn write damages
//! only the slot being written; the other still holds the previous checkpoint.
//! Reading takes the valid slot with the highest generation.
//!
//! The file is created, or replaced by one with larger slots when a state outgrows
//! its slot (rare: states are batch descriptions), through a temporary file: write,
//! fsync, rename, fsync the directory. Versions 1 (`magic | 1 | acked_seq | crc`)
//! and 2 (`magic | 2 | acked_seq | state_len | state | crc`), one record per file
//! replaced by rename, are still read; the first commit rewrites them as version 3.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::durable;
use crate::error::{Error, IoContext, Result};

const CHECKPOINT_MAGIC: &[u8; 8] = b"SLUICECP";
const CHECKPOINT_VERSION: u32 = 3;
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Largest state blob: batch descriptions, not data.
pub(crate) const STATE_BYTES_MAX: usize = 64 << 10;
/// Slots are whole pages, at least one.
const SLOT_ALIGN_BYTES: usize = 4096;
/// A slot's bytes besides the state: magic, version, slot size, generation,
/// acknowledged sequence, state length, CRC.
const SLOT_FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 4 + 4;

/// A stream's durable delivery progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) acked: u64,
    pub(crate) state: Option<Vec<u8>>,
}

/// Where the next checkpoint goes: the newest generation on disk and the slot size
/// of the file (0 when there is no version 3 file yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Slots {
    pub(crate) generation: u64,
    pub(crate) slot_bytes: usize,
}

/// Reads the checkpoint; the default (nothing acknowledged) when there is none yet.
pub(crate) fn read(dir: &Path) -> Result<(Checkpoint, Slots)> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).at(&path),
    };
    let version = (bytes.len() >= 12 && &bytes[..8] == CHECKPOINT_MAGIC)
        .then(|| u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")));
    if let Some(1 | 2) = version {
        if let Some(checkpoint) = read_single(&bytes) {
            return Ok((checkpoint, Slots::default()));
        }
    }
    let len = bytes.len();
    if len >= 2 * SLOT_ALIGN_BYTES && len.is_multiple_of(2 * SLOT_ALIGN_BYTES) {
        let slot_bytes = len / 2;
        let newest =
            (0..2).filter_map(|i| decode_slot(&bytes[i * slot_bytes..(i + 1) * slot_bytes])).max_by_key(|s| s.0);
        if let Some((generation, checkpoint)) = newest {
            return Ok((checkpoint, Slots { generation, slot_bytes }));
        }
    }
    match version {
        Some(version) if version > CHECKPOINT_VERSION => Err(Error::UnsupportedVersion { path, version }),
        _ => Err(Error::Corrupt { path, reason: "no valid checkpoint in the file".into() }),
    }
}

/// Version 1 or 2: the whole file is one checkpoint.
fn read_single(bytes: &[u8]) -> Option<Checkpoint> {
    if bytes.len() < 24 {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return None;
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let acked = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    match version {
        1 if body.len() == 20 => Some(Checkpoint { acked, state: None }),
        2 if body.len() >= 24 => {
            let state_len = u32::from_le_bytes(body[20..24].try_into().expect("4 bytes")) as usize;
            (body.len() == 24 + state_len)
                .then(|| Checkpoint { acked, state: (state_len > 0).then(|| body[24..].to_vec()) })
        }
        _ => None,
    }
}

/// A slot's generation and checkpoint, if it is whole.
fn decode_slot(slot: &[u8]) -> Option<(u64, Checkpoint)> {
    let u32_at = |i: usize| u32::from_le_bytes(slot[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(slot[i..i + 8].try_into().expect("8 bytes"));
    if slot.len() < SLOT_FIXED_BYTES || &slot[..8] != CHECKPOINT_MAGIC || u32_at(8) != CHECKPOINT_VERSION {
        return None;
    }
    if u32_at(12) as usize != slot.len() {
        return None;
    }
    let state_len = u32_at(32) as usize;
    let crc_at = 36 + state_len;
    if state_len > STATE_BYTES_MAX || crc_at + 4 > slot.len() || crc32c::crc32c(&slot[..crc_at]) != u32_at(crc_at) {
        return None;
    }
    let state = (state_len > 0).then(|| slot[36..crc_at].to_vec());
    Some((u64_at(16), Checkpoint { acked: u64_at(24), state }))
}

fn encode_slot(generation: u64, slot_bytes: usize, checkpoint: &Checkpoint) -> Vec<u8> {
    let state = checkpoint.state.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(SLOT_FIXED_BYTES + state.len());
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&(slot_bytes as u32).to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&checkpoint.acked.to_le_bytes());
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(state);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Durably writes a checkpoint as the next generation. In place when the file has
/// room for it (no allocation, so it works on a full disk); otherwise a new file
/// with slots large enough is put in place by rename.
pub(crate) fn write(dir: &Path, slots: &mut Slots, checkpoint: &Checkpoint) -> Result<()> {
    let state_len = checkpoint.state.as_ref().map_or(0, Vec::len);
    assert!(state_len <= STATE_BYTES_MAX, "callers bound the state");
    let generation = slots.generation + 1;
    let needed = SLOT_FIXED_BYTES + state_len;
    let path = dir.join(CHECKPOINT_FILE);
    if slots.slot_bytes >= needed {
        let slot = encode_slot(generation, slots.slot_bytes, checkpoint);
        let offset = (generation % 2) * slots.slot_bytes as u64;
        let file = fs::OpenOptions::new().write(true).open(&path).at(&path)?;
        file.write_all_at(&slot, offset).at(&path)?;
        file.sync_data().at(&path)?;
    } else {
        let slot_bytes = needed.next_power_of_two().max(SLOT_ALIGN_BYTES);
        let mut bytes = vec![0u8; 2 * slot_bytes];
        let slot = encode_slot(generation, slot_bytes, checkpoint);
        let at = (generation % 2) as usize * slot_bytes;
        bytes[at..at + slot.len()].copy_from_slice(&slot);
        durable::replace(dir, CHECKPOINT_FILE, &bytes)?;
        slots.slot_bytes = slot_bytes;
    }
    slots.generation = generation;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (read0, mut slots) = read(dir.path()).unwrap();
        assert_eq!(read0, Checkpoint::default());
        let with_state = Checkpoint { acked: 77, state: Some(b"batch 78..90".to_vec()) };
        write(dir.path(), &mut slots, &with_state).unwrap();
        assert_eq!(read(dir.path()).unwrap(), (with_state.clone(), slots));
        let later = Checkpoint { acked: 90, state: None };
        write(dir.path(), &mut slots, &later).unwrap();
        assert_eq!(read(dir.path()).unwrap().0, later);
        // Damage to the newest slot: the previous checkpoint is read instead.
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let newest = (slots.generation % 2) as usize * slots.slot_bytes;
        bytes[newest + 25] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let (fallback, fallback_slots) = read(dir.path()).unwrap();
        assert_eq!(fallback, with_state);
        assert_eq!(fallback_slots.generation, slots.generation - 1);
        // Both damaged: refused, never read as "nothing acknowledged".
        let other = slots.slot_bytes - newest;
        bytes[other + 25] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn commits_overwrite_in_place_and_a_large_state_grows_the_slots() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::default();
        write(dir.path(), &mut slots, &Checkpoint { acked: 1, state: None }).unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        for acked in 2..10 {
            write(dir.path(), &mut slots, &Checkpoint { acked, state: Some(vec![7; 100]) }).unwrap();
        }
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&metadata), inode, "no new file was made");
        assert_eq!(metadata.len(), 2 * SLOT_ALIGN_BYTES as u64);
        let big = Checkpoint { acked: 10, state: Some(vec![9; 10_000]) };
        write(dir.path(), &mut slots, &big).unwrap();
        assert_eq!(slots.slot_bytes, 16384);
        assert_eq!(read(dir.path()).unwrap(), (big, slots));
        let small = Checkpoint { acked: 11, state: None };
        write(dir.path(), &mut slots, &small).unwrap();
        assert_eq!(read(dir.path()).unwrap().0, small);
    }

    #[test]
    fn versions_1_and_2_are_still_read_and_rewritten_as_3() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"SLUICECP".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&42u64.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(CHECKPOINT_FILE), bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().0, Checkpoint { acked: 42, state: None });

        let mut bytes = b"SLUICECP".to_vec();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&43u64.to_le_bytes());
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(b"state");
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(CHECKPOINT_FILE), bytes).unwrap();
        let (checkpoint, mut slots) = read(dir.path()).unwrap();
        assert_eq!(checkpoint, Checkpoint { acked: 43, state: Some(b"state".to_vec()) });
        write(dir.path(), &mut slots, &Checkpoint { acked: 44, state: None }).unwrap();
        assert_eq!(read(dir.path()).unwrap().0, Checkpoint { acked: 44, state: None });
        assert_eq!(fs::metadata(dir.path().join(CHECKPOINT_FILE)).unwrap().len(), 2 * SLOT_ALIGN_BYTES as u64);
    }

    #[test]
    fn a_newer_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"SLUICECP".to_vec();
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.resize(64, 0);
        fs::write(dir.path().join(CHECKPOINT_FILE), bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(Error::UnsupportedVersion { version: 9, .. })));
    }
}
