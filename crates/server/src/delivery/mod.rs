//! Delivery: what happens to records after they are durable. For now the encoding of
//! a batch into an object body (`encode`); the engine that reads the log, batches by
//! buffering hints and uploads (issue 3) builds on it.

pub mod encode;
