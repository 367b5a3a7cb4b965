//! The key registry: the key-encryption keys behind stream encryption at rest. The
//! log asks it to wrap each segment's data key; the API asks it whether a stream's
//! key is usable. `AWS_OWNED_CMK` maps to the server's master key; a
//! `CUSTOMER_MANAGED_CMK` ARN maps to a key configured in `[[encryption.keys]]`.
//!
//! The master key file is created only once recovery has shown that no record in
//! the log is encrypted under it ([`KeyRegistry::ensure_master`]): a new key over
//! existing encrypted data would make that data unreadable, so a missing file with
//! such data is a refusal to start, never a fresh key.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sluice_wal::{KeyError, KeyWrapper, DATA_KEY_BYTES};

use crate::config::RawKmsKey;

/// The key reference the log records for `AWS_OWNED_CMK` segments.
pub const AWS_OWNED_KEY_REF: &str = "aws-owned-cmk";

/// Marks the version of the master key file format.
const MASTER_KEY_HEADER: &str = "sluice-master-key v1";

struct Kek {
    cipher: LessSafeKey,
    enabled: bool,
    /// A digest that tells two keys apart without revealing either (cluster mode
    /// compares nodes' master keys with it).
    check: String,
}

fn key_check(raw: &[u8; 32]) -> String {
    let digest =
        ring::digest::digest(&ring::digest::SHA256, &[b"sluice master key check v1\0".as_slice(), raw].concat());
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl Kek {
    fn new(raw: &[u8; 32], enabled: bool) -> Kek {
        let cipher =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).expect("a 32-byte key is valid for AES-256-GCM"));
        Kek { cipher, enabled, check: key_check(raw) }
    }
}

/// All key-encryption keys.
pub struct KeyRegistry {
    master_key_file: PathBuf,
    /// The master key, once read or (after recovery) created.
    master: OnceLock<Kek>,
    /// Customer managed keys by ARN.
    keys: HashMap<String, Kek>,
}

/// A registry that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key is not 32 bytes of hex.
    #[error("key {0} is not 64 hex digits")]
    Malformed(String),
    /// The master key file may be read or written by other users.
    #[error("the master key file {path} is accessible to other users (mode {mode:o}); Sluice refuses to use it. Run `chmod 600 {path}` (and check who may have read it).")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

fn parse_hex_key(text: &str, name: &str) -> Result<[u8; 32], KeysError> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(KeysError::Malformed(name.into()));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| KeysError::Malformed(name.into()))?;
    }
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the master key; `None` when the file does not exist. A file others may
/// read or write is refused.
fn read_master(path: &Path) -> Result<Option<[u8; 32]>, KeysError> {
    let io = |source| KeysError::Io { path: path.display().to_string(), source };
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeysError::Exposed { path: path.display().to_string(), mode });
    }
    let key = text.lines().find(|l| !l.starts_with("sluice-master-key")).unwrap_or("");
    parse_hex_key(key, &path.display().to_string()).map(Some)
}

/// Creates a new master key file (owner-only, fsynced); fails if one exists.
fn create_master(path: &Path) -> Result<[u8; 32], KeysError> {
    let io = |source| KeysError::Io { path: path.display().to_string(), source };
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    // Written whole to a file of this process, then linked into place: several
    // processes starting on one key file (cluster nodes sharing a directory) agree
    // on whichever key was linked first, and none ever reads a half-written file.
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    writeln!(file, "{MASTER_KEY_HEADER}\n{}", hex(&key)).map_err(io)?;
    file.sync_all().map_err(io)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_master(path)?.ok_or_else(|| io(e));
        }
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(key)
}

impl KeyRegistry {
    /// Loads the master key, if its file exists, and the configured customer
    /// managed keys. Creates nothing (see [`KeyRegistry::ensure_master`]).
    pub fn load(master_key_file: &Path, kms_keys: &[RawKmsKey]) -> Result<KeyRegistry, KeysError> {
        let master = OnceLock::new();
        if let Some(raw) = read_master(master_key_file)? {
            let _ = master.set(Kek::new(&raw, true));
        }
        let mut keys = HashMap::new();
        for key in kms_keys {
            let text = match (&key.key_hex, &key.key_file) {
                (Some(hex), _) => hex.clone(),
                (None, Some(file)) => fs::read_to_string(file)
                    .map_err(|source| KeysError::Io { path: file.display().to_string(), source })?,
                (None, None) => return Err(KeysError::Malformed(key.arn.clone())),
            };
            let raw = parse_hex_key(&text, &key.arn)?;
            keys.insert(key.arn.clone(), Kek::new(&raw, key.enabled.unwrap_or(true)));
        }
        Ok(KeyRegistry { master_key_file: master_key_file.to_path_buf(), master, keys })
    }

    /// Creates the master key file if there is none. Call only after the log was
    /// recovered without needing it: then no record is encrypted under a master key
    /// this registry does not have.
    pub fn ensure_master(&self) -> Result<(), KeysError> {
        if self.master.get().is_some() {
            return Ok(());
        }
        let raw = create_master(&self.master_key_file)?;
        let _ = self.master.set(Kek::new(&raw, true));
        Ok(())
    }

