//! Per-stream throughput limits, as Firehose enforces them: token buckets for
//! requests, records and bytes per second, shared by PutRecord and PutRecordBatch,
//! each holding at most one second of its rate. A PutRecord that does not fit is
//! refused whole; a PutRecordBatch keeps the records that fit, in order, and the rest
//! are answered individually as throttled. Checked before anything is appended.
//!
//! The buckets are a few lines of arithmetic rather than a rate-limiting crate:
//! batches must be admitted in part, which all-or-nothing limiters do not offer.
//!
//! In cluster mode the limits are per stream across the cluster, as in Firehose:
//! each node admits its share, the limit divided by the live nodes (never less than
//! one request, one record and one largest record per second, so that any valid
//! put can pass). Exact when the load balancer spreads a stream's puts evenly; a
//! stream whose puts all reach one node is throttled early, never late.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use sluice_protocol::limits::RECORD_BYTES_MAX;

use crate::config::{ThrottleConfig, ThrottleLimits};

/// One rate: tokens refill continuously up to one second's worth of this node's
/// share of it, and at least `floor`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate_per_s: f64,
    floor: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate_per_s: f64, floor: f64, share: f64) -> Bucket {
        Bucket { rate_per_s, floor, tokens: (rate_per_s * share).max(floor.min(rate_per_s)) }
    }

    fn refill(&mut self, elapsed_s: f64, share: f64) {
        let rate = self.rate_per_s * share;
        // The floor never lifts a bucket above the limit itself (one node).
        let cap = rate.max(self.floor.min(self.rate_per_s));
        self.tokens = (self.tokens + elapsed_s * rate).min(cap);
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamBuckets {
    requests: Bucket,
    records: Bucket,
    bytes: Bucket,
    refilled_at: Instant,
}

/// The limits of every stream. Each stream's buckets have their own lock, so puts
/// to different streams never wait for each other here.
pub struct Throttle {
    config: ThrottleConfig,
    streams: RwLock<HashMap<u64, Arc<Mutex<StreamBuckets>>>>,
    /// The live nodes sharing each stream's limits (1 but in cluster mode).
    nodes: AtomicUsize,
}

impl Throttle {
    /// Limits as configured.
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle { config, streams: RwLock::new(HashMap::new()), nodes: AtomicUsize::new(1) }
    }

    /// Cluster mode: `n` live nodes share each stream's limits from now on.
    pub fn set_nodes(&self, n: usize) {
        self.nodes.store(n.max(1), Ordering::Relaxed);
    }

    /// How many of the records (by size, in order) stream `id` takes now: all or
    /// none when `partial` is false, else the longest prefix that fits. `None` when
    /// the request itself is over the requests-per-second limit. Takes the tokens of
    /// what it admits.
    pub fn admit(&self, id: u64, name: &str, records: &[Vec<u8>], partial: bool) -> Option<usize> {
        self.admit_at(Instant::now(), id, name, records.iter().map(Vec::len), partial)
    }

    fn admit_at(
        &self,
        now: Instant,
        id: u64,
        name: &str,
        record_bytes: impl ExactSizeIterator<Item = usize>,
        partial: bool,
    ) -> Option<usize> {
        if !self.config.enabled {
            return Some(record_bytes.len());
        }
        let share = 1.0 / self.nodes.load(Ordering::Relaxed) as f64;
        let existing = self.streams.read().expect("lock").get(&id).cloned();
        let stream = existing.unwrap_or_else(|| {
            let limits = self.config.limits(name);
            let buckets = StreamBuckets {
                requests: Bucket::new(limits.requests_per_s, 1.0, share),
                records: Bucket::new(limits.records_per_s, 1.0, share),
                bytes: Bucket::new(limits.bytes_per_s, RECORD_BYTES_MAX as f64, share),
                refilled_at: now,
            };
            self.streams.write().expect("lock").entry(id).or_insert_with(|| Arc::new(Mutex::new(buckets))).clone()
        });
        let mut guard = stream.lock().expect("lock");
        let buckets = &mut *guard;
        let n_records = record_bytes.len();
        let elapsed_s = now.saturating_duration_since(buckets.refilled_at).as_secs_f64();
        for bucket in [&mut buckets.requests, &mut buckets.records, &mut buckets.bytes] {
            bucket.refill(elapsed_s, share);
        }
        buckets.refilled_at = now;
        if buckets.requests.tokens < 1.0 {
            return None;
        }
        let (mut n, mut bytes) = (0usize, 0f64);
        for size in record_bytes {
            if buckets.records.tokens < (n + 1) as f64 || buckets.bytes.tokens < bytes + size as f64 {
                break;
            }
            n += 1;
            bytes += size as f64;
        }
        if n < n_records && !partial {
            return Some(0);
        }
        buckets.requests.tokens -= 1.0;
        buckets.records.tokens -= n as f64;
        buckets.bytes.tokens -= bytes;
        Some(n)
    }
}

