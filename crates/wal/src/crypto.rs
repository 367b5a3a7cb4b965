//! Encryption at rest for segments: a random data key per encrypted segment, wrapped
//! by a key-encryption key the application supplies, and AES-256-GCM per record.
//! The WAL never sees a key-encryption key, only the [`KeyWrapper`] that holds them.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

/// Length of a data key.
pub const DATA_KEY_BYTES: usize = 32;

/// Bytes AES-GCM adds to every sealed payload.
pub(crate) const TAG_BYTES: usize = 16;

/// Why a key-encryption key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key with this reference exists.
    #[error("key not found")]
    NotFound,
    /// The key exists but may not be used to wrap new data keys.
    #[error("key is disabled")]
    Disabled,
    /// A wrapped key failed to unwrap (wrong key or damaged bytes).
    #[error("wrapped data key failed authentication")]
    Unwrap,
}

/// Holds the key-encryption keys. `key_ref` is an opaque name chosen by the
/// application (Sluice uses the stream's KMS key ARN, or a name for its own key).
pub trait KeyWrapper: Send + Sync + 'static {
    /// Wraps a fresh data key. Fails for unknown or disabled keys.
    fn wrap(&self, key_ref: &str, data_key: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError>;
    /// Unwraps a data key written earlier. Must keep working for disabled keys, so
    /// records already accepted stay readable.
    fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<[u8; DATA_KEY_BYTES], KeyError>;
}

/// A [`KeyWrapper`] with no keys, for logs that never encrypt.
pub struct NoKeys;

impl KeyWrapper for NoKeys {
    fn wrap(&self, _: &str, _: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::NotFound)
    }
    fn unwrap(&self, _: &str, _: &[u8]) -> Result<[u8; DATA_KEY_BYTES], KeyError> {
        Err(KeyError::NotFound)
    }
}

/// One segment's data key, ready to seal and open payloads.
#[derive(Clone)]
pub(crate) struct DataKey {
    cipher: Aes256Gcm,
}

impl DataKey {
    pub(crate) fn generate() -> ([u8; DATA_KEY_BYTES], DataKey) {
        let mut raw = [0u8; DATA_KEY_BYTES];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut raw[..]);
        (raw, DataKey::from_raw(&raw))
    }

    pub(crate) fn from_raw(raw: &[u8; DATA_KEY_BYTES]) -> DataKey {
        DataKey { cipher: Aes256Gcm::new(raw.into()) }
    }

    fn nonce(seq: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&seq.to_le_bytes());
        nonce
    }

    /// Seals `plaintext`; the nonce is the record's sequence number, which is unique
    /// under one data key because each segment has its own key and segments are
    /// never appended to after a restart.
    pub(crate) fn seal(&self, seq: u64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = Self::nonce(seq);
        self.cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encryption cannot fail for in-memory buffers below 64 GiB")
    }

    pub(crate) fn open(&self, seq: u64, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce = Self::nonce(seq);
        self.cipher.decrypt(Nonce::from_slice(&nonce), Payload { msg: sealed, aad }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let (_, key) = DataKey::generate();
        let sealed = key.seal(5, b"aad", b"secret record");
        assert_eq!(sealed.len(), 13 + TAG_BYTES);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(key.open(5, b"aad", &sealed).as_deref(), Some(&b"secret record"[..]));
        assert_eq!(key.open(6, b"aad", &sealed), None, "wrong nonce must fail");
        assert_eq!(key.open(5, b"aae", &sealed), None, "wrong aad must fail");
        let (_, other) = DataKey::generate();
        assert_eq!(other.open(5, b"aad", &sealed), None, "wrong key must fail");
    }
}
