//! The key registry: the key-encryption keys behind stream encryption at rest. The
//! log asks it to wrap each segment's data key; the API asks it whether a stream's
//! key is usable. `AWS_OWNED_CMK` maps to the server's master key; a
//! `CUSTOMER_MANAGED_CMK` ARN maps to a key configured in `[[encryption.keys]]`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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
}

fn kek(raw: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).expect("a 32-byte key is valid for AES-256-GCM"))
}

/// All key-encryption keys.
pub struct KeyRegistry {
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

/// Reads the master key, creating it (owner-only, fsynced) on first start.
fn load_or_create_master(path: &Path) -> Result<[u8; 32], KeysError> {
    let io = |source| KeysError::Io { path: path.display().to_string(), source };
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = text.lines().find(|l| !l.starts_with("sluice-master-key")).unwrap_or("");
            parse_hex_key(key, &path.display().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
            writeln!(file, "{MASTER_KEY_HEADER}\n{}", hex(&key)).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

impl KeyRegistry {
    /// Loads the master key and the configured customer managed keys.
    pub fn load(master_key_file: &Path, kms_keys: &[RawKmsKey]) -> Result<KeyRegistry, KeysError> {
        let mut keys = HashMap::new();
        let master = load_or_create_master(master_key_file)?;
        keys.insert(AWS_OWNED_KEY_REF.to_string(), Kek { cipher: kek(&master), enabled: true });
        for key in kms_keys {
            let text = match (&key.key_hex, &key.key_file) {
                (Some(hex), _) => hex.clone(),
                (None, Some(file)) => fs::read_to_string(file)
                    .map_err(|source| KeysError::Io { path: file.display().to_string(), source })?,
                (None, None) => return Err(KeysError::Malformed(key.arn.clone())),
            };
            let raw = parse_hex_key(&text, &key.arn)?;
            keys.insert(key.arn.clone(), Kek { cipher: kek(&raw), enabled: key.enabled.unwrap_or(true) });
        }
        Ok(KeyRegistry { keys })
    }

    /// Whether `key_ref` may encrypt new records.
    pub fn check(&self, key_ref: &str) -> Result<(), KeyError> {
        match self.keys.get(key_ref) {
            None => Err(KeyError::NotFound),
            Some(kek) if !kek.enabled => Err(KeyError::Disabled),
            Some(_) => Ok(()),
        }
    }
}

impl KeyWrapper for KeyRegistry {
    fn wrap(&self, key_ref: &str, data_key: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
        self.check(key_ref)?;
        let kek = &self.keys[key_ref];
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
        let kek = self.keys.get(key_ref).ok_or(KeyError::NotFound)?;
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn master_key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let a = KeyRegistry::load(&path, &[]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let wrapped = a.wrap(AWS_OWNED_KEY_REF, &[9; 32]).unwrap();
        let b = KeyRegistry::load(&path, &[]).unwrap();
        assert_eq!(b.unwrap(AWS_OWNED_KEY_REF, &wrapped).unwrap(), [9; 32]);
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