    /// Whether the master key file existed (or was created).
    pub fn has_master(&self) -> bool {
        self.master.get().is_some()
    }

    /// Reads the master key file again if no master key is loaded: another process
    /// sharing the path (a cluster node on the same machine or a shared mount) may
    /// have created it since this registry was loaded.
    pub fn reload_master(&self) -> Result<(), KeysError> {
        if self.master.get().is_none() {
            if let Some(raw) = read_master(&self.master_key_file)? {
                let _ = self.master.set(Kek::new(&raw, true));
            }
        }
        Ok(())
    }

    /// The master key's check digest, if there is a master key.
    pub fn master_check(&self) -> Option<&str> {
        self.master.get().map(|k| k.check.as_str())
    }

    /// The master key file's path.
    pub fn master_key_file(&self) -> &Path {
        &self.master_key_file
    }

    fn kek(&self, key_ref: &str) -> Option<&Kek> {
        match key_ref {
            AWS_OWNED_KEY_REF => self.master.get(),
            arn => self.keys.get(arn),
        }
    }

    /// Whether `key_ref` may encrypt new records.
    pub fn check(&self, key_ref: &str) -> Result<(), KeyError> {
        match self.kek(key_ref) {
            None => Err(KeyError::NotFound),
            Some(kek) if !kek.enabled => Err(KeyError::Disabled),
            Some(_) => Ok(()),
        }
    }
}

impl KeyWrapper for KeyRegistry {
    fn wrap(&self, key_ref: &str, data_key: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
        self.check(key_ref)?;
        let kek = self.kek(key_ref).ok_or(KeyError::NotFound)?;
        // Data keys are wrapped with a random nonce stored in front of them: a key
        // encryption key wraps few keys, far below the random-nonce limit.
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut sealed = data_key.to_vec();
        kek.cipher
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
            .map_err(|_| KeyError::Unwrap)?;
        Ok([&nonce[..], &sealed].concat())
    }

    fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<[u8; DATA_KEY_BYTES], KeyError> {
        // Disabled keys still unwrap: records already accepted must stay deliverable.
        let kek = self.kek(key_ref).ok_or(KeyError::NotFound)?;
        if wrapped.len() < 12 {
            return Err(KeyError::Unwrap);
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[..12]).map_err(|_| KeyError::Unwrap)?;
        let mut buf = wrapped[12..].to_vec();
        let plain = kek.cipher.open_in_place(nonce, Aad::empty(), &mut buf).map_err(|_| KeyError::Unwrap)?;
        plain.try_into().map_err(|_| KeyError::Unwrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_creating_one_master_key_at_once_agree_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        // The first creator links its key into place; every later one finds the
        // file there and takes the key in it, as a process losing the race does.
        let keys: Vec<[u8; 32]> = (0..4).map(|_| create_master(&path).unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "every creator ends with the first key");
        assert_eq!(read_master(&path).unwrap(), Some(keys[0]));
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("master.key")], "no temporary file is left");
    }

    #[test]
    fn master_key_is_created_private_only_when_asked_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let a = KeyRegistry::load(&path, &[]).unwrap();
        assert!(!path.exists(), "loading never creates a key");
        assert!(matches!(a.wrap(AWS_OWNED_KEY_REF, &[9; 32]), Err(KeyError::NotFound)));
        a.ensure_master().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let wrapped = a.wrap(AWS_OWNED_KEY_REF, &[9; 32]).unwrap();
        let b = KeyRegistry::load(&path, &[]).unwrap();
        assert_eq!(b.unwrap(AWS_OWNED_KEY_REF, &wrapped).unwrap(), [9; 32]);
        b.ensure_master().unwrap();
        assert_eq!(b.unwrap(AWS_OWNED_KEY_REF, &wrapped).unwrap(), [9; 32], "an existing key is never replaced");
    }

    #[test]
    fn a_master_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        KeyRegistry::load(&path, &[]).unwrap().ensure_master().unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let refused = KeyRegistry::load(&path, &[]).err().expect("refused");
        assert!(matches!(refused, KeysError::Exposed { mode: 0o644, .. }), "{refused}");
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        KeyRegistry::load(&path, &[]).unwrap();
    }

    #[test]
    fn disabled_keys_unwrap_but_do_not_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let arn = "arn:aws:kms:us-east-1:000000000000:key/k".to_string();
        let enabled = RawKmsKey { arn: arn.clone(), key_hex: Some("ab".repeat(32)), key_file: None, enabled: None };
        let registry = KeyRegistry::load(&dir.path().join("m"), std::slice::from_ref(&enabled)).unwrap();
        let wrapped = registry.wrap(&arn, &[1; 32]).unwrap();
        let disabled = RawKmsKey { enabled: Some(false), ..enabled };
        let registry = KeyRegistry::load(&dir.path().join("m"), &[disabled]).unwrap();
        assert!(matches!(registry.check(&arn), Err(KeyError::Disabled)));
        assert!(registry.wrap(&arn, &[1; 32]).is_err());
        assert_eq!(registry.unwrap(&arn, &wrapped).unwrap(), [1; 32]);
        assert!(matches!(registry.check("arn:aws:kms:us-east-1:000000000000:key/none"), Err(KeyError::NotFound)));
    }
}
