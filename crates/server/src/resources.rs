//! What the operating system lends the process and can run out of: file
//! descriptors (the soft limit is raised to the hard limit at start) and space on
//! the data directory's filesystem (puts are refused with "disk full" while the log
//! cannot write, and `/health` says so until space returns).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors the server needs besides client connections: the log's and the
/// delivery engine's files open at once (bounded by the blocking pool, not by the
/// number of streams: an idle stream holds none), the listener, the runtime's own,
/// outgoing connections to S3, HTTP endpoints and Lambda.
const FDS_BESIDES_CONNECTIONS: u64 = 256;

/// Raises the soft limit on open files to the hard limit and warns when the
/// result is low for `connections_max` client connections. Returns the limit.
pub fn raise_fd_limit(connections_max: usize) -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let raised = match (limit.current, limit.maximum) {
        (Some(current), maximum) if maximum.is_none_or(|m| m > current) => {
            let new = Rlimit { current: maximum, maximum };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => maximum,
                Err(error) => {
                    tracing::warn!(%error, current, "Could not raise the open-file limit.");
                    Some(current)
                }
            }
        }
        (current, _) => current,
    };
    let needed = connections_max as u64 + FDS_BESIDES_CONNECTIONS;
    match raised {
        Some(limit) if limit < needed => tracing::warn!(
            limit,
            connections_max,
            needed,
            "The open-file limit is low for [limits] connections_max: connections past it will fail. Raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower connections_max. The number of streams does not matter: idle streams hold no descriptors."
        ),
        _ => tracing::debug!(limit = ?raised, "Open-file limit."),
    }
    raised
}

/// How many segment files the log may keep open between uses (see
/// `sluice_wal::WalOptions::files_open_max`): half of what the open-file limit leaves
/// after client connections and the rest, within 16..=4096.
pub fn log_files_open_max(fd_limit: Option<u64>, connections_max: usize) -> usize {
    let spare = fd_limit
        .map_or(u64::MAX, |limit| limit.saturating_sub(connections_max as u64).saturating_sub(FDS_BESIDES_CONNECTIONS));
    (spare / 2).clamp(16, 4096) as usize
}

/// Free space on the data directory's filesystem for `/health` to report "ok"
/// again after writes were refused for lack of it: a new segment's first
/// preallocation step, twice. Puts are never refused for being under it (a put
/// that fits is taken, and clears the state at once).
const RESUME_FREE_BYTES_MIN: u64 = 8 << 20;

/// Whether the log is refusing writes because its disk is full.
pub struct DiskState {
    /// Where the log lives.
    dir: PathBuf,
    /// When a write last failed for lack of space (Unix ms); 0 when writes work.
    full_since_ms: AtomicU64,
}

impl DiskState {
    /// Watches the filesystem holding `dir`.
    pub fn new(dir: PathBuf) -> DiskState {
        DiskState { dir, full_since_ms: AtomicU64::new(0) }
    }

    /// A write failed for lack of space.
    pub fn full(&self, now_ms: u64) {
        let _ = self.full_since_ms.compare_exchange(0, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A write succeeded. A load before the store, so the put path does not write
    /// the shared line on every put.
    pub fn written(&self) {
        if self.full_since_ms.load(Ordering::Relaxed) != 0 {
            tracing::info!("Writes succeed again: the disk has room.");
            self.full_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Since when writes are refused for lack of space, if they are.
    pub fn full_since_ms(&self) -> Option<u64> {
        Some(self.full_since_ms.load(Ordering::Relaxed)).filter(|ms| *ms != 0)
    }

    /// While full: clears the state once the filesystem has room again (delivery
    /// freed segments, or the operator freed space), without waiting for a put.
    pub fn probe(&self) {
        if self.full_since_ms().is_none() {
            return;
        }
        match rustix::fs::statvfs(&self.dir) {
            Ok(stat) if stat.f_bavail.saturating_mul(stat.f_frsize) >= RESUME_FREE_BYTES_MIN => self.written(),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "statvfs of the data directory failed."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_state_is_full_from_a_failed_write_until_a_write_or_room() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskState::new(dir.path().to_path_buf());
        assert_eq!(disk.full_since_ms(), None);
        disk.full(1_000);
        disk.full(2_000);
        assert_eq!(disk.full_since_ms(), Some(1_000), "the first failure dates it");
        disk.written();
        assert_eq!(disk.full_since_ms(), None);
        disk.full(3_000);
        // The temporary directory's filesystem has far more than 8 MiB free.
        disk.probe();
        assert_eq!(disk.full_since_ms(), None, "room again clears it without a write");
    }

    #[test]
    fn the_log_keeps_at_most_half_the_spare_descriptors_open() {
        assert_eq!(log_files_open_max(Some(1024), 1024), 16);
        assert_eq!(log_files_open_max(Some(4096), 1024), 1408);
        assert_eq!(log_files_open_max(None, 1024), 4096);
        assert_eq!(log_files_open_max(Some(1 << 20), 1024), 4096);
    }

    #[test]
    fn the_soft_fd_limit_is_raised_to_the_hard_limit() {
        let before = getrlimit(Resource::Nofile);
        let raised = raise_fd_limit(16);
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, after.maximum.or(before.current));
        assert_eq!(raised, after.current);
    }
}
