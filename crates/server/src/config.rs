//! Configuration: the TOML file and command-line flags, merged and validated into
//! [`Config`] before anything starts. Every field says its unit and default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The config file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on. Default `127.0.0.1:4573`.
    pub listen: Option<SocketAddr>,
    /// Directory for the catalog, the log and keys. Default `./sluice-data`.
    pub data_dir: Option<PathBuf>,
    /// Region used when a request does not name one in its SigV4 scope. Default `us-east-1`.
    pub region: Option<String>,
    /// The 12-digit account id in ARNs and messages. Default `000000000000`.
    pub account_id: Option<String>,
    /// How long a new stream stays `CREATING`, and encryption `ENABLING`/`DISABLING`,
    /// in milliseconds. Default 250.
    pub transition_ms: Option<u64>,
    /// Buckets and streams to create (or bring up to date) at start: a JSON file
    /// `{"buckets": [...], "streams": [<CreateDeliveryStream request>, ...]}`.
    pub streams_file: Option<PathBuf>,
    /// Write-ahead log sizes.
    #[serde(default)]
    pub wal: RawWalConfig,
    /// Back-pressure.
    #[serde(default)]
    pub limits: RawLimitsConfig,
    /// Delivery to an S3-compatible service instead of the local directory.
    #[serde(default)]
    pub s3: RawS3Config,
    /// Delivery retries.
    #[serde(default)]
    pub delivery: RawDeliveryConfig,
    /// Encryption at rest.
    #[serde(default)]
    pub encryption: RawEncryptionConfig,
    /// Which callers count as which sources.
    #[serde(default)]
    pub sources: RawSourcesConfig,
    /// Delivery to HTTP endpoints.
    #[serde(default)]
    pub http: RawHttpConfig,
    /// The Lambda API that transformation functions are invoked through.
    #[serde(default)]
    pub lambda: RawLambdaConfig,
    /// The Kinesis API that `KinesisStreamAsSource` streams read from.
    #[serde(default)]
    pub kinesis: RawKinesisConfig,
    /// Where format conversion finds its tables: declared ones, and the Glue API.
    #[serde(default)]
    pub glue: RawGlueConfig,
    /// The Iceberg catalog of Iceberg destinations.
    #[serde(default)]
    pub iceberg: RawIcebergConfig,
    /// Who may call the API.
    #[serde(default)]
    pub auth: RawAuthConfig,
    /// Per-stream throughput limits.
    #[serde(default)]
    pub throttle: RawThrottleConfig,
    /// HTTPS for the API.
    #[serde(default)]
    pub tls: RawTlsConfig,
    /// Where records are kept.
    #[serde(default)]
    pub log: RawLogConfig,
    /// The NATS JetStream cluster, with `[log] backend = "jetstream"`.
    #[serde(default)]
    pub jetstream: RawJetStreamConfig,
    /// The test controls (`/_sluice/flush`, `/_sluice/state`).
    #[serde(default)]
    pub admin: RawAdminConfig,
}

/// `[admin]`: the test controls on a server with `[[auth.keys]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminConfig {
    /// Allow them to signed requests by keys whose operations include them.
    /// Default false. (Without keys they are always allowed, on loopback.)
    pub enabled: Option<bool>,
}

/// `[log]`: where records are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogConfig {
    /// `embedded` (default: the write-ahead log in the data directory, one node) or
    /// `jetstream` (cluster mode, see `[jetstream]`).
    pub backend: Option<String>,
}

/// `[jetstream]`: the NATS JetStream cluster Sluice's nodes share (cluster mode).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJetStreamConfig {
    /// Server URLs. Default `["nats://127.0.0.1:4222"]`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<String>,
    /// A token.
    pub token: Option<String>,
    /// An NKey seed, or `nkey_seed_file`.
    pub nkey_seed: Option<String>,
    /// A file holding an NKey seed.
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file.
    pub creds_file: Option<PathBuf>,
    /// Require TLS. Default false (`tls://` URLs require it too).
    pub tls_required: Option<bool>,
    /// CA certificates (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Replicas of every stream and bucket. Default 3.
    pub replicas: Option<usize>,
    /// Prefix of Sluice's streams, subjects and buckets. Default `SLUICE`.
    pub prefix: Option<String>,
    /// The servers' HTTP monitoring endpoints; when given, each must report
    /// `sync_always` (`sync_interval: always`) or Sluice refuses to start.
    #[serde(default)]
    pub monitoring_urls: Vec<String>,
    /// Seconds to wait for a connection or a reply. Default 5.
    pub timeout_s: Option<u64>,
    /// Seconds a node holds a stream's delivery without renewing it; a dead node's
    /// streams move after about this long. Default 10.
    pub lease_s: Option<u64>,
    /// This node's name among the cluster's nodes (unique). Default: the host name
    /// and a random suffix.
    pub node_id: Option<String>,
    /// A bucket directory every node mounts at the same path (shared storage): local
    /// buckets are written there instead of `<data-dir>/buckets`. Without it, every
    /// stream must deliver to an S3-compatible service.
    pub shared_buckets_dir: Option<PathBuf>,
}

/// `[jetstream]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How to reach the cluster and lay Sluice out in it.
    pub options: sluice_jetstream::JetStreamOptions,
    /// How long a lease lasts.
    pub lease: std::time::Duration,
    /// This node's name.
    pub node_id: String,
    /// Shared local buckets, if any.
    pub shared_buckets_dir: Option<PathBuf>,
}

