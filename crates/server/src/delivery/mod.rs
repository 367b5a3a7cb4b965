//! Delivery: what happens to records after they are durable. For now the encoding of
//! a batch into an object body (`encode`) and its object key (`key`); the engine that
//! reads the log, batches by buffering hints and uploads (issue 3) builds on them.

pub mod encode;
pub mod key;
