//! Test suites of the whole log: a model-based property test and recovery tests.

mod model;
mod recovery;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::{KeyError, KeyWrapper, Wal, WalOptions, DATA_KEY_BYTES};

/// Key-encryption keys for tests: wraps by XOR with a per-name key. Not secure, and
/// it does not need to be: the tests check the log's own encryption of records.
pub(crate) struct TestKeys(pub(crate) HashMap<String, [u8; DATA_KEY_BYTES]>);

impl TestKeys {
    pub(crate) fn with(names: &[&str]) -> Arc<TestKeys> {
        Arc::new(TestKeys(
            names.iter().enumerate().map(|(i, n)| (n.to_string(), [i as u8 + 1; DATA_KEY_BYTES])).collect(),
        ))
    }
}

impl KeyWrapper for TestKeys {
    fn wrap(&self, key_ref: &str, data_key: &[u8; DATA_KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
        let kek = self.0.get(key_ref).ok_or(KeyError::NotFound)?;
        Ok(data_key.iter().zip(kek).map(|(a, b)| a ^ b).collect())
    }
    fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<[u8; DATA_KEY_BYTES], KeyError> {
        let kek = self.0.get(key_ref).ok_or(KeyError::NotFound)?;
        let raw: Vec<u8> = wrapped.iter().zip(kek).map(|(a, b)| a ^ b).collect();
        raw.try_into().map_err(|_| KeyError::Unwrap)
    }
}

pub(crate) fn small_options() -> WalOptions {
    WalOptions { segment_bytes_max: 2048, write_chunk_bytes: 1024, ..WalOptions::default() }
}

pub(crate) fn open(dir: &Path, options: WalOptions) -> (Wal, crate::RecoveryReport) {
    Wal::open(dir, options, TestKeys::with(&["k1", "k2"])).expect("open")
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Reads everything durable from `from` on.
pub(crate) fn read_all(wal: &Wal, id: u64, from: u64) -> Vec<crate::StoredRecord> {
    let mut reader = wal.reader(id, from).expect("reader");
    let mut out = Vec::new();
    loop {
        let batch = reader.read(7, 10_000).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}
