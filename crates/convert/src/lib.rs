//! Data format conversion (issue 14): JSON records in, columnar rows out, under the
//! schema of a Glue table. Sits in a lane between processing and the object
//! upload: a batch's records, after Lambda and the other processors, become the
//! rows of one Parquet or ORC object. So far: the table schema (`schema`), its
//! Hive column types (`hive`) and the timestamp forms the deserializers accept (`timestamp`); the
//! deserializers and the writers come next.
//!
//! This crate knows nothing of Firehose's wire format, HTTP servers or the log.
//! It is where the heavy columnar dependencies will live, so that the log, the
//! protocol and the edge build and test without them.

pub mod hive;
pub mod schema;
pub mod timestamp;

pub use hive::{HiveType, TypeError};
pub use schema::{Column, SchemaError, TableSchema};
