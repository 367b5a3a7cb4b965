//! Which node delivers which stream, in cluster mode: each stream's delivery runs on
//! exactly one node at a time, the holder of its lease.
//!
//! * Every node writes a heartbeat into the `NODES` bucket, whose entries expire
//!   after a lease: the live nodes are its keys.
//! * A stream's lease is an entry `l.<id>` in the `LEASES` bucket (entries expire
//!   after a lease), acquired with create and renewed with compare-and-set every
//!   quarter lease: never a plain put, so a node can only keep what it holds. A
//!   renewal that fails means the lease is lost: the stream's worker is stopped at
//!   once (the supervisor aborts it).
//! * Streams spread by rendezvous hashing: a stream's preferred node is the live node
//!   with the highest hash of (stream, node). The preferred node takes a free lease at
//!   once; any other after the lease has been free for a grace period (a dead
//!   preferred node's streams are taken over). A node holding more than its fair
//!   share gives back, one per round, a stream whose preferred node is another live
//!   node.
//! * The node's delivery worker for a stream it took begins by rewriting the
//!   stream's progress entry in the log ([`crate::log::RecordLog::take_over`]): its
//!   revision moves, so a former owner that has not yet noticed it lost the lease
//!   (or an earlier worker of this node, if the stream went away and came back)
//!   cannot commit anything more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_jetstream::{Bucket, Error as JsError};
use tokio::sync::watch;

use crate::api::AppState;

/// One node's view of stream ownership.
pub struct Ownership {
    node_id: String,
    nodes: Bucket,
    leases: Bucket,
    lease: Duration,
    /// Streams this node holds the lease of, with the lease entry's revision.
    held: RwLock<HashMap<u64, u64>>,
}

fn lease_key(id: u64) -> String {
    format!("l.{id:016x}")
}

fn node_key(node_id: &str) -> String {
    format!("n.{node_id}")
}

/// Says in `/metrics` whether this node delivers `stream` (for operators, and the
/// fault tests that pause the delivering node); set where the lease changes hands.
fn mark(state: &AppState, stream: u64, here: bool) {
    if let Some(record) = state.catalog.get_by_id(stream) {
        let labels = [("DeliveryStreamName", record.name.clone())];
        ::metrics::gauge!("sluice_cluster_delivering", &labels).set(if here { 1.0 } else { 0.0 });
    }
}

