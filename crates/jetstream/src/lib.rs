//! `sluice-jetstream`: cluster mode's storage on NATS JetStream, in place of the
//! embedded write-ahead log when Sluice runs as several nodes (see ARCHITECTURE.md,
//! "Cluster mode"). Records go from the put path into one JetStream stream per
//! delivery stream, the catalog and delivery progress into key-value buckets, and
//! delivery ownership is leased through another. Knows nothing of HTTP or AWS.
//!
//! What is here so far: the connection and the checks that refuse a NATS deployment
//! that cannot keep Sluice's promise that a 200 means durable ([`connect`]), the
//! record log ([`StreamLogs`]), and key-value buckets with compare-and-set
//! ([`Bucket`]) for the catalog and leases.

mod bucket;
mod connect;
mod error;
mod log;
pub mod message;
mod options;

pub use bucket::{Bucket, Change, Versioned};
pub use connect::{check_sync_always, connect, version_at_least, Connection, MIN_SERVER_VERSION};
pub use error::Error;
pub use log::{Appended, Cursor, StoredRecord, StreamLogs, TakenOver, STATE_BYTES_MAX};
pub use options::{Credentials, JetStreamOptions, COMMIT_BYTES_MAX};
