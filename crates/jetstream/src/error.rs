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
    /// A publish was sent but never acknowledged: it may or may not be stored.
    #[error("the records could not be confirmed as stored: {0}")]
    Unconfirmed(String),
    /// The stream's log is at its size limit and refuses new messages.
    #[error("the stream's log is full: {0}")]
    Full(String),
    /// The servers refused the publish.
    #[error("the servers refused the records: {0}")]
    Refused(String),
    /// Another node committed the stream's progress since this one last read it:
    /// this node no longer owns the stream's delivery.
    #[error("stream {0:016x}: another node committed its progress (fenced)")]
    Fenced(u64),
    /// The stream has no log.
    #[error("stream {0:016x} has no log")]
    UnknownStream(u64),
    /// A conditional change lost: the key exists already, or changed since it was
    /// read. Read again and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The log is shutting down.
    #[error("the log is shut down")]
    Closed,
}

impl Error {
    /// The same error for another caller of one failed commit group.
    pub(crate) fn clone_of(&self) -> Error {
        match self {
            Error::Connect { servers, reason } => Error::Connect { servers: servers.clone(), reason: reason.clone() },
            Error::Unfit(reason) => Error::Unfit(reason.clone()),
            Error::Request(reason) => Error::Request(reason.clone()),
            Error::Unconfirmed(reason) => Error::Unconfirmed(reason.clone()),
            Error::Full(reason) => Error::Full(reason.clone()),
            Error::Refused(reason) => Error::Refused(reason.clone()),
            Error::Fenced(id) => Error::Fenced(*id),
            Error::UnknownStream(id) => Error::UnknownStream(*id),
            Error::Conflict(reason) => Error::Conflict(reason.clone()),
            Error::Closed => Error::Closed,
        }
    }
}
