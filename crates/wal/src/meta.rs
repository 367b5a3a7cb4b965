//! The stream's definition, kept beside its log: an opaque blob the application
//! writes when it creates the stream and whenever the definition changes (the
//! server keeps the stream's catalog entry there). It lets the application tell
//! which stream a log belongs to without its catalog, so a lost or restored-from-
//! backup catalog never turns logs holding acknowledged records into "orphans".
//!
//! Format (version 1): `magic "SLUICEMD" | version u32 = 1 | len u32 |
//! blob [u8; len] | crc u32` (CRC32C of everything before it), replaced atomically.

use std::fs;
use std::path::Path;

use crate::durable;
use crate::error::{Error, IoContext, Result};

const META_MAGIC: &[u8; 8] = b"SLUICEMD";
const META_VERSION: u32 = 1;
pub(crate) const META_FILE: &str = "meta";
/// Largest definition: stream definitions are kilobytes.
pub(crate) const META_BYTES_MAX: usize = 4 << 20;

/// The stream's definition, or `None` when the log has none (written by a version
/// of Sluice before definitions were kept, or an interrupted creation).
pub(crate) fn read(dir: &Path) -> Result<Option<Vec<u8>>> {
    let path = dir.join(META_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(&path),
    };
    let corrupt = |reason: &str| Error::Corrupt { path: path.clone(), reason: reason.to_string() };
    if bytes.len() < 20 || &bytes[..8] != META_MAGIC {
        return Err(corrupt("not a stream definition file"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != META_VERSION {
        return Err(Error::UnsupportedVersion { path, version });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let len = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
    if body.len() != 16 + len {
        return Err(corrupt("length does not match the file"));
    }
    Ok(Some(body[16..].to_vec()))
}

/// Durably replaces the definition.
pub(crate) fn write(dir: &Path, blob: &[u8]) -> Result<()> {
    let mut bytes = Vec::with_capacity(20 + blob.len());
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&META_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    bytes.extend_from_slice(blob);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    durable::replace(dir, META_FILE, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_absence_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), b"{\"name\":\"orders\"}").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"{\"name\":\"orders\"}"[..]));
        write(dir.path(), b"").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b""[..]));
        let path = dir.path().join(META_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[13] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(read(dir.path()).is_err());
    }
}