impl ThrottleConfig {
    fn limits(&self, stream: &str) -> ThrottleLimits {
        self.streams.get(stream).copied().unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn throttle() -> Throttle {
        let limits = ThrottleLimits { requests_per_s: 3.0, records_per_s: 10.0, bytes_per_s: 1000.0 };
        let roomy = ThrottleLimits { requests_per_s: 100.0, records_per_s: 1000.0, bytes_per_s: 1e6 };
        Throttle::new(ThrottleConfig { enabled: true, default: limits, streams: [("roomy".into(), roomy)].into() })
    }

    #[test]
    fn batches_take_what_fits_and_single_records_all_or_nothing() {
        let t = throttle();
        let start = Instant::now();
        assert_eq!(t.admit_at(start, 1, "s", [10; 25].into_iter(), true), Some(10), "records per second");
        assert_eq!(t.admit_at(start, 1, "s", [10].into_iter(), false), Some(0), "no record tokens left");
        assert_eq!(t.admit_at(start, 1, "s", [10].into_iter(), false), Some(0));
        assert_eq!(t.admit_at(start, 1, "s", [10].into_iter(), false), Some(0), "refusals take no request token");
        let later = start + Duration::from_millis(500);
        assert_eq!(t.admit_at(later, 1, "s", [10; 5].into_iter(), true), Some(5), "half a second refills half");
        assert_eq!(t.admit_at(later, 1, "s", [400, 400].into_iter(), true), Some(0), "no record tokens");
        let much_later = start + Duration::from_secs(10);
        assert_eq!(
            t.admit_at(much_later, 1, "s", [400, 400, 400].into_iter(), true),
            Some(2),
            "bytes per second, capped at 1 s"
        );
        assert_eq!(t.admit_at(much_later, 1, "s", [1].into_iter(), true), Some(1));
        assert_eq!(t.admit_at(much_later, 1, "s", [1].into_iter(), true), Some(1));
        assert_eq!(t.admit_at(much_later, 1, "s", [1].into_iter(), true), None, "three requests per second");
        assert_eq!(t.admit_at(much_later, 2, "s", [1].into_iter(), true), Some(1), "every stream has its own buckets");
        assert_eq!(t.admit_at(much_later, 3, "roomy", [10; 500].into_iter(), true), Some(500), "per-stream limits");
    }

    #[test]
    fn cluster_nodes_admit_their_share_and_any_valid_record() {
        let t = throttle();
        t.set_nodes(2);
        let start = Instant::now();
        assert_eq!(t.admit_at(start, 1, "s", [10; 25].into_iter(), true), Some(5), "half of 10 records per second");
        let later = start + Duration::from_secs(1);
        assert_eq!(t.admit_at(later, 1, "s", [10; 25].into_iter(), true), Some(5), "refilled at half the rate");
        // A node's share of 1000 bytes per second is 500, yet a record of the
        // stream's whole limit must still pass on some second.
        let much_later = start + Duration::from_secs(10);
        assert_eq!(t.admit_at(much_later, 1, "s", [1000].into_iter(), false), Some(1));
        t.set_nodes(1);
        let again = much_later + Duration::from_secs(10);
        assert_eq!(t.admit_at(again, 2, "s", [10; 25].into_iter(), true), Some(10), "one node: the whole limit");
    }

    #[test]
    fn disabled_admits_everything() {
        let config = ThrottleConfig { enabled: false, ..throttle().config };
        let t = Throttle::new(config);
        assert_eq!(t.admit(1, "s", &vec![vec![0; 1 << 20]; 500], false), Some(500));
    }
}
