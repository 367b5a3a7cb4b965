//! Connecting to the NATS cluster, and refusing one that could lose acknowledged
//! records: a server version with known acknowledged-write loss bugs, JetStream off or
//! without file storage, a `max_payload` too small for a commit group, or (when the
//! monitoring endpoints are given) servers that do not fsync every write before
//! acknowledging it (`sync_interval: always`; the Jepsen analysis of NATS 2.12.1
//! showed acknowledged writes lost with the default two-minute interval).

use async_nats::jetstream;

use crate::error::Error;
use crate::options::{Credentials, JetStreamOptions, COMMIT_BYTES_MAX};

/// The oldest server release without the known acknowledged-write loss bugs.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 3);

/// A checked connection to the cluster.
pub struct Connection {
    /// The NATS client.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub jetstream: jetstream::Context,
    /// The version of the server the client first connected to.
    pub server_version: String,
}

/// Whether `version` (`2.12.8`, `2.14.0-beta.1`) is at least `min`. Pre-releases
/// count as their release.
pub fn version_at_least(version: &str, min: (u64, u64, u64)) -> bool {
    let release = version.trim_start_matches('v').split(['-', '+']).next().unwrap_or("");
    let mut parts = release.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor), Some(patch)) => (major, minor, patch) >= min,
        _ => false,
    }
}

/// Connects and checks that the cluster can keep Sluice's durability promise.
pub async fn connect(options: &JetStreamOptions) -> Result<Connection, Error> {
    let servers = options.servers.join(",");
    let connect_error = |reason: String| Error::Connect { servers: servers.clone(), reason };
    let mut connect = async_nats::ConnectOptions::new()
        .name("sluice")
        .connection_timeout(options.timeout)
        .request_timeout(Some(options.timeout))
        .require_tls(options.tls_required)
        // Sluice retries what needs retrying itself; the client's own reconnection
        // keeps going in the background.
        .retry_on_initial_connect();
    if let Some(ca) = &options.ca_file {
        connect = connect.add_root_certificates(ca.clone());
    }
    connect = match &options.credentials {
        Credentials::None => connect,
        Credentials::UserPassword { user, password } => connect.user_and_password(user.clone(), password.clone()),
        Credentials::Token(token) => connect.token(token.clone()),
        Credentials::NKeySeed(seed) => connect.nkey(seed.clone()),
        Credentials::CredsFile(path) => {
            connect.credentials_file(path).await.map_err(|e| connect_error(format!("credentials file: {e}")))?
        }
    };
    let urls: Vec<async_nats::ServerAddr> = options
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>().map_err(|e| connect_error(format!("{s}: {e}"))))
        .collect::<Result<_, _>>()?;
    let client = tokio::time::timeout(options.timeout, connect.connect(urls.as_slice()))
        .await
        .map_err(|_| connect_error(format!("no server answered within {:?}", options.timeout)))?
        .map_err(|e| connect_error(e.to_string()))?;
    // With `retry_on_initial_connect` the client returns at once; wait for the
    // handshake so the server's INFO is known.
    let deadline = tokio::time::Instant::now() + options.timeout;
    let info = loop {
        if let Some(info) = client.try_server_info() {
            if !info.version.is_empty() {
                break info;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(connect_error(format!("no server answered within {:?}", options.timeout)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    if !version_at_least(&info.version, MIN_SERVER_VERSION) {
        let (a, b, c) = MIN_SERVER_VERSION;
        return Err(Error::Unfit(format!(
            "server {} runs NATS {}; Sluice needs {a}.{b}.{c} or later (earlier releases can lose acknowledged writes)",
            info.server_name, info.version
        )));
    }
    if info.max_payload < COMMIT_BYTES_MAX {
        return Err(Error::Unfit(format!(
            "server {} allows messages of {} bytes (max_payload); Sluice publishes commit groups of up to {} bytes: set max_payload: 8MB",
            info.server_name, info.max_payload, COMMIT_BYTES_MAX
        )));
    }
    let jetstream = jetstream::new(client.clone());
    // A cluster that is still electing its JetStream leader does not answer yet:
    // nodes started together with their NATS servers wait for it (a while), rather
    // than fail; a server without JetStream answers at once and is refused.
    let mut waited = 0;
    let account = loop {
        match jetstream.query_account().await {
            Ok(account) => break account,
            Err(e) if e.kind() == jetstream::context::AccountErrorKind::TimedOut && waited < ACCOUNT_WAITS_MAX => {
                waited += 1;
                tracing::info!(server = %info.server_name, "JetStream does not answer yet (a leader being elected?); waiting.");
            }
            Err(e) => {
                return Err(Error::Unfit(format!(
                    "JetStream is not available to this account ({e}); enable it with a `jetstream {{}}` block"
                )))
            }
        }
    };
    if account.limits.max_storage == Some(0) {
        return Err(Error::Unfit(
            "the account has no JetStream file storage (max_storage 0); Sluice keeps records in file-backed streams"
                .into(),
        ));
    }
    check_sync_always(&options.monitoring_urls, options.timeout).await?;
    tracing::info!(server = %info.server_name, version = %info.version, "Connected to NATS JetStream.");
    Ok(Connection { client, jetstream, server_version: info.version })
}

/// How many times the account query may time out at connect (each after the
/// client's request timeout) before Sluice gives up on a forming cluster.
const ACCOUNT_WAITS_MAX: u32 = 6;

/// Asks each monitoring endpoint (`/varz`) whether its server fsyncs every write
/// before acknowledging it (`sync_interval: always`).
pub async fn check_sync_always(monitoring_urls: &[String], timeout: std::time::Duration) -> Result<(), Error> {
    if monitoring_urls.is_empty() {
        return Ok(());
    }
    let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| Error::Request(e.to_string()))?;
    for base in monitoring_urls {
        let url = format!("{}/varz", base.trim_end_matches('/'));
        let body = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Error::Request(format!("{url}: {e}")))?
            .bytes()
            .await
            .map_err(|e| Error::Request(format!("{url}: {e}")))?;
        let varz: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::Request(format!("{url}: not JSON: {e}")))?;
        let name = varz["server_name"].as_str().unwrap_or(base);
        if varz["jetstream"]["config"]["sync_always"].as_bool() != Some(true) {
            return Err(Error::Unfit(format!(
                "server {name} ({url}) does not fsync every write before acknowledging it: set `jetstream {{ sync_interval: always }}` (with the default two-minute interval, acknowledged writes can be lost to a power failure, as Jepsen showed for NATS 2.12.1)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compared_by_release() {
        assert!(version_at_least("2.12.3", MIN_SERVER_VERSION));
        assert!(version_at_least("2.12.8", MIN_SERVER_VERSION));
        assert!(version_at_least("v2.14.0-beta.1", MIN_SERVER_VERSION));
        assert!(version_at_least("3.0.0", MIN_SERVER_VERSION));
        assert!(!version_at_least("2.12.2", MIN_SERVER_VERSION));
        assert!(!version_at_least("2.9.10", MIN_SERVER_VERSION));
        assert!(!version_at_least("2.10.23", MIN_SERVER_VERSION));
        assert!(!version_at_least("garbage", MIN_SERVER_VERSION));
    }
}