impl RawJetStreamConfig {
    fn validate(self, servers_from_flag: Option<Vec<String>>) -> Result<ClusterConfig, ConfigError> {
        use sluice_jetstream::Credentials;
        let invalid = |what: &str| ConfigError::Invalid(format!("jetstream: {what}"));
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_string())
                .map_err(|source| ConfigError::Read { path: path.clone(), source })
        };
        let credentials =
            match (&self.user, &self.password, &self.token, &self.nkey_seed, &self.nkey_seed_file, &self.creds_file) {
                (None, None, None, None, None, None) => Credentials::None,
                (Some(user), Some(password), None, None, None, None) => {
                    Credentials::UserPassword { user: user.clone(), password: password.clone() }
                }
                (None, None, Some(token), None, None, None) => Credentials::Token(token.clone()),
                (None, None, None, Some(seed), None, None) => Credentials::NKeySeed(seed.clone()),
                (None, None, None, None, Some(file), None) => Credentials::NKeySeed(read(file)?),
                (None, None, None, None, None, Some(file)) => Credentials::CredsFile(file.clone()),
                _ => {
                    return Err(invalid(
                        "give one way to authenticate: user and password, token, nkey_seed(_file) or creds_file",
                    ))
                }
            };
        let servers = servers_from_flag.unwrap_or(self.servers);
        let servers = if servers.is_empty() { vec!["nats://127.0.0.1:4222".to_string()] } else { servers };
        if let Some(bad) = servers.iter().find(|s| !s.contains("://")) {
            return Err(invalid(&format!("server {bad:?} is not a URL (nats://HOST:PORT)")));
        }
        let replicas = self.replicas.unwrap_or(3);
        if !(1..=5).contains(&replicas) {
            return Err(invalid("replicas must be 1 to 5"));
        }
        let prefix = self.prefix.unwrap_or_else(|| "SLUICE".into());
        // Names end up in JetStream stream, subject and key names: no dots or spaces.
        let is_name = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !is_name(&prefix) {
            return Err(invalid("prefix must be letters, digits, '-' or '_'"));
        }
        let lease_s = self.lease_s.unwrap_or(10);
        if !(2..=600).contains(&lease_s) {
            return Err(invalid("lease_s must be 2 to 600"));
        }
        let node_id = self.node_id.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
            let host = if host.is_empty() { "node".to_string() } else { host };
            format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        });
        if !is_name(&node_id) {
            return Err(invalid("node_id must be letters, digits, '-' or '_'"));
        }
        let options = sluice_jetstream::JetStreamOptions {
            servers,
            credentials,
            tls_required: self.tls_required.unwrap_or(false),
            ca_file: self.ca_file,
            replicas,
            prefix,
            monitoring_urls: self.monitoring_urls,
            timeout: std::time::Duration::from_secs(self.timeout_s.unwrap_or(5).max(1)),
        };
        Ok(ClusterConfig {
            options,
            lease: std::time::Duration::from_secs(lease_s),
            node_id,
            shared_buckets_dir: self.shared_buckets_dir,
        })
    }
}

/// `[tls]`: serve the API over HTTPS (both files, PEM).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    /// Certificate chain.
    pub cert_file: Option<PathBuf>,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `[throttle]`: Firehose's per-stream throughput limits (us-east-1 defaults). The
/// fields of [`RawThrottleLimits`] are repeated rather than flattened in, as for
/// `[s3]`: serde cannot refuse unknown fields next to a flattened member.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottleConfig {
    /// Default true; false turns every limit off (local load tests).
    pub enabled: Option<bool>,
    /// Put requests per second, per stream. Default 2000.
    pub requests_per_s: Option<f64>,
    /// Records per second, per stream. Default 500000.
    pub records_per_s: Option<f64>,
    /// MiB of record data per second, per stream. Default 5.
    pub mib_per_s: Option<f64>,
    /// `[throttle.streams.NAME]`: one stream's limits; unset fields take the defaults.
    #[serde(default)]
    pub streams: std::collections::BTreeMap<String, RawThrottleLimits>,
}

/// `[throttle.streams.NAME]`: one stream's limits.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottleLimits {
    /// Put requests per second. Default 2000.
    pub requests_per_s: Option<f64>,
    /// Records per second. Default 500000.
    pub records_per_s: Option<f64>,
    /// MiB of record data per second. Default 5.
    pub mib_per_s: Option<f64>,
}

/// `[throttle]`, validated.
#[derive(Debug, Clone, Default)]
pub struct ThrottleConfig {
    /// Limits apply.
    pub enabled: bool,
    /// For streams without their own.
    pub default: ThrottleLimits,
    /// By stream name.
    pub streams: std::collections::BTreeMap<String, ThrottleLimits>,
}

/// One stream's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThrottleLimits {
    /// Put requests per second.
    pub requests_per_s: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Record bytes per second.
    pub bytes_per_s: f64,
}

impl RawThrottleLimits {
    fn over(self, base: ThrottleLimits, what: &str) -> Result<ThrottleLimits, ConfigError> {
        let limits = ThrottleLimits {
            requests_per_s: self.requests_per_s.unwrap_or(base.requests_per_s),
            records_per_s: self.records_per_s.unwrap_or(base.records_per_s),
            bytes_per_s: self.mib_per_s.map_or(base.bytes_per_s, |mib| mib * (1 << 20) as f64),
        };
        if [limits.requests_per_s, limits.records_per_s, limits.bytes_per_s].iter().any(|v| v.is_nan() || *v < 1.0) {
            return Err(ConfigError::Invalid(format!("{what}: limits must be at least 1 per second")));
        }
        Ok(limits)
    }
}

/// `[auth]`: SigV4 verification of every request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthConfig {
    /// Regions a request's credential scope may name; default: any.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Accept unsigned requests on a non-loopback address when no keys are set.
    pub allow_anonymous: Option<bool>,
    /// The access keys (`[[auth.keys]]`). None: requests are not verified.
    #[serde(default)]
    pub keys: Vec<RawAccessKey>,
}

/// `[[auth.keys]]`: one access key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessKey {
    /// The access key id clients sign with.
    pub access_key_id: String,
    /// Its secret,
    pub secret_access_key: Option<String>,
    /// or a file holding it,
    pub secret_access_key_file: Option<PathBuf>,
    /// or the environment variable holding it.
    pub secret_access_key_env: Option<String>,
    /// Operations the key may call (`PutRecord`, ...); default all.
    #[serde(default)]
    pub operations: Vec<String>,
    /// Streams the key may use; default all.
    #[serde(default)]
    pub streams: Vec<String>,
}

/// `[lambda]`: where Lambda processors' functions are invoked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLambdaConfig {
    /// The Lambda API endpoint. Default `https://lambda.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Signing region. Default: the server's region.
    pub region: Option<String>,
    /// Access key id for signing; unset: `AWS_ACCESS_KEY_ID` (and unsigned without it).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Or a file holding it.
    pub secret_access_key_file: Option<PathBuf>,
    /// How long an invocation may take, in seconds. Default 300 (Firehose's 5 minutes).
    pub timeout_s: Option<u64>,
    /// Per-function endpoints (`[lambda.functions."NAME-OR-ARN"] endpoint = ...`).
    #[serde(default)]
    pub functions: std::collections::BTreeMap<String, RawLambdaFunction>,
}

/// `[lambda.functions."NAME-OR-ARN"]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLambdaFunction {
    /// The Lambda API endpoint for this function.
    pub endpoint: Option<String>,
    /// Its signing region.
    pub region: Option<String>,
}

