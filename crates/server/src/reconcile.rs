//! Start-up agreement between the catalog (`catalog.json`) and the logs, run once
//! after the log is recovered and before anything is served.
//!
//! Each log keeps a copy of its stream's definition and where the stream's life is
//! ([`Lifecycle`]: creating, active, deleting). With it an interrupted create or
//! delete is told apart from a catalog that was lost or restored from an older copy:
//!
//! * a log the catalog does not name is removed only when its definition says the
//!   stream was being created (and the log holds no records) or deleted; otherwise
//!   its stream is restored into the catalog from the definition;
//! * a definition newer than the catalog's entry (a higher revision) replaces it;
//! * a log with neither a catalog entry nor a readable definition (one written by an
//!   older version of Sluice) is removed only if it holds nothing undelivered, and
//!   otherwise set aside, never deleted;
//! * a stream the catalog names without a log gets an empty one.
//!
//! Every decision that is not routine is logged at WARN or ERROR with what to do.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_wal::Wal;

use crate::catalog::{Catalog, Lifecycle, StreamDefinition, StreamRecord};
use crate::ServerError;

/// What start-up changed to make the catalog and the logs agree.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Streams put back into the catalog from the definition beside their log.
    pub restored: Vec<String>,
    /// Streams whose catalog entry was older than the definition beside their log.
    pub updated: Vec<String>,
    /// Logs of creates interrupted before the catalog named the stream, removed.
    pub interrupted_creates: usize,
    /// Deletes interrupted after they began, finished.
    pub interrupted_deletes: usize,
    /// Logs without a stream that held nothing undelivered, removed.
    pub empty_orphans: usize,
    /// Logs nothing can be delivered from, moved aside, and where to.
    pub set_aside: Vec<PathBuf>,
    /// Streams the catalog named without a log, given an empty one.
    pub logs_created: Vec<String>,
}

