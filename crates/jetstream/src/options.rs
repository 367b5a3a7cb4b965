//! How to reach the NATS cluster and how to lay Sluice out in it: plain data, validated
//! by the server's configuration layer.

use std::path::PathBuf;
use std::time::Duration;

/// The largest message Sluice publishes (one commit group); the servers'
/// `max_payload` must allow it.
pub const COMMIT_BYTES_MAX: usize = 8 << 20;

/// How Sluice authenticates to NATS.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    #[default]
    None,
    /// A user name and password.
    UserPassword {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed (`SU...`).
    NKeySeed(String),
    /// A `.creds` file (a user JWT and its NKey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword {{ user: {user:?} }}"),
            Credentials::Token(_) => f.write_str("Token"),
            Credentials::NKeySeed(_) => f.write_str("NKeySeed"),
            Credentials::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// The `[jetstream]` settings.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Server URLs (`nats://HOST:PORT`, `tls://HOST:PORT`); any one is enough to connect.
    pub servers: Vec<String>,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Require TLS.
    pub tls_required: bool,
    /// PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Replicas of every stream and bucket Sluice creates.
    pub replicas: usize,
    /// Prefix of every stream, subject and bucket name, so several Sluice clusters
    /// can share one NATS.
    pub prefix: String,
    /// HTTP monitoring endpoints of the NATS servers (`http://HOST:8222`). When given,
    /// each must report `sync_always`: that every write is fsynced before it is
    /// acknowledged, which NATS clients cannot ask about otherwise.
    pub monitoring_urls: Vec<String>,
    /// How long to wait for a connection or a reply.
    pub timeout: Duration,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            servers: vec!["nats://127.0.0.1:4222".into()],
            credentials: Credentials::None,
            tls_required: false,
            ca_file: None,
            replicas: 3,
            prefix: "SLUICE".into(),
            monitoring_urls: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}