/// `[lambda]`, validated.
#[derive(Clone)]
pub struct LambdaConfig {
    /// Default endpoint.
    pub endpoint: String,
    /// Default signing region.
    pub region: String,
    /// `(access key id, secret)`; `None`: requests go unsigned.
    pub credentials: Option<(String, String)>,
    /// Invocation timeout.
    pub timeout_s: u64,
    /// Per-function `(endpoint, region)`.
    pub functions: std::collections::BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for LambdaConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.as_ref().map(|c| &c.0))
            .field("timeout_s", &self.timeout_s)
            .field("functions", &self.functions)
            .finish()
    }
}

impl LambdaConfig {
    /// The endpoint and signing region for `function`.
    pub fn target(&self, function: &str) -> (&str, &str) {
        match self.functions.get(function) {
            Some((endpoint, region)) => (endpoint, region),
            None => (&self.endpoint, &self.region),
        }
    }
}

/// `[kinesis]`: where `KinesisStreamAsSource` streams read their data streams.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKinesisConfig {
    /// The Kinesis API endpoint. Default `https://kinesis.<region>.amazonaws.com`,
    /// the region taken from the data stream's ARN.
    pub endpoint: Option<String>,
    /// Signing region. Default: the data stream ARN's region.
    pub region: Option<String>,
    /// Access key id for signing; unset: `AWS_ACCESS_KEY_ID` (and unsigned without it).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Or a file holding it.
    pub secret_access_key_file: Option<PathBuf>,
    /// Per-data-stream endpoints (`[kinesis.streams."NAME-OR-ARN"] endpoint = ...`).
    #[serde(default)]
    pub streams: std::collections::BTreeMap<String, RawKinesisStream>,
}

/// `[kinesis.streams."NAME-OR-ARN"]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKinesisStream {
    /// The Kinesis API endpoint for this data stream.
    pub endpoint: Option<String>,
    /// Its signing region.
    pub region: Option<String>,
    /// Its own access key id (with a secret below); unset: `[kinesis]`'s.
    pub access_key_id: Option<String>,
    /// Its own secret access key.
    pub secret_access_key: Option<String>,
    /// Or a file holding it.
    pub secret_access_key_file: Option<PathBuf>,
}

/// `[kinesis]`, validated.
#[derive(Clone, Default)]
pub struct KinesisConfig {
    /// Default endpoint; `None`: AWS's, by the data stream's region.
    pub endpoint: Option<String>,
    /// Default signing region; `None`: the data stream's.
    pub region: Option<String>,
    /// `(access key id, secret)`; `None`: signed with a placeholder key (emulators take it).
    pub credentials: Option<(String, String)>,
    /// Per data stream (name or ARN): `(endpoint, region, credentials)` overrides.
    pub streams: std::collections::BTreeMap<String, KinesisStreamConfig>,
}

/// `[kinesis.streams."NAME-OR-ARN"]`, validated.
#[derive(Clone, Default)]
pub struct KinesisStreamConfig {
    /// Endpoint.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: Option<String>,
    /// Credentials.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for KinesisConfig {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.as_ref().map(|c| &c.0))
            .field("streams", &self.streams.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KinesisConfig {
    /// How to call the Kinesis API for the data stream `arn` (named `name`): the
    /// per-stream settings (by ARN, then by name), then `[kinesis]`'s, then AWS's
    /// endpoint in the ARN's region.
    pub fn client_for(&self, arn: &str, name: &str, server_region: &str) -> sluice_kinesis::ClientConfig {
        let own = self.streams.get(arn).or_else(|| self.streams.get(name));
        let arn_region = arn.split(':').nth(3).filter(|r| !r.is_empty());
        let region = own
            .and_then(|s| s.region.clone())
            .or_else(|| self.region.clone())
            .or_else(|| arn_region.map(str::to_string))
            .unwrap_or_else(|| server_region.to_string());
        let endpoint = own
            .and_then(|s| s.endpoint.clone())
            .or_else(|| self.endpoint.clone())
            .unwrap_or_else(|| format!("https://kinesis.{region}.amazonaws.com"));
        let credentials = own.and_then(|s| s.credentials.clone()).or_else(|| self.credentials.clone());
        sluice_kinesis::ClientConfig { endpoint, region, credentials, timeout: std::time::Duration::from_secs(30) }
    }
}

/// An endpoint setting (`what` names it in the error): an http(s) URL, without a
/// trailing slash.
pub fn http_url(what: &str, endpoint: &str) -> Result<String, ConfigError> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        Ok(endpoint.trim_end_matches('/').to_string())
    } else {
        Err(ConfigError::Invalid(format!("{what}: endpoint must be an http(s) URL, got {endpoint:?}")))
    }
}

impl RawKinesisConfig {
    fn validate(self) -> Result<KinesisConfig, ConfigError> {
        let endpoint_of = |what: &str, endpoint: Option<String>| endpoint.map(|e| http_url(what, &e)).transpose();
        let mut streams = std::collections::BTreeMap::new();
        for (name, stream) in self.streams {
            let what = format!("kinesis.streams.{name}");
            let config = KinesisStreamConfig {
                endpoint: endpoint_of(&what, stream.endpoint)?,
                region: stream.region,
                credentials: signing_key(
                    &what,
                    stream.access_key_id,
                    stream.secret_access_key,
                    stream.secret_access_key_file,
                )?,
            };
            streams.insert(name, config);
        }
        let credentials =
            signing_key("kinesis", self.access_key_id, self.secret_access_key, self.secret_access_key_file)?
                .or_else(environment_key);
        Ok(KinesisConfig {
            endpoint: endpoint_of("kinesis", self.endpoint)?,
            region: self.region,
            credentials,
            streams,
        })
    }
}

/// The key a section signs its AWS calls with (`what` names the section in
/// errors), by the same rules as `[s3]`'s credentials; `None` if none is given.
fn signing_key(
    what: &str,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
) -> Result<Option<(String, String)>, ConfigError> {
    let target = RawS3Target { access_key_id, secret_access_key, secret_access_key_file, ..RawS3Target::default() };
    target.validate(what, "").map(|t| t.credentials)
}

/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, when a section gives no key.
fn environment_key() -> Option<(String, String)> {
    let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
    Some((id, std::env::var("AWS_SECRET_ACCESS_KEY").ok()?))
}

/// `[glue]`: where a converting stream's `SchemaConfiguration` finds its table:
/// first among the tables declared here, then through the Glue API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlueConfig {
    /// The Glue API endpoint. Default `https://glue.<region>.amazonaws.com`, the
    /// region being the schema's `Region` or the stream's.
    pub endpoint: Option<String>,
    /// Signing region. Default: as for the endpoint.
    pub region: Option<String>,
    /// Access key id for signing; unset: `AWS_ACCESS_KEY_ID` (and a placeholder
    /// key, which emulators take, without it).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Or a file holding it.
    pub secret_access_key_file: Option<PathBuf>,
    /// Tables for setups without Glue (`[[glue.tables]]`).
    #[serde(default)]
    pub tables: Vec<RawGlueTable>,
}