/// Makes the catalog and the logs agree (see the module documentation). The
/// catalog is saved if it changed.
pub async fn reconcile(catalog: &Catalog, wal: &Wal, catalog_found: bool) -> Result<Reconciled, ServerError> {
    let mut done = Reconciled::default();
    let failed: BTreeSet<u64> = wal.failed_streams().into_iter().map(|f| f.stream).collect();
    let logs: BTreeSet<u64> = wal.streams().into_iter().chain(failed.iter().copied()).collect();
    let mut state = catalog.snapshot();
    let mut changed = false;
    let max_log_id = logs.iter().copied().max().unwrap_or(0);
    for &id in &logs {
        let definition = wal.definition(id).map(|blob| StreamDefinition::decode(&blob));
        let entry = state.streams.values().find(|s| s.id == id).cloned();
        // Whether the log may hold records not yet delivered (a log that failed
        // recovery cannot be asked, so it may).
        let holds_records = failed.contains(&id) || wal.undelivered_records(id).unwrap_or(1) > 0;
        match (entry, definition) {
            (Some(entry), Some(Ok(kept))) => {
                if kept.lifecycle == Lifecycle::Deleting {
                    tracing::info!(stream = %entry.name, "Finishing a delete that was interrupted.");
                    state.streams.remove(&(entry.region.clone(), entry.name.clone()));
                    changed = true;
                    wal.delete_stream(id)?;
                    done.interrupted_deletes += 1;
                } else if kept.stream.revision > entry.revision {
                    tracing::warn!(
                        stream = %entry.name,
                        catalog_revision = entry.revision,
                        log_revision = kept.stream.revision,
                        "The catalog holds an older definition of this stream than the copy beside its log (was catalog.json restored from a backup?); using the newer one."
                    );
                    done.updated.push(entry.name.clone());
                    let mut newer = kept.stream;
                    // Name and region key the catalog: keep the entry's.
                    newer.region = entry.region.clone();
                    newer.name = entry.name.clone();
                    state.streams.insert((entry.region.clone(), entry.name.clone()), Arc::new(newer));
                    changed = true;
                } else if kept.stream.revision < entry.revision || kept.lifecycle != Lifecycle::Active {
                    keep(wal, &entry)?;
                }
            }
            (Some(entry), unreadable) => {
                if let Some(Err(reason)) = unreadable {
                    tracing::warn!(stream = %entry.name, %reason, "The definition beside the stream's log is unreadable; rewriting it from the catalog.");
                }
                keep(wal, &entry)?;
            }
            (None, Some(Ok(kept))) => match kept.lifecycle {
                Lifecycle::Creating if !holds_records => {
                    tracing::info!(stream = %kept.stream.name, log_id = id, "Removing the empty log of a create that was interrupted.");
                    wal.delete_stream(id)?;
                    done.interrupted_creates += 1;
                }
                Lifecycle::Deleting => {
                    tracing::info!(stream = %kept.stream.name, log_id = id, "Finishing a delete that was interrupted.");
                    wal.delete_stream(id)?;
                    done.interrupted_deletes += 1;
                }
                _ => {
                    let key = (kept.stream.region.clone(), kept.stream.name.clone());
                    // The name may be the catalog's for a stream whose log is gone
                    // (deleted and created again after the catalog's copy was
                    // taken): this log is then the stream's, and wins.
                    let taken = state.streams.get(&key).filter(|other| logs.contains(&other.id));
                    if let Some(other) = taken {
                        let path = wal.set_aside(id)?;
                        tracing::error!(
                            stream = %kept.stream.name,
                            region = %kept.stream.region,
                            log_id = id,
                            catalog_log_id = other.id,
                            set_aside = %path.display(),
                            "A log holds records of a stream whose name the catalog gives to another stream; it was moved aside, not deleted. Read its records with `sluice dump --log {}`.",
                            path.display()
                        );
                        done.set_aside.push(path);
                    } else {
                        tracing::warn!(
                            stream = %kept.stream.name,
                            region = %kept.stream.region,
                            log_id = id,
                            undelivered_records = wal.undelivered_records(id).ok(),
                            "The catalog does not name this stream, but its log and the definition kept beside it exist; the stream was restored from that definition (was catalog.json deleted or restored from an older copy?)."
                        );
                        done.restored.push(kept.stream.name.clone());
                        let mut stream = kept.stream;
                        stream.id = id;
                        state.streams.insert(key, Arc::new(stream.clone()));
                        changed = true;
                        keep(wal, &stream)?;
                    }
                }
            },
            (None, definition) => {
                let why = match definition {
                    Some(Err(reason)) => format!("its definition is unreadable ({reason})"),
                    _ => {
                        "it has no definition (written by an older version of Sluice, or a create interrupted at once)"
                            .to_string()
                    }
                };
                if holds_records {
                    let path = wal.set_aside(id)?;
                    tracing::error!(
                        log_id = id,
                        set_aside = %path.display(),
                        "The catalog does not name the stream of a log holding undelivered records, and {why}; the log was moved aside, not deleted. Read its records with `sluice dump --log {}`, and put them to a stream again.",
                        path.display()
                    );
                    done.set_aside.push(path);
                } else {
                    tracing::info!(
                        log_id = id,
                        "Removing a log of no known stream that holds nothing undelivered; {why}."
                    );
                    wal.delete_stream(id)?;
                    done.empty_orphans += 1;
                }
            }
        }
    }
    for stream in state.streams.values() {
        if !logs.contains(&stream.id) {
            tracing::warn!(stream = %stream.name, log_id = stream.id, "The catalog names a stream without a log; it gets an empty one (any records it held are not on this disk).");
            wal.create_stream(stream.id, &StreamDefinition::encode(stream, Lifecycle::Active))?;
            done.logs_created.push(stream.name.clone());
        }
    }
    // Ids are never reused, also after the catalog was lost: the next one is above
    // every log that exists or was set aside.
    let next_stream_id = state.next_stream_id.max(max_log_id + 1);
    if next_stream_id != state.next_stream_id {
        state.next_stream_id = next_stream_id;
        changed = true;
    }
    if changed {
        catalog
            .update(|current| {
                *current = state.clone();
                Ok::<(), ServerError>(())
            })
            .await?;
    }
    summarise(&done, catalog_found);
    Ok(done)
}

/// Writes the catalog's entry beside the stream's log as its active definition.
fn keep(wal: &Wal, stream: &StreamRecord) -> Result<(), ServerError> {
    wal.define_stream(stream.id, &StreamDefinition::encode(stream, Lifecycle::Active)).map_err(ServerError::Wal)
}

