//! The WAL's one error enum. Expected outcomes (a torn tail, the end of the log) are
//! not errors; they are reported as data.

use std::path::PathBuf;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An earlier sync failed; the log accepts no more writes until restarted.
    #[error("the write-ahead log is poisoned after a failed sync: {0}")]
    Poisoned(String),
    /// A read or write failed; nothing was acknowledged for the failed call.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The filesystem is full (ENOSPC, or EDQUOT: over a quota). Nothing was
    /// acknowledged for the failed call; it may succeed once space is freed.
    #[error("no space left on the device holding {path}: {source}")]
    NoSpace {
        /// The file the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file carries a format version this build cannot read.
    #[error("{path} has format version {version}, this build reads version 1")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A file header is damaged beyond recovery.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// The stream has no log (never created, or deleted).
    #[error("stream {0:016x} has no log")]
    UnknownStream(u64),
    /// The stream's log could not be recovered at open: its files are kept as they
    /// are, and it takes no appends or reads until the cause is fixed and the log is
    /// opened again. The other streams are served.
    #[error("the log of stream {stream:016x} is unavailable: {reason}")]
    StreamUnavailable {
        /// The stream.
        stream: u64,
        /// Why recovery refused it.
        reason: String,
    },
    /// The stream already has a log.
    #[error("stream {0:016x} already has a log")]
    StreamExists(u64),
    /// A record is larger than `record_bytes_max`.
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Size of the record.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A consumer state is larger than the checkpoint allows.
    #[error("consumer state of {bytes} bytes exceeds the limit of {limit} bytes")]
    StateTooLarge {
        /// Size of the state.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The key-encryption key could not wrap or unwrap a data key.
    #[error("key {key_ref}: {source}")]
    Key {
        /// Which key.
        key_ref: String,
        /// Why it failed.
        #[source]
        source: crate::KeyError,
    },
    /// A record failed authenticated decryption.
    #[error("record {seq} of stream {stream:016x} failed decryption")]
    Decrypt {
        /// The stream.
        stream: u64,
        /// The record.
        seq: u64,
    },
    /// The log is shutting down.
    #[error("the write-ahead log is shut down")]
    Closed,
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| io_error(path, source))
    }
}

/// ENOSPC and EDQUOT: the two ways a filesystem says it has no room.
const NO_SPACE_ERRNOS: [i32; 2] = [28, 122];

/// An I/O error at `path`, telling a full filesystem apart from other failures.
pub(crate) fn io_error(path: &std::path::Path, source: std::io::Error) -> Error {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(code) if NO_SPACE_ERRNOS.contains(&code) => Error::NoSpace { path, source },
        _ => Error::Io { path, source },
    }
}

impl Error {
    /// Whether the failure was a full filesystem.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }

    /// The same failure for another caller of one failed group commit: I/O errors
    /// cannot be cloned, so their kind and OS error code are carried over.
    pub(crate) fn replicate(&self) -> Error {
        let copy = |source: &std::io::Error| match source.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(source.kind(), source.to_string()),
        };
        match self {
            Error::NoSpace { path, source } => Error::NoSpace { path: path.clone(), source: copy(source) },
            Error::Io { path, source } => Error::Io { path: path.clone(), source: copy(source) },
            other => Error::Io { path: PathBuf::new(), source: std::io::Error::other(other.to_string()) },
        }
    }
}