/// `[[glue.tables]]`: a table as a `SchemaConfiguration` names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlueTable {
    /// `DatabaseName`.
    pub database: String,
    /// `TableName`.
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<RawGlueColumn>,
}

/// One column of a declared table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlueColumn {
    /// Its name.
    pub name: String,
    /// Its Hive type, as Glue spells it (`bigint`, `decimal(10,2)`, `array<string>`).
    #[serde(rename = "type")]
    pub hive_type: String,
}

/// `[glue]`, validated.
#[derive(Clone, Default)]
pub struct GlueConfig {
    /// Endpoint; `None`: AWS's, by region.
    pub endpoint: Option<String>,
    /// Signing region; `None`: the schema's or the stream's.
    pub region: Option<String>,
    /// `(access key id, secret)`; `None`: a placeholder key.
    pub credentials: Option<(String, String)>,
    /// Declared tables by `(database, table)`, both in lower case as Glue keeps them.
    pub tables: std::collections::BTreeMap<(String, String), sluice_convert::TableSchema>,
}

impl std::fmt::Debug for GlueConfig {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlueConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.as_ref().map(|c| &c.0))
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl GlueConfig {
    /// How to call the Glue API for a table in `region` (the schema's `Region`, or
    /// the stream's).
    pub fn client_for(&self, region: &str) -> sluice_aws_call::JsonApiConfig {
        let region = self.region.clone().unwrap_or_else(|| region.to_string());
        let endpoint = self.endpoint.clone().unwrap_or_else(|| format!("https://glue.{region}.amazonaws.com"));
        sluice_aws_call::JsonApiConfig {
            endpoint,
            region,
            credentials: self.credentials.clone(),
            timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl RawGlueConfig {
    fn validate(self) -> Result<GlueConfig, ConfigError> {
        let credentials = signing_key("glue", self.access_key_id, self.secret_access_key, self.secret_access_key_file)?
            .or_else(environment_key);
        let mut tables = std::collections::BTreeMap::new();
        for table in self.tables {
            let key = (table.database.to_lowercase(), table.name.to_lowercase());
            let what = format!("glue.tables {}.{}", table.database, table.name);
            if key.0.is_empty() || key.1.is_empty() {
                return Err(ConfigError::Invalid(format!("{what}: database and name must not be empty")));
            }
            let schema = sluice_convert::TableSchema::declared(
                table.columns.iter().map(|c| (c.name.as_str(), c.hive_type.as_str())),
            )
            .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
            if tables.insert(key, schema).is_some() {
                return Err(ConfigError::Invalid(format!("{what}: declared twice")));
            }
        }
        let endpoint = self.endpoint.map(|e| http_url("glue", &e)).transpose()?;
        Ok(GlueConfig { endpoint, region: self.region, credentials, tables })
    }
}

/// `[iceberg]`: the catalog Iceberg destinations append through.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIcebergConfig {
    /// `sql` (default) or `rest`.
    pub catalog: Option<String>,
    /// The SQL catalog's database as a SQLAlchemy-style URL (what pyiceberg takes):
    /// `sqlite:////abs/path/catalog.db` or `postgresql://user:pass@host/db`; a REST
    /// catalog's base URL (`http(s)://host[/prefix]`, without `/v1`).
    pub uri: Option<String>,
    /// A REST catalog's bearer token.
    pub token: Option<String>,
    /// A REST catalog's OAuth2 client credential, `client_id:client_secret`.
    pub credential: Option<String>,
    /// The catalog name tables are registered under. Default `sluice`.
    pub name: Option<String>,
    /// Where tables created through the catalog go. Default `file://<data-dir>/iceberg`;
    /// `s3://bucket/path` puts them in a bucket that `[s3]` says where to find.
    pub warehouse: Option<String>,
}

impl RawIcebergConfig {
    fn validate(self, data_dir: &Path, s3: &S3Config) -> Result<Option<sluice_iceberg::CatalogConfig>, ConfigError> {
        let Some(uri) = self.uri else {
            return match self.catalog {
                Some(_) => Err(ConfigError::Invalid("iceberg: uri is required".into())),
                None => Ok(None),
            };
        };
        let (kind, warehouse) = match self.catalog.as_deref() {
            None | Some("sql") => {
                if self.token.is_some() || self.credential.is_some() {
                    return Err(ConfigError::Invalid(
                        "iceberg: token and credential are for catalog = \"rest\"".into(),
                    ));
                }
                let uri = sqlx_uri(&uri).ok_or_else(|| {
                    ConfigError::Invalid(format!("iceberg: uri {uri:?} is not a sqlite:/// or postgresql:// URL"))
                })?;
                let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
                let warehouse = self.warehouse.unwrap_or_else(|| format!("file://{}/iceberg", data_dir.display()));
                (sluice_iceberg::CatalogKind::Sql { uri }, Some(warehouse))
            }
            Some("rest") => {
                let uri = http_url("iceberg (catalog = \"rest\")", &uri)?;
                let kind = sluice_iceberg::CatalogKind::Rest { uri, token: self.token, credential: self.credential };
                (kind, self.warehouse)
            }
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "iceberg: catalog {other:?} is not supported; \"sql\" and \"rest\" are"
                )))
            }
        };
        Ok(Some(sluice_iceberg::CatalogConfig {
            kind,
            name: self.name.unwrap_or_else(|| "sluice".into()),
            warehouse,
            // Tables at s3:// locations are written where `[s3]` says their bucket
            // lives (AWS S3 itself when `[s3]` names no endpoint).
            s3: sluice_iceberg::storage::S3Buckets { default: s3.default.clone(), buckets: s3.buckets.clone() },
        }))
    }
}

/// A SQLAlchemy database URL (as pyiceberg's SQL catalog takes it) as sqlx takes
/// it: `sqlite:////abs/x.db` (or `sqlite:///relative.db`) becomes `sqlite:///abs/x.db`
/// (created if missing), `postgresql[+driver]://...` becomes `postgres://...`.
fn sqlx_uri(uri: &str) -> Option<String> {
    if let Some(path) = uri.strip_prefix("sqlite:///") {
        return Some(format!("sqlite://{path}?mode=rwc"));
    }
    let (scheme, rest) = uri.split_once("://")?;
    match scheme.split('+').next()? {
        "postgresql" | "postgres" => Some(format!("postgres://{rest}")),
        _ => None,
    }
}