fn summarise(done: &Reconciled, catalog_found: bool) {
    if !done.restored.is_empty() {
        let cause = if catalog_found { "was restored from an older copy" } else { "is missing" };
        tracing::warn!(
            n_streams = done.restored.len(),
            streams = ?done.restored,
            "catalog.json {cause}: {} stream(s) rebuilt from the definitions kept beside their logs, with every record they held. Check their settings with DescribeDeliveryStream.",
            done.restored.len()
        );
    }
    if !done.updated.is_empty() {
        tracing::warn!(streams = ?done.updated, "Newer definitions from beside the logs replaced older catalog entries.");
    }
    if !done.set_aside.is_empty() {
        tracing::error!(n_logs = done.set_aside.len(), paths = ?done.set_aside, "Logs were set aside; nothing in them is delivered until an operator acts (see above).");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_protocol::destination::{Destination, DestinationKind};
    use sluice_wal::{Encryption, NoKeys, Wal, WalOptions};

    use super::*;
    use crate::catalog::CatalogError;

    fn record(id: u64, name: &str, revision: u64) -> StreamRecord {
        let config = serde_json::json!({"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"});
        let destination =
            Destination { kind: DestinationKind::ExtendedS3, config: config.as_object().unwrap().clone() };
        StreamRecord { revision, ..StreamRecord::for_test(id, name, destination) }
    }

    struct Dir {
        dir: tempfile::TempDir,
        rt: tokio::runtime::Runtime,
    }

    impl Dir {
        fn new() -> Dir {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            Dir { dir: tempfile::tempdir().unwrap(), rt }
        }

        fn wal(&self) -> Wal {
            let _guard = self.rt.enter();
            Wal::open(&self.dir.path().join("wal"), WalOptions::default(), Arc::new(NoKeys)).unwrap().0
        }

        /// A log for `stream` with `n` undelivered records, its definition at `lifecycle`.
        fn log(&self, wal: &Wal, stream: &StreamRecord, lifecycle: Lifecycle, n: usize) {
            wal.create_stream(stream.id, &StreamDefinition::encode(stream, lifecycle)).unwrap();
            if n > 0 {
                let records = (0..n).map(|i| format!("r{i}").into_bytes()).collect();
                self.rt.block_on(wal.append(stream.id, records, Encryption::None)).unwrap();
            }
        }

        fn catalog(&self, streams: &[&StreamRecord], next_stream_id: u64) -> Catalog {
            let catalog = Catalog::open(self.dir.path()).unwrap();
            let update = catalog.update(|state| {
                state.next_stream_id = next_stream_id;
                for s in streams {
                    state.streams.insert((s.region.clone(), s.name.clone()), Arc::new((*s).clone()));
                }
                Ok::<_, CatalogError>(())
            });
            self.rt.block_on(update).unwrap();
            catalog
        }
    }

    fn names(catalog: &Catalog) -> Vec<String> {
        catalog.snapshot().streams.values().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn a_lost_catalog_is_rebuilt_from_the_logs_with_every_record() {
        let d = Dir::new();
        let wal = d.wal();
        let (a, b) = (record(1, "a", 1), record(2, "b", 3));
        d.log(&wal, &a, Lifecycle::Active, 5);
        d.log(&wal, &b, Lifecycle::Active, 0);
        let catalog = Catalog::open(d.dir.path()).unwrap();
        let done = d.rt.block_on(reconcile(&catalog, &wal, false)).unwrap();
        assert_eq!(done.restored.len(), 2);
        assert_eq!(names(&catalog), ["a", "b"]);
        assert_eq!(catalog.get("us-east-1", "b").unwrap().revision, 3);
        assert_eq!(wal.undelivered_records(1).unwrap(), 5, "nothing deleted");
        assert_eq!(catalog.snapshot().next_stream_id, 3, "ids are never reused");
        let reopened = Catalog::open(d.dir.path()).unwrap();
        assert_eq!(names(&reopened), ["a", "b"], "the rebuilt catalog was saved");
    }

    #[test]
    fn an_older_catalog_takes_the_newer_definitions_and_gets_the_streams_it_missed() {
        let d = Dir::new();
        let wal = d.wal();
        let (old_a, new_a, b) = (record(1, "a", 1), record(1, "a", 4), record(2, "b", 1));
        d.log(&wal, &new_a, Lifecycle::Active, 3);
        d.log(&wal, &b, Lifecycle::Active, 3);
        let catalog = d.catalog(&[&old_a], 2);
        let done = d.rt.block_on(reconcile(&catalog, &wal, true)).unwrap();
        assert_eq!((done.updated.len(), done.restored.len()), (1, 1));
        assert_eq!(catalog.get("us-east-1", "a").unwrap().revision, 4);
        assert!(catalog.get("us-east-1", "b").is_some());
        assert_eq!(catalog.snapshot().next_stream_id, 3);
    }

    #[test]
    fn interrupted_creates_and_deletes_are_finished() {
        let d = Dir::new();
        let wal = d.wal();
        let (creating, deleting, deleting_named) = (record(1, "c", 1), record(2, "d", 1), record(3, "e", 1));
        d.log(&wal, &creating, Lifecycle::Creating, 0);
        d.log(&wal, &deleting, Lifecycle::Deleting, 4);
        d.log(&wal, &deleting_named, Lifecycle::Deleting, 4);
        // The catalog still names "e": the delete began but the catalog was not saved.
        let catalog = d.catalog(&[&deleting_named], 4);
        let done = d.rt.block_on(reconcile(&catalog, &wal, true)).unwrap();
        assert_eq!((done.interrupted_creates, done.interrupted_deletes), (1, 2));
        assert!(names(&catalog).is_empty());
        assert!(wal.streams().is_empty());
        assert_eq!(catalog.snapshot().next_stream_id, 4);
    }

    #[test]
    fn a_creating_log_holding_records_is_restored_not_removed() {
        let d = Dir::new();
        let wal = d.wal();
        d.log(&wal, &record(1, "c", 1), Lifecycle::Creating, 2);
        let catalog = Catalog::open(d.dir.path()).unwrap();
        let done = d.rt.block_on(reconcile(&catalog, &wal, false)).unwrap();
        assert_eq!(done.restored, ["c"]);
        assert_eq!(wal.undelivered_records(1).unwrap(), 2);
    }

    #[test]
    fn logs_without_a_definition_are_removed_only_when_empty_and_otherwise_set_aside() {
        let d = Dir::new();
        let wal = d.wal();
        wal.create_stream(7, b"").unwrap();
        wal.create_stream(8, b"").unwrap();
        d.rt.block_on(wal.append(8, vec![b"held".to_vec()], Encryption::None)).unwrap();
        let catalog = Catalog::open(d.dir.path()).unwrap();
        let done = d.rt.block_on(reconcile(&catalog, &wal, false)).unwrap();
        assert_eq!(done.empty_orphans, 1);
        assert_eq!(done.set_aside.len(), 1);
        assert!(done.set_aside[0].join("00000000000000000001.seg").is_file(), "the records are kept");
        assert!(wal.streams().is_empty());
        assert_eq!(catalog.snapshot().next_stream_id, 9, "the set-aside log's id is not reused");
    }

    #[test]
    fn a_name_the_catalog_gives_to_another_live_stream_sets_the_log_aside() {
        let d = Dir::new();
        let wal = d.wal();
        let (current, stale) = (record(5, "x", 1), record(2, "x", 1));
        d.log(&wal, &current, Lifecycle::Active, 1);
        d.log(&wal, &stale, Lifecycle::Active, 1);
        let catalog = d.catalog(&[&current], 6);
        let done = d.rt.block_on(reconcile(&catalog, &wal, true)).unwrap();
        assert_eq!(done.set_aside.len(), 1);
        assert_eq!(catalog.get("us-east-1", "x").unwrap().id, 5);

        // But when the catalog's stream of that name has no log, the log is the stream's.
        let d = Dir::new();
        let wal = d.wal();
        let (lost, live) = (record(2, "x", 1), record(5, "x", 2));
        d.log(&wal, &live, Lifecycle::Active, 1);
        let catalog = d.catalog(&[&lost], 3);
        let done = d.rt.block_on(reconcile(&catalog, &wal, true)).unwrap();
        assert_eq!(done.restored, ["x"]);
        assert_eq!(catalog.get("us-east-1", "x").unwrap().id, 5);
        assert!(done.logs_created.is_empty());
        assert_eq!(catalog.snapshot().next_stream_id, 6);
    }

    #[test]
    fn a_catalog_stream_without_a_log_gets_one_and_logs_without_definitions_get_the_catalogs() {
        let d = Dir::new();
        let wal = d.wal();
        wal.create_stream(1, b"").unwrap();
        let (with_log, without) = (record(1, "a", 2), record(2, "b", 1));
        let catalog = d.catalog(&[&with_log, &without], 3);
        let done = d.rt.block_on(reconcile(&catalog, &wal, true)).unwrap();
        assert_eq!(done.logs_created, ["b"]);
        let kept = StreamDefinition::decode(&wal.definition(1).unwrap()).unwrap();
        assert_eq!((kept.lifecycle, kept.stream.revision), (Lifecycle::Active, 2));
        assert!(wal.definition(2).is_some());
    }
}
