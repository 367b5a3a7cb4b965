//! Per-stream throughput limits, as Firehose enforces them: token buckets for
//! requests, records and bytes per second, shared by PutRecord and PutRecordBatch,
//! each holding at most one second of its rate. A PutRecord that does not fit is
//! refused whole; a PutRecordBatch keeps the records that fit, in order, and the rest
//! are answered individually as throttled. Checked before anything is appended.
//!
//! The buckets are a few lines of arithmetic rather than a rate-limiting crate:
//! batches must be admitted in part, which all-or-nothing limiters do not offer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::config::{ThrottleConfig, ThrottleLimits};

/// One rate: tokens refill continuously up to one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate_per_s: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate_per_s: f64) -> Bucket {
        Bucket { rate_per_s, tokens: rate_per_s }
    }

    fn refill(&mut self, elapsed_s: f64) {
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.rate_per_s);
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
}

impl Throttle {
    /// Limits as configured.
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle { config, streams: RwLock::new(HashMap::new()) }
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
        let existing = self.streams.read().expect("lock").get(&id).cloned();
        let stream = existing.unwrap_or_else(|| {
            let limits = self.config.limits(name);
            let buckets = StreamBuckets {
                requests: Bucket::new(limits.requests_per_s),
                records: Bucket::new(limits.records_per_s),
                bytes: Bucket::new(limits.bytes_per_s),
                refilled_at: now,
            };
            self.streams.write().expect("lock").entry(id).or_insert_with(|| Arc::new(Mutex::new(buckets))).clone()
        });
        let mut guard = stream.lock().expect("lock");
        let buckets = &mut *guard;
        let n_records = record_bytes.len();
        let elapsed_s = now.saturating_duration_since(buckets.refilled_at).as_secs_f64();
        for bucket in [&mut buckets.requests, &mut buckets.records, &mut buckets.bytes] {
            bucket.refill(elapsed_s);
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
    fn disabled_admits_everything() {
        let config = ThrottleConfig { enabled: false, ..throttle().config };
        let t = Throttle::new(config);
        assert_eq!(t.admit(1, "s", &vec![vec![0; 1 << 20]; 500], false), Some(500));
    }
}
