//! Key-value buckets with compare-and-set: what the catalog, delivery progress and
//! leases are kept in. Every change is conditional (create: the key must not exist;
//! update and delete: the revision must be the one read), so two nodes racing on one
//! key produce exactly one winner, and the loser gets [`Error::Conflict`] and reads
//! again. Values are opaque bytes; the server decides what they mean.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::connect::Connection;
use crate::error::Error;
use crate::options::JetStreamOptions;

/// A value and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The revision the value was written at; what a conditional change must name.
    pub revision: u64,
}

/// A change seen by [`Bucket::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A value was written.
    Put(Versioned),
    /// A key was deleted (or expired, in a bucket with a maximum age).
    Deleted {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: u64,
    },
}

/// One key-value bucket.
#[derive(Clone)]
pub struct Bucket {
    store: kv::Store,
    name: String,
}

fn conflict_or(reason: String, what: &str) -> Error {
    // NATS answers a failed expectation with "wrong last sequence" (update, delete)
    // or "key exists" (create).
    if reason.contains("wrong last sequence") || reason.contains("key exists") || reason.contains("already exists") {
        Error::Conflict(format!("{what}: {reason}"))
    } else {
        Error::Request(format!("{what}: {reason}"))
    }
}

impl Bucket {
    /// Opens the bucket `<prefix>_<name>`, creating it (file storage, the
    /// configured replicas, one value per key) if it does not exist. With
    /// `max_age`, a key not written for that long expires (leases, heartbeats).
    pub async fn open(
        connection: &Connection,
        options: &JetStreamOptions,
        name: &str,
        max_age: Option<Duration>,
    ) -> Result<Bucket, Error> {
        let bucket = format!("{}_{name}", options.prefix);
        let config = kv::Config {
            bucket: bucket.clone(),
            description: format!("Sluice: {name}"),
            history: 1,
            num_replicas: options.replicas,
            storage: stream::StorageType::File,
            max_age: max_age.unwrap_or_default(),
            ..kv::Config::default()
        };
        let store = open_consistent(connection, config).await?;
        Ok(Bucket { store, name: bucket })
    }

    /// The bucket's full name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's current value, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, Error> {
        let entry = self.store.entry(key).await.map_err(|e| Error::Request(format!("{}.{key}: {e}", self.name)))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| Versioned {
            key: e.key,
            value: e.value,
            revision: e.revision,
        }))
    }

    /// Every current value.
    pub async fn load(&self) -> Result<Vec<Versioned>, Error> {
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| Error::Request(format!("listing {}: {e}", self.name)))?
            .filter_map(|key| async move { key.ok() })
            .collect()
            .await;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.get(&key).await? {
                values.push(value);
            }
        }
        Ok(values)
    }

    /// Writes `value` under a key that must not exist; its revision.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<u64, Error> {
        self.store.create(key, value).await.map_err(|e| conflict_or(e.to_string(), &format!("creating {key}")))
    }

    /// Replaces the value written at `revision`; the new revision.
    pub async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, Error> {
        self.store
            .update(key, value, revision)
            .await
            .map_err(|e| conflict_or(e.to_string(), &format!("updating {key}")))
    }

    /// Deletes the value written at `revision`.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<(), Error> {
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| conflict_or(e.to_string(), &format!("deleting {key}")))
    }

    /// The bucket's latest revision (of any key): a watcher that has seen it has
    /// seen every change made before this call.
    pub async fn last_revision(&self) -> Result<u64, Error> {
        let mut stream = self.store.stream.clone();
        let info = stream.info().await.map_err(|e| Error::Request(format!("{}: {e}", self.name)))?;
        Ok(info.state.last_sequence)
    }

    /// Every change after `revision` (0: from now on), as it happens.
    pub async fn watch(&self, revision: u64) -> Result<impl Stream<Item = Result<Change, Error>> + use<>, Error> {
        let watch = match revision {
            0 => self.store.watch_all().await,
            from => self.store.watch_all_from_revision(from + 1).await,
        }
        .map_err(|e| Error::Request(format!("watching {}: {e}", self.name)))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| Error::Request(e.to_string()))?;
            Ok(match entry.operation {
                kv::Operation::Put => {
                    Change::Put(Versioned { key: entry.key, value: entry.value, revision: entry.revision })
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    Change::Deleted { key: entry.key, revision: entry.revision }
                }
            })
        }))
    }
}

/// Opens (creating it if missing) a key-value bucket whose reads go to its
/// stream's leader. The client makes buckets with direct gets allowed, which any
/// replica answers, a lagging one too (a server catching up after its disk was
/// lost answered with a delivery position from before the last takeover, and a
/// batch was delivered again under another key before the stale revision made
/// its commit fail). Sluice's reads decide what to write next: they must see the
/// latest write.
pub(crate) async fn open_consistent(connection: &Connection, config: kv::Config) -> Result<kv::Store, Error> {
    let bucket = config.bucket.clone();
    let failed = |e: &dyn std::fmt::Display| Error::Request(format!("bucket {bucket}: {e}"));
    if let Err(created) = connection.jetstream.create_key_value(config).await {
        tracing::debug!(%bucket, error = %created, "Opening the existing bucket.");
    }
    let stream_name = format!("KV_{bucket}");
    let mut stream = connection.jetstream.get_stream(&stream_name).await.map_err(|e| failed(&e))?;
    let info = stream.info().await.map_err(|e| failed(&e))?;
    if info.config.allow_direct {
        let config = stream::Config { allow_direct: false, ..info.config.clone() };
        connection.jetstream.update_stream(config).await.map_err(|e| failed(&e))?;
    }
    let store = connection.jetstream.get_key_value(&bucket).await.map_err(|e| failed(&e))?;
    Ok(store)
}