/// `[http]`: how Sluice connects to HTTP endpoint destinations.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpConfig {
    /// Accept and deliver to `http://` endpoint URLs (Firehose takes only
    /// `https://`). For local development. Default false.
    pub allow_http: Option<bool>,
    /// A PEM file of CA certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long to wait for an endpoint's response, in seconds. Default 180 (Firehose's 3 minutes).
    pub response_timeout_s: Option<u64>,
}

/// `[http]`, validated.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Plain-HTTP endpoints allowed.
    pub allow_http: bool,
    /// Extra trusted CA certificates (PEM), read at start.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Response timeout.
    pub response_timeout_s: u64,
}

/// `[sources]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourcesConfig {
    /// Access key ids whose puts come from CloudWatch Logs (subscription filters):
    /// only they may put to a stream with the Decompression processor. Default none.
    #[serde(default)]
    pub cloudwatch_logs_access_key_ids: Vec<String>,
}

/// `[wal]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWalConfig {
    /// Segment size in MiB. Default 64.
    pub segment_mib_max: Option<u64>,
}

/// `[limits]`: how much undelivered data Sluice holds on disk before it refuses
/// puts with `ServiceUnavailableException` (acknowledged data is never evicted).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitsConfig {
    /// Per stream, in MiB. Default 8192.
    pub buffer_mib_per_stream_max: Option<u64>,
    /// All streams together, in MiB. Default 32768.
    pub buffer_mib_max: Option<u64>,
    /// Dynamic partitioning: partitions per stream in one batch; records of further
    /// partitions go to the error prefix. Default 500 (Firehose's default).
    pub active_partitions_max: Option<usize>,
    /// Open client connections; further ones are closed at once. Default 1024.
    pub connections_max: Option<usize>,
    /// Request line and headers, in KiB; more is answered 431. Default 16.
    pub header_kib_max: Option<usize>,
    /// Seconds a connection may take to send a request's headers, counted from
    /// the end of the previous response (so it is also the keep-alive idle
    /// timeout) or from the TLS handshake's start. Default 30.
    pub header_timeout_s: Option<u64>,
    /// Seconds a request's body may take to arrive. Default 60.
    pub body_timeout_s: Option<u64>,
}

/// `[s3]`: deliver to an S3-compatible service instead of local directories.
/// Credentials come from here or, when unset, from the standard AWS environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
///
/// The fields of [`RawS3Target`] are repeated here rather than flattened in:
/// serde cannot refuse unknown fields of a struct with a flattened member, and a
/// misspelt key must be an error, not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`. Unset: the local directory
    /// `<data_dir>/buckets/NAME`.
    pub endpoint: Option<String>,
    /// Signing region. Default: the server's region.
    pub region: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`), as most S3-compatible servers
    /// expect; `false` for virtual-hosted style (`BUCKET.ENDPOINT/KEY`, AWS S3).
    /// Default true.
    pub path_style: Option<bool>,
    /// Access key id; unset: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Or a file holding it (trailing whitespace ignored).
    pub secret_access_key_file: Option<PathBuf>,
    /// Part size of multipart uploads, in MiB; objects larger than one part are
    /// uploaded in parts. Default 8, at least 5 (S3's minimum part size).
    pub multipart_part_mib: Option<u64>,
    /// Per-bucket overrides (`[s3.buckets.NAME]`); unset fields are taken from `[s3]`.
    #[serde(default)]
    pub buckets: std::collections::BTreeMap<String, RawS3Target>,
}

/// `[s3.buckets.NAME]`: where one bucket lives; the fields of `[s3]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3Target {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`. Unset: the local directory
    /// `<data_dir>/buckets/NAME`.
    pub endpoint: Option<String>,
    /// Signing region. Default: the server's region.
    pub region: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`), as most S3-compatible servers
    /// expect; `false` for virtual-hosted style (`BUCKET.ENDPOINT/KEY`, AWS S3).
    /// Default true.
    pub path_style: Option<bool>,
    /// Access key id; unset: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Or a file holding it (trailing whitespace ignored).
    pub secret_access_key_file: Option<PathBuf>,
}

/// `[delivery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeliveryConfig {
    /// How long a record may wait for a successful delivery, in seconds, counted
    /// from its arrival. Default 86400 (24 hours, as Firehose).
    pub retention_s: Option<u64>,
    /// Caps every stream's `IntervalInSeconds` as delivery applies it (what
    /// `DescribeDeliveryStream` shows does not change): for tests ported from
    /// emulators that deliver at once and poll the bucket for a few seconds.
    /// Default none (Firehose's buffering as configured).
    pub buffer_interval_s_max: Option<u64>,
}

/// `[encryption]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryptionConfig {
    /// File holding the master key used for `AWS_OWNED_CMK` (32 bytes, hex). Default
    /// `<data_dir>/master.key`, generated at first start with owner-only permissions.
    pub master_key_file: Option<PathBuf>,
    /// Customer managed keys, addressed by their KMS key ARN.
    #[serde(default)]
    pub keys: Vec<RawKmsKey>,
}

/// `[[encryption.keys]]`: a local stand-in for a KMS key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKmsKey {
    /// The ARN clients pass as `KeyARN`.
    pub arn: String,
    /// 32 bytes as 64 hex digits.
    pub key_hex: Option<String>,
    /// Or a file holding them.
    pub key_file: Option<PathBuf>,
    /// A disabled key wraps no new data keys but still unwraps old ones. Default true.
    pub enabled: Option<bool>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Default region.
    pub region: String,
    /// Account id.
    pub account_id: String,
    /// Duration of CREATING / ENABLING / DISABLING.
    pub transition_ms: u64,
    /// Declared buckets and streams (see `api::declared`).
    pub streams_file: Option<PathBuf>,
    /// Segment size.
    pub segment_bytes_max: u64,
    /// Undelivered bytes held per stream before puts are refused.
    pub buffer_bytes_per_stream_max: u64,
    /// Undelivered bytes held in all before puts are refused.
    pub buffer_bytes_max: u64,
    /// Partitions per stream in one batch.
    pub active_partitions_max: usize,
    /// Master key file.
    pub master_key_file: PathBuf,
    /// Customer managed keys.
    pub kms_keys: Vec<RawKmsKey>,
    /// Where buckets live.
    pub s3: S3Config,
    /// How long delivery retries a record before giving it up, in milliseconds.
    pub retention_ms: u64,
    /// The longest buffering interval delivery applies, in seconds (`None`: each
    /// stream's own).
    pub buffer_interval_s_max: Option<u64>,
    /// Access key ids that put as CloudWatch Logs.
    pub cloudwatch_logs_access_key_ids: Vec<String>,
    /// HTTP endpoint delivery.
    pub http: HttpConfig,
    /// Lambda invocations.
    pub lambda: LambdaConfig,
    /// The Kinesis API, for `KinesisStreamAsSource` streams.
    pub kinesis: KinesisConfig,
    /// Tables for format conversion.
    pub glue: GlueConfig,
    /// The Iceberg catalog, if configured.
    pub iceberg: Option<sluice_iceberg::CatalogConfig>,
    /// Access keys; empty: requests are not verified.
    pub auth_keys: Vec<crate::auth::AccessKey>,
    /// Regions credential scopes may name; empty: any.
    pub auth_regions: std::collections::BTreeSet<String>,
    /// With no keys, serve a non-loopback address anyway.
    pub allow_anonymous: bool,
    /// With keys, allow the test controls to keys whose operations include them.
    pub admin_enabled: bool,
    /// Per-stream throughput limits.
    pub throttle: ThrottleConfig,
    /// `(certificate chain, private key)` PEM files: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds on client connections.
    pub connections: ConnectionLimits,
    /// Cluster mode on NATS JetStream; `None`: the embedded log (one node).
    pub cluster: Option<ClusterConfig>,
}