/// Rendezvous hash of a stream and a node: FNV-1a, fixed by its definition, so
/// nodes built by different compilers still agree.
fn weight(stream: u64, node: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    stream.to_le_bytes().iter().chain(node.as_bytes()).fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// The preferred node of `stream` among `live` (sorted, so every node agrees).
pub fn preferred(stream: u64, live: &[String]) -> Option<&str> {
    live.iter().max_by_key(|node| (weight(stream, node), node.as_str())).map(String::as_str)
}

impl Ownership {
    /// Ownership for `node_id` with leases of `lease`, in the buckets `NODES` and
    /// `LEASES` (whose entries expire after a lease).
    pub fn new(node_id: String, nodes: Bucket, leases: Bucket, lease: Duration) -> Ownership {
        Ownership { node_id, nodes, leases, lease, held: RwLock::new(HashMap::new()) }
    }

    /// Whether this node holds the stream's lease.
    pub fn owns(&self, stream: u64) -> bool {
        self.held.read().expect("lock").contains_key(&stream)
    }

    /// The streams this node holds.
    pub fn held(&self) -> Vec<u64> {
        self.held.read().expect("lock").keys().copied().collect()
    }

    /// Keeps heartbeats and leases up to date until `shutdown`, then gives the held
    /// leases back so that other nodes take the streams over at once.
    pub async fn run(self: Arc<Self>, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
        let tick = self.lease / 4;
        let started = Instant::now();
        let mut heartbeat: Option<u64> = None;
        let mut free_since: HashMap<u64, Instant> = HashMap::new();
        loop {
            heartbeat = self.beat(heartbeat).await;
            // Let nodes started together see each other before taking anything.
            if started.elapsed() >= tick {
                if let Err(error) = self.round(&state, &mut free_since).await {
                    tracing::warn!(%error, "Could not update stream leases this round.");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => break,
            }
        }
        let held = std::mem::take(&mut *self.held.write().expect("lock"));
        for (stream, revision) in held {
            let _ = self.leases.delete(&lease_key(stream), revision).await;
        }
        if let Some(revision) = heartbeat {
            let _ = self.nodes.delete(&node_key(&self.node_id), revision).await;
        }
    }

    async fn beat(&self, revision: Option<u64>) -> Option<u64> {
        let key = node_key(&self.node_id);
        let value = Bytes::from(self.node_id.clone());
        let written = match revision {
            Some(revision) => self.nodes.update(&key, value.clone(), revision).await,
            None => self.nodes.create(&key, value.clone()).await,
        };
        match written {
            Ok(revision) => Some(revision),
            // Expired (a long pause) or never written: start again.
            Err(_) => self.nodes.create(&key, value).await.ok(),
        }
    }

    /// One round: renew what is held, take what this node should have, give back
    /// what it holds beyond its share.
    async fn round(&self, state: &AppState, free_since: &mut HashMap<u64, Instant>) -> Result<(), JsError> {
        let mut live: Vec<String> =
            self.nodes.load().await?.into_iter().filter_map(|v| v.key.strip_prefix("n.").map(str::to_string)).collect();
        if !live.contains(&self.node_id) {
            live.push(self.node_id.clone());
        }
        live.sort();
        // Firehose's limits are per stream across the cluster: each node admits its share.
        state.throttle.set_nodes(live.len());
        let streams: HashSet<u64> = state.catalog.ids();
        // Renew: a failure means the lease is gone (expired or taken).
        let held = self.held.read().expect("lock").clone();
        for (stream, revision) in held {
            let renewed = match streams.contains(&stream) {
                true => self.leases.update(&lease_key(stream), Bytes::from(self.node_id.clone()), revision).await,
                false => self.leases.delete(&lease_key(stream), revision).await.map(|()| 0),
            };
            let mut held = self.held.write().expect("lock");
            match renewed {
                Ok(0) | Err(_) => {
                    held.remove(&stream);
                    if streams.contains(&stream) {
                        tracing::warn!(stream, "Lost the lease of a stream: its delivery stops on this node.");
                        mark(state, stream, false);
                    }
                }
                Ok(revision) => {
                    held.insert(stream, revision);
                }
            }
        }
        let holders: HashMap<u64, String> = self
            .leases
            .load()
            .await?
            .into_iter()
            .filter_map(|v| {
                let id = u64::from_str_radix(v.key.strip_prefix("l.")?, 16).ok()?;
                Some((id, String::from_utf8_lossy(&v.value).into_owned()))
            })
            .collect();
        let grace = self.lease * 2;
        for &stream in &streams {
            if self.owns(stream) {
                continue;
            }
            if holders.contains_key(&stream) {
                free_since.remove(&stream);
                continue;
            }
            let free_for = free_since.entry(stream).or_insert_with(Instant::now).elapsed();
            let mine = preferred(stream, &live) == Some(self.node_id.as_str());
            if !(mine || free_for >= grace) {
                continue;
            }
            match self.leases.create(&lease_key(stream), Bytes::from(self.node_id.clone())).await {
                Ok(revision) => {
                    // The worker the engine starts now fences the former owner
                    // before it delivers anything.
                    tracing::info!(stream, node = %self.node_id, "Took over a stream's delivery.");
                    free_since.remove(&stream);
                    self.held.write().expect("lock").insert(stream, revision);
                    mark(state, stream, true);
                }
                Err(JsError::Conflict(_)) => {}
                Err(other) => return Err(other),
            }
        }
        // Give back one stream beyond this node's fair share, to its preferred node.
        let share = streams.len().div_ceil(live.len().max(1));
        let held = self.held();
        if held.len() > share + 1 {
            let surplus = held.into_iter().find(|s| preferred(*s, &live).is_some_and(|p| p != self.node_id));
            if let Some(stream) = surplus {
                let revision = self.held.write().expect("lock").remove(&stream);
                if let Some(revision) = revision {
                    tracing::info!(stream, "Handing a stream's delivery to its preferred node.");
                    mark(state, stream, false);
                    let _ = self.leases.delete(&lease_key(stream), revision).await;
                }
            }
        }
        free_since.retain(|stream, _| streams.contains(stream));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_agrees_on_a_spread_of_preferred_nodes() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for stream in 1..=300 {
            *counts.entry(preferred(stream, &live).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|n| *n > 60), "spread: {counts:?}");
        // A node leaving moves only its own streams.
        let two: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        for stream in 1..=300 {
            let before = preferred(stream, &live).unwrap();
            if before != "b" {
                assert_eq!(preferred(stream, &two).unwrap(), before);
            }
        }
    }
}
