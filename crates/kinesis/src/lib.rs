//! Kinesis Data Streams as a source of delivery streams (`KinesisStreamAsSource`):
//! where records come from before they enter Sluice's log. `client` calls the
//! Kinesis API, `reader` reads a data stream's shards into a sink (the server
//! appends to the stream's log), and `record` is the format a Kinesis record is
//! kept in within the log, with the per-shard positions derived from it.
//!
//! This crate knows nothing of Firehose, HTTP servers or the log; the server hands
//! it a [`reader::Sink`].

pub mod client;
pub mod reader;
pub mod record;

pub use client::{Client, ClientConfig, KinesisError};
pub use reader::{run, Ended, ReaderOptions, Sink, SinkError};
pub use record::{Header, Positions, SourceRecord};