/// What one client connection may hold, and for how long (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections.
    pub connections_max: usize,
    /// Request line and headers.
    pub header_bytes_max: usize,
    /// Headers (and TLS handshake, and keep-alive idleness) must arrive within this.
    pub header_timeout: std::time::Duration,
    /// A body must arrive within this.
    pub body_timeout: std::time::Duration,
}

/// Where buckets live, validated.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// For buckets without an override.
    pub default: S3Target,
    /// Per-bucket overrides, already merged with the default.
    pub buckets: std::collections::BTreeMap<String, S3Target>,
    /// Part size of multipart uploads.
    pub multipart_part_bytes: u64,
}

impl Config {
    /// Where a client on this machine reaches the server: its listen address, on
    /// loopback when it listens on every address.
    pub fn local_endpoint(&self) -> String {
        let mut address = self.listen;
        if address.ip().is_unspecified() {
            address.set_ip(match address {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{address}")
    }

    /// The directory local buckets live in: `<data-dir>/buckets`, in cluster mode
    /// the one every node shares (`None` when there is none).
    pub fn local_buckets_root(&self) -> Option<PathBuf> {
        match &self.cluster {
            Some(cluster) => cluster.shared_buckets_dir.clone(),
            None => Some(self.data_dir.join("buckets")),
        }
    }
}

impl S3Config {
    /// Where `bucket` lives.
    pub fn target(&self, bucket: &str) -> &S3Target {
        self.buckets.get(bucket).unwrap_or(&self.default)
    }
}

/// One bucket's location, validated. For deliveries, no `endpoint` means the
/// local directory `<data_dir>/buckets/NAME`.
pub type S3Target = sluice_aws_call::S3Place;

impl RawS3Target {
    /// Fields set here win over `base`'s. Credentials go together: a bucket that
    /// names any of its own takes none from `base`.
    fn over(&self, base: &RawS3Target) -> RawS3Target {
        let own_credentials =
            self.access_key_id.is_some() || self.secret_access_key.is_some() || self.secret_access_key_file.is_some();
        let credentials = if own_credentials { self } else { base };
        RawS3Target {
            endpoint: self.endpoint.clone().or_else(|| base.endpoint.clone()),
            region: self.region.clone().or_else(|| base.region.clone()),
            path_style: self.path_style.or(base.path_style),
            access_key_id: credentials.access_key_id.clone(),
            secret_access_key: credentials.secret_access_key.clone(),
            secret_access_key_file: credentials.secret_access_key_file.clone(),
        }
    }

    fn validate(self, what: &str, default_region: &str) -> Result<S3Target, ConfigError> {
        if let Some(endpoint) = &self.endpoint {
            http_url(what, endpoint)?;
        }
        let secret = match (&self.secret_access_key, &self.secret_access_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(format!(
                    "{what}: give secret_access_key or secret_access_key_file, not both"
                )))
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?
                    .trim_end()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let credentials = match (self.access_key_id, secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(format!("{what}: access_key_id and a secret access key go together")))
            }
        };
        Ok(S3Target {
            endpoint: self.endpoint,
            region: self.region.unwrap_or_else(|| default_region.to_string()),
            path_style: self.path_style.unwrap_or(true),
            credentials,
        })
    }
}

impl RawLambdaConfig {
    fn validate(self, server_region: &str) -> Result<LambdaConfig, ConfigError> {
        let region = self.region.unwrap_or_else(|| server_region.to_string());
        let endpoint = self.endpoint.unwrap_or_else(|| format!("https://lambda.{region}.amazonaws.com"));
        let endpoint = http_url("lambda", &endpoint)?;
        let mut functions = std::collections::BTreeMap::new();
        for (name, function) in self.functions {
            let what = format!("lambda.functions.{name}");
            let function_endpoint = http_url(&what, function.endpoint.as_deref().unwrap_or(&endpoint))?;
            functions.insert(name, (function_endpoint, function.region.unwrap_or_else(|| region.clone())));
        }
        let credentials =
            signing_key("lambda", self.access_key_id, self.secret_access_key, self.secret_access_key_file)?
                .or_else(environment_key);
        Ok(LambdaConfig { endpoint, region, credentials, timeout_s: self.timeout_s.unwrap_or(300).max(1), functions })
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl RawConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Validates, filling in defaults. `listen` and `data_dir` from the command line
    /// or the environment win over the file.
    pub fn into_config(
        self,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        s3_endpoint: Option<String>,
    ) -> Result<Config, ConfigError> {
        self.into_config_with(listen, data_dir, s3_endpoint, None)
    }

    /// [`RawConfig::into_config`], with `--jetstream` servers (which select the
    /// JetStream backend).
    pub fn into_config_with(
        self,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        s3_endpoint: Option<String>,
        jetstream_servers: Option<Vec<String>>,
    ) -> Result<Config, ConfigError> {
        let cluster = match (self.log.backend.as_deref(), jetstream_servers) {
            (None | Some("embedded"), None) => None,
            (None | Some("jetstream"), Some(servers)) => Some(self.jetstream.validate(Some(servers))?),
            (Some("jetstream"), None) => Some(self.jetstream.validate(None)?),
            (Some("embedded"), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "--jetstream selects the jetstream backend; the config says embedded".into(),
                ))
            }
            (Some(other), _) => {
                return Err(ConfigError::Invalid(format!("log.backend must be embedded or jetstream, got {other:?}")))
            }
        };
        let data_dir = data_dir.or(self.data_dir).unwrap_or_else(|| PathBuf::from("./sluice-data"));
        let account_id = self.account_id.unwrap_or_else(|| "000000000000".into());
        if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid(format!("account_id must be 12 digits, got {account_id:?}")));
        }
        let segment_mib = self.wal.segment_mib_max.unwrap_or(64);
        if !(1..=1024).contains(&segment_mib) {
            return Err(ConfigError::Invalid(format!("wal.segment_mib_max must be 1..=1024, got {segment_mib}")));
        }
        let region = self.region.unwrap_or_else(|| "us-east-1".into());
        let default_target = RawS3Target {
            endpoint: s3_endpoint.or(self.s3.endpoint),
            region: self.s3.region,
            path_style: self.s3.path_style,
            access_key_id: self.s3.access_key_id,
            secret_access_key: self.s3.secret_access_key,
            secret_access_key_file: self.s3.secret_access_key_file,
        };
        let mut buckets = std::collections::BTreeMap::new();
        for (name, target) in &self.s3.buckets {
            let what = format!("s3.buckets.{name}");
            buckets.insert(name.clone(), target.over(&default_target).validate(&what, &region)?);
        }
        let multipart_part_mib = self.s3.multipart_part_mib.unwrap_or(8);
        if !(5..=5120).contains(&multipart_part_mib) {
            return Err(ConfigError::Invalid(format!(
                "s3.multipart_part_mib must be 5..=5120, got {multipart_part_mib}"
            )));
        }
        let s3 = S3Config {
            default: default_target.validate("s3", &region)?,
            buckets,
            multipart_part_bytes: multipart_part_mib << 20,
        };
        let extra_ca_pem = match &self.http.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?),
            None => None,
        };
        let http = HttpConfig {
            allow_http: self.http.allow_http.unwrap_or(false),
            extra_ca_pem,
            response_timeout_s: self.http.response_timeout_s.unwrap_or(180).max(1),
        };
        let lambda = self.lambda.validate(&region)?;
        let kinesis = self.kinesis.validate()?;
        let glue = self.glue.validate()?;
        let iceberg = self.iceberg.validate(&data_dir, &s3)?;
        let mut auth_keys = Vec::new();
        for key in self.auth.keys {
            let what = format!("auth.keys {:?}", key.access_key_id);
            let secret = match (key.secret_access_key, key.secret_access_key_file, key.secret_access_key_env) {
                (Some(secret), None, None) => secret,
                (None, Some(path), None) => std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?
                    .trim_end()
                    .to_string(),
                (None, None, Some(var)) => std::env::var(&var)
                    .map_err(|_| ConfigError::Invalid(format!("{what}: environment variable {var} is not set")))?,
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: give exactly one of secret_access_key, secret_access_key_file, secret_access_key_env"
                    )))
                }
            };
            if let Some(unknown) =
                key.operations.iter().find(|o| !sluice_protocol::OPERATION_NAMES.contains(&o.as_str()))
            {
                return Err(ConfigError::Invalid(format!("{what}: unknown operation {unknown}")));
            }
            if key.access_key_id.is_empty()
                || secret.is_empty()
                || auth_keys.iter().any(|k: &crate::auth::AccessKey| k.id == key.access_key_id)
            {
                return Err(ConfigError::Invalid(format!("{what}: ids and secrets must be non-empty and ids unique")));
            }
            auth_keys.push(crate::auth::AccessKey {
                id: key.access_key_id,
                secret,
                operations: key.operations.into_iter().collect(),
                streams: key.streams.into_iter().collect(),
                derived: Default::default(),
            });
        }
        let firehose_defaults =
            ThrottleLimits { requests_per_s: 2000.0, records_per_s: 500_000.0, bytes_per_s: 5.0 * (1 << 20) as f64 };
        let raw_defaults = RawThrottleLimits {
            requests_per_s: self.throttle.requests_per_s,
            records_per_s: self.throttle.records_per_s,
            mib_per_s: self.throttle.mib_per_s,
        };
        let default_limits = raw_defaults.over(firehose_defaults, "throttle")?;
        let mut stream_limits = std::collections::BTreeMap::new();
        for (name, limits) in self.throttle.streams {
            let what = format!("throttle.streams.{name}");
            stream_limits.insert(name, limits.over(default_limits, &what)?);
        }
        let throttle = ThrottleConfig {
            enabled: self.throttle.enabled.unwrap_or(true),
            default: default_limits,
            streams: stream_limits,
        };
        let tls = match (self.tls.cert_file, self.tls.key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("tls: give both cert_file and key_file".into())),
        };
        let limits = &self.limits;
        let connections = ConnectionLimits {
            connections_max: limits.connections_max.unwrap_or(1024),
            header_bytes_max: limits.header_kib_max.unwrap_or(16) << 10,
            header_timeout: std::time::Duration::from_secs(limits.header_timeout_s.unwrap_or(30)),
            body_timeout: std::time::Duration::from_secs(limits.body_timeout_s.unwrap_or(60)),
        };
        if connections.connections_max == 0
            || !(8..=1024).contains(&(connections.header_bytes_max >> 10))
            || connections.header_timeout.is_zero()
            || connections.body_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "limits: connections_max and the timeouts must be at least 1, header_kib_max 8 to 1024".into(),
            ));
        }
        Ok(Config {
            cluster,
            tls,
            connections,
            throttle,
            auth_keys,
            auth_regions: self.auth.regions.into_iter().collect(),
            allow_anonymous: self.auth.allow_anonymous.unwrap_or(false),
            admin_enabled: self.admin.enabled.unwrap_or(false),
            lambda,
            kinesis,
            glue,
            iceberg,
            http,
            s3,
            retention_ms: self.delivery.retention_s.unwrap_or(86_400) * 1000,
            buffer_interval_s_max: self.delivery.buffer_interval_s_max,
            listen: listen.or(self.listen).unwrap_or_else(|| "127.0.0.1:4573".parse().expect("valid address")),
            master_key_file: self.encryption.master_key_file.unwrap_or_else(|| data_dir.join("master.key")),
            data_dir,
            region,
            account_id,
            transition_ms: self.transition_ms.unwrap_or(250),
            streams_file: self.streams_file,
            segment_bytes_max: segment_mib << 20,
            buffer_bytes_per_stream_max: self.limits.buffer_mib_per_stream_max.unwrap_or(8192) << 20,
            buffer_bytes_max: self.limits.buffer_mib_max.unwrap_or(32768) << 20,
            active_partitions_max: self.limits.active_partitions_max.unwrap_or(500).max(1),
            kms_keys: self.encryption.keys,
            cloudwatch_logs_access_key_ids: self.sources.cloudwatch_logs_access_key_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(toml).map_err(|source| ConfigError::Parse { path: "t".into(), source })?;
        raw.into_config(None, Some("/tmp/unused".into()), None)
    }

    #[test]
    fn buckets_inherit_s3_settings_and_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let c = config(&format!(
            "region = \"eu-west-1\"\n[s3]\naccess_key_id = \"id\"\nsecret_access_key = \"s\"\n\
             [s3.buckets.remote]\nendpoint = \"http://127.0.0.1:9000\"\npath_style = false\n\
             [s3.buckets.other]\nendpoint = \"https://x\"\nregion = \"us-west-2\"\naccess_key_id = \"id2\"\n\
             secret_access_key_file = {:?}\n",
            secret.display().to_string()
        ))
        .unwrap();
        let local = c.s3.target("anything");
        assert_eq!(local.endpoint, None, "no endpoint: local directories");
        assert_eq!(local.region, "eu-west-1", "the server's region by default");
        let remote = c.s3.target("remote");
        assert_eq!(remote.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(!remote.path_style);
        assert_eq!(remote.credentials, Some(("id".into(), "s".into())), "inherited from [s3]");
        let other = c.s3.target("other");
        assert_eq!((other.region.as_str(), other.path_style), ("us-west-2", true));
        assert_eq!(other.credentials, Some(("id2".into(), "from-file".into())));
        assert!(!format!("{other:?}").contains("from-file"), "secrets stay out of logs");
        assert_eq!(c.s3.multipart_part_bytes, 8 << 20);
    }

    #[test]
    fn the_iceberg_catalog_is_sql_or_rest_and_s3_tables_use_the_s3_settings() {
        use sluice_iceberg::CatalogKind;
        let sql = config("[iceberg]\nuri = \"sqlite:////abs/catalog.db\"\n").unwrap().iceberg.unwrap();
        assert_eq!(sql.kind, CatalogKind::Sql { uri: "sqlite:///abs/catalog.db?mode=rwc".into() });
        assert_eq!(sql.warehouse.as_deref(), Some("file:///tmp/unused/iceberg"));
        let rest = config(
            "[s3]\nendpoint = \"http://s3:9000\"\naccess_key_id = \"id\"\nsecret_access_key = \"s\"\n\
             [s3.buckets.other]\nendpoint = \"http://other:9000\"\n\
             [iceberg]\ncatalog = \"rest\"\nuri = \"http://catalog:8181/api/\"\ntoken = \"t\"\n",
        )
        .unwrap()
        .iceberg
        .unwrap();
        let uri = "http://catalog:8181/api".to_string();
        assert_eq!(rest.kind, CatalogKind::Rest { uri, token: Some("t".into()), credential: None });
        assert_eq!(rest.warehouse, None, "a REST catalog's own default warehouse");
        assert_eq!(rest.s3.default.endpoint.as_deref(), Some("http://s3:9000"));
        assert_eq!(rest.s3.default.credentials, Some(("id".into(), "s".into())));
        assert_eq!(rest.s3.buckets["other"].endpoint.as_deref(), Some("http://other:9000"));
        assert!(!format!("{rest:?}").contains("\"t\""), "the token is not logged");
        for bad in [
            "[iceberg]\ncatalog = \"rest\"\nuri = \"catalog:8181\"",
            "[iceberg]\ncatalog = \"hive\"\nuri = \"thrift://x\"",
            "[iceberg]\nuri = \"sqlite:////abs/catalog.db\"\ntoken = \"t\"",
        ] {
            assert!(config(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn bad_s3_settings_are_refused_at_start() {
        for bad in [
            "[s3]\nendpoint = \"ftp://x\"",
            "[s3]\naccess_key_id = \"id\"",
            "[s3]\nsecret_access_key = \"s\"",
            "[s3]\naccess_key_id = \"id\"\nsecret_access_key = \"s\"\nsecret_access_key_file = \"/f\"",
            "[s3]\nmultipart_part_mib = 4",
            "[s3.buckets.b]\nendpoint = \"x\"",
            "[s3.buckets.b]\naccess_key_id = \"id\"\nsecret_access_key_file = \"/nonexistent/secret\"",
            "[s3]\nendpont = \"http://x\"",
        ] {
            assert!(config(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn the_jetstream_backend_is_chosen_by_config_or_flag_and_validated() {
        assert!(config("").unwrap().cluster.is_none(), "embedded by default");
        let c = config("[log]\nbackend = \"jetstream\"\n[jetstream]\nservers = [\"nats://a:4222\"]\nnode_id = \"n1\"\nreplicas = 1\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (c.options.servers.clone(), c.node_id.as_str(), c.options.replicas),
            (vec!["nats://a:4222".to_string()], "n1", 1)
        );
        assert_eq!((c.lease.as_secs(), c.options.prefix.as_str()), (10, "SLUICE"));
        let raw: RawConfig = toml::from_str("").unwrap();
        let flag =
            raw.into_config_with(None, Some("/tmp/unused".into()), None, Some(vec!["nats://b:4222".into()])).unwrap();
        assert_eq!(flag.cluster.unwrap().options.servers, vec!["nats://b:4222".to_string()]);
        for bad in [
            "[log]\nbackend = \"kafka\"",
            "[log]\nbackend = \"jetstream\"\n[jetstream]\nreplicas = 0",
            "[log]\nbackend = \"jetstream\"\n[jetstream]\nservers = [\"host:4222\"]",
            "[log]\nbackend = \"jetstream\"\n[jetstream]\nuser = \"u\"",
            "[log]\nbackend = \"jetstream\"\n[jetstream]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"",
            "[log]\nbackend = \"jetstream\"\n[jetstream]\nprefix = \"a.b\"",
            "[jetstream]\nreplica = 3",
        ] {
            assert!(config(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let c = config("").unwrap().connections;
        assert_eq!((c.connections_max, c.header_bytes_max), (1024, 16 << 10));
        assert_eq!((c.header_timeout.as_secs(), c.body_timeout.as_secs()), (30, 60));
        let c = config("[limits]\nconnections_max = 4\nheader_kib_max = 8\nheader_timeout_s = 1\nbody_timeout_s = 2")
            .unwrap()
            .connections;
        assert_eq!((c.connections_max, c.header_bytes_max, c.header_timeout.as_secs()), (4, 8 << 10, 1));
        for bad in ["connections_max = 0", "header_kib_max = 4", "header_timeout_s = 0", "body_timeout_s = 0"] {
            assert!(config(&format!("[limits]\n{bad}")).is_err(), "accepted: {bad}");
        }
    }
}
