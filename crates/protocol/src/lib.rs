//! `sluice-protocol`: the Firehose API as pure types. The server's edge hands it the
//! `X-Amz-Target` header and the body; it returns a typed [`Operation`] or an
//! [`ApiError`] with the exact `__type` and message AWS would send. No IO, no clock.
//!
//! Validation is driven by the botocore service model (`model/`), so constraint
//! messages match AWS's for every member of every operation.

pub mod conversion;
pub mod destination;
pub mod dto;
mod error;
pub mod limits;
mod model;
mod operation;
pub mod processing;
pub mod s3_key;

pub use error::{ApiError, ErrorCode};
pub use operation::{Operation, ParseOptions, OPERATION_NAMES, TARGET_PREFIX};
