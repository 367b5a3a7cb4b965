//! The checkpoint file: how far delivery has durably acknowledged a stream, and the
//! consumer's *state* (an opaque blob: the delivery engine keeps there the batches it
//! is delivering, so that a retry after a crash rebuilds exactly the same batches,
//! and how far each of its destinations got). Both change in one atomic write. Read
//! at recovery; replaced atomically on every change.
//!
//! Version 2: `magic "SLUICECP" | version u32 = 2 | acked_seq u64 | state_len u32 |
//! state [u8; state_len] | crc u32` (CRC32C of everything before it). Version 1 had
//! no state (`magic | 1 | acked_seq | crc`) and is still read.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::segment::sync_dir;

const CHECKPOINT_MAGIC: &[u8; 8] = b"SLUICECP";
const CHECKPOINT_VERSION: u32 = 2;
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Largest state blob: batch descriptions, not data.
pub(crate) const STATE_BYTES_MAX: usize = 64 << 10;

/// A stream's durable delivery progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) acked: u64,
    pub(crate) state: Option<Vec<u8>>,
}

/// Reads the checkpoint; the default (nothing acknowledged) when there is none yet.
pub(crate) fn read(dir: &Path) -> Result<Checkpoint> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(e) => return Err(e).at(&path),
    };
    let corrupt = |reason: &str| Error::Corrupt { path: path.clone(), reason: reason.to_string() };
    if bytes.len() < 24 || &bytes[..8] != CHECKPOINT_MAGIC {
        return Err(corrupt("not a checkpoint file"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let acked = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    match version {
        1 if body.len() == 20 => Ok(Checkpoint { acked, state: None }),
        2 if body.len() >= 24 => {
            let state_len = u32::from_le_bytes(body[20..24].try_into().expect("4 bytes")) as usize;
            if body.len() != 24 + state_len {
                return Err(corrupt("state length does not match the file"));
            }
            let state = (state_len > 0).then(|| body[24..].to_vec());
            Ok(Checkpoint { acked, state })
        }
        1 | 2 => Err(corrupt("wrong length for its version")),
        version => Err(Error::UnsupportedVersion { path, version }),
    }
}

/// Durably replaces the checkpoint: temp file, fsync, rename, fsync the directory.
/// The directory sync is what makes the rename itself survive a power loss.
pub(crate) fn write(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let state = checkpoint.state.as_deref().unwrap_or(&[]);
    assert!(state.len() <= STATE_BYTES_MAX, "callers bound the state");
    let mut bytes = Vec::with_capacity(28 + state.len());
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&checkpoint.acked.to_le_bytes());
    bytes.extend_from_slice(&(state.len() as u32).to_le_bytes());
    bytes.extend_from_slice(state);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let mut file = fs::File::create(&tmp).at(&tmp)?;
    file.write_all(&bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    let path = dir.join(CHECKPOINT_FILE);
    fs::rename(&tmp, &path).at(&path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Checkpoint::default());
        let with_state = Checkpoint { acked: 77, state: Some(b"batch 78..90".to_vec()) };
        write(dir.path(), &with_state).unwrap();
        assert_eq!(read(dir.path()).unwrap(), with_state);
        write(dir.path(), &Checkpoint { acked: 90, state: None }).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Checkpoint { acked: 90, state: None });
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[13] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(read(dir.path()).is_err());
    }

    #[test]
    fn version_1_files_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"SLUICECP".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&42u64.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(CHECKPOINT_FILE), bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Checkpoint { acked: 42, state: None });
    }
}
