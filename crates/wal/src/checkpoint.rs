//! The checkpoint file: how far delivery has durably acknowledged a stream. Read at
//! recovery to know where readers resume and which segments are garbage; replaced
//! atomically on every acknowledgement.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::segment::sync_dir;

const CHECKPOINT_MAGIC: &[u8; 8] = b"SLUICECP";
const CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_BYTES: usize = 8 + 4 + 8 + 4;
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";

/// Reads the acknowledged sequence number; 0 when there is no checkpoint yet.
pub(crate) fn read(dir: &Path) -> Result<u64> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).at(&path),
    };
    let corrupt = |reason: &str| Error::Corrupt { path: path.clone(), reason: reason.to_string() };
    if bytes.len() != CHECKPOINT_BYTES || &bytes[..8] != CHECKPOINT_MAGIC {
        return Err(corrupt("not a checkpoint file"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != CHECKPOINT_VERSION {
        return Err(Error::UnsupportedVersion { path, version });
    }
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..20]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")))
}

/// Durably replaces the checkpoint: temp file, fsync, rename, fsync the directory.
/// The directory sync is what makes the rename itself survive a power loss.
pub(crate) fn write(dir: &Path, acked_seq: u64) -> Result<()> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_BYTES);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&acked_seq.to_le_bytes());
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
    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::read(dir.path()).unwrap(), 0);
        super::write(dir.path(), 77).unwrap();
        assert_eq!(super::read(dir.path()).unwrap(), 77);
        super::write(dir.path(), 78).unwrap();
        assert_eq!(super::read(dir.path()).unwrap(), 78);
        let path = dir.path().join(super::CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[13] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(super::read(dir.path()).is_err());
    }
}
