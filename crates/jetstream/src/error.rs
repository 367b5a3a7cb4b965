//! The crate's one error enum. Each refusal says what to change.

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server could be reached, or the connection was refused.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The servers cannot keep Sluice's durability promise as configured.
    #[error("NATS is not fit for Sluice: {0}")]
    Unfit(String),
    /// A request to the servers failed.
    #[error("NATS request failed: {0}")]
    Request(String),
}
