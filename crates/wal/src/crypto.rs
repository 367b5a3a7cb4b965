//! Encryption at rest for segments: a random data key per encrypted segment, wrapped
//! by a key-encryption key the application supplies, and AES-256-GCM per record.
//! The WAL never sees a key-encryption key, only the [`KeyWrapper`] that holds them.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

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

/// One segment's data key, ready to seal and open payloads. AES-256-GCM through
/// `ring`, whose assembly kernels are several times faster than a portable
/// implementation; sealing sits on the ingest path of encrypted streams.
#[derive(Clone)]
pub(crate) struct DataKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl DataKey {
    pub(crate) fn generate() -> ([u8; DATA_KEY_BYTES], DataKey) {
        let mut raw = [0u8; DATA_KEY_BYTES];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut raw[..]);
        (raw, DataKey::from_raw(&raw))
    }

    pub(crate) fn from_raw(raw: &[u8; DATA_KEY_BYTES]) -> DataKey {
        let key = UnboundKey::new(&AES_256_GCM, raw).expect("a 32-byte key is valid for AES-256-GCM");
        DataKey { key: std::sync::Arc::new(LessSafeKey::new(key)) }
    }

    /// The nonce is the record's sequence number, which is unique under one data key
    /// because each segment has its own key and segments are never appended to after
    /// a restart.
    fn nonce(seq: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&seq.to_le_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `plaintext` into a new buffer (ciphertext, then tag).
    #[cfg(test)]
    pub(crate) fn seal(&self, seq: u64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(seq, aad, plaintext, &mut out);
        out
    }

    /// Appends the sealed form of `plaintext` (ciphertext, then tag) to `out`.
    pub(crate) fn seal_into(&self, seq: u64, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(Self::nonce(seq), Aad::from(aad), &mut out[start..])
            .expect("AES-GCM sealing cannot fail for in-memory buffers below 64 GiB");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens a sealed payload; `None` if it fails authentication.
    pub(crate) fn open(&self, seq: u64, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let plain_len = self.key.open_in_place(Self::nonce(seq), Aad::from(aad), &mut buf).ok()?.len();
        buf.truncate(plain_len);
        Some(buf)
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
