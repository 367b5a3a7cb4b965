//! Destination configurations: which kinds exist, how a stored configuration is
//! described (with the defaults Firehose fills in), and how an UpdateDestination
//! merges into it. Configurations are kept as the validated JSON objects the client
//! sent, so every member round-trips through Describe even before Sluice acts on it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::processing::ProcessingChain;
use crate::ParseOptions;

/// Every destination kind of the Firehose API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestinationKind {
    /// `ExtendedS3DestinationConfiguration`.
    ExtendedS3,
    /// `S3DestinationConfiguration` (deprecated by AWS, still accepted).
    S3,
    /// `HttpEndpointDestinationConfiguration`.
    HttpEndpoint,
    /// Not delivered by Sluice.
    Redshift,
    /// Not delivered by Sluice.
    Elasticsearch,
    /// Not delivered by Sluice.
    Amazonopensearchservice,
    /// Not delivered by Sluice.
    AmazonOpenSearchServerless,
    /// Not delivered by Sluice.
    Splunk,
    /// Not delivered by Sluice.
    Snowflake,
    /// `IcebergDestinationConfiguration`: appended to Apache Iceberg tables.
    Iceberg,
}

impl DestinationKind {
    /// All kinds, in the order their members are checked.
    pub const ALL: [DestinationKind; 10] = [
        DestinationKind::ExtendedS3,
        DestinationKind::S3,
        DestinationKind::HttpEndpoint,
        DestinationKind::Redshift,
        DestinationKind::Elasticsearch,
        DestinationKind::Amazonopensearchservice,
        DestinationKind::AmazonOpenSearchServerless,
        DestinationKind::Splunk,
        DestinationKind::Snowflake,
        DestinationKind::Iceberg,
    ];

    /// The name used in member names (`<name>DestinationConfiguration`).
    pub fn name(self) -> &'static str {
        match self {
            DestinationKind::ExtendedS3 => "ExtendedS3",
            DestinationKind::S3 => "S3",
            DestinationKind::HttpEndpoint => "HttpEndpoint",
            DestinationKind::Redshift => "Redshift",
            DestinationKind::Elasticsearch => "Elasticsearch",
            DestinationKind::Amazonopensearchservice => "Amazonopensearchservice",
            DestinationKind::AmazonOpenSearchServerless => "AmazonOpenSearchServerless",
            DestinationKind::Splunk => "Splunk",
            DestinationKind::Snowflake => "Snowflake",
            DestinationKind::Iceberg => "Iceberg",
        }
    }

    /// Whether Sluice delivers to this kind. Others are refused at creation rather
    /// than accepted and silently dropped.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            DestinationKind::ExtendedS3
                | DestinationKind::S3
                | DestinationKind::HttpEndpoint
                | DestinationKind::Iceberg
        )
    }

    pub(crate) fn config_member(self) -> String {
        format!("{}DestinationConfiguration", self.name())
    }

    pub(crate) fn update_member(self) -> String {
        format!("{}DestinationUpdate", self.name())
    }
}

/// A stored destination: its kind and the configuration as accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    /// What kind of destination.
    pub kind: DestinationKind,
    /// The configuration object, validated against the model.
    pub config: Map<String, Value>,
}

/// A validated `...DestinationUpdate` object from UpdateDestination.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationUpdate {
    /// The kind the update is for.
    pub kind: DestinationKind,
    pub(crate) update: Map<String, Value>,
}

/// A destination description ready to be serialised inside `Destinations`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationDescription(Map<String, Value>);

fn with_default(object: &mut Map<String, Value>, key: &str, default: Value) {
    object.entry(key.to_string()).or_insert(default);
}

/// The `S3DestinationDescription` of a plain S3 configuration, defaults filled in.
fn describe_s3(config: &Map<String, Value>) -> Map<String, Value> {
    let mut d = Map::new();
    for key in ["RoleARN", "BucketARN", "Prefix", "ErrorOutputPrefix", "BufferingHints", "CompressionFormat"] {
        if let Some(v) = config.get(key) {
            d.insert(key.into(), v.clone());
        }
    }
    for key in ["EncryptionConfiguration", "CloudWatchLoggingOptions"] {
        if let Some(v) = config.get(key) {
            d.insert(key.into(), v.clone());
        }
    }
    with_default(&mut d, "BufferingHints", json!({"SizeInMBs": 5, "IntervalInSeconds": 300}));
    with_default(&mut d, "CompressionFormat", json!("UNCOMPRESSED"));
    with_default(&mut d, "EncryptionConfiguration", json!({"NoEncryptionConfig": "NoEncryption"}));
    with_default(&mut d, "CloudWatchLoggingOptions", json!({"Enabled": false}));
    with_default(&mut d, "Prefix", json!(""));
    d
}

/// What delivery needs from an S3 (or ExtendedS3) configuration, with Firehose's
/// defaults applied: a typed view, so delivery never reads JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket name (from `arn:aws:s3:::NAME`).
    pub bucket: String,
    /// `Prefix` (empty: the default time path).
    pub prefix: String,
    /// `ErrorOutputPrefix`, if set.
    pub error_output_prefix: Option<String>,
    /// `BufferingHints.SizeInMBs` (default 5).
    pub buffer_mib: u64,
    /// `BufferingHints.IntervalInSeconds` (default 300).
    pub buffer_interval_s: u64,
    /// `CompressionFormat` as in the API (default `UNCOMPRESSED`).
    pub compression: String,
    /// `FileExtension`, if set (overrides the compression's extension).
    pub file_extension: Option<String>,
    /// `.parquet` or `.orc` with format conversion: the data objects' extension
    /// when `FileExtension` is not set.
    pub format_extension: Option<&'static str>,
    /// `CustomTimeZone`, if set.
    pub custom_time_zone: Option<String>,
    /// `DynamicPartitioningConfiguration.Enabled`.
    pub dynamic_partitioning: bool,
}

impl S3Settings {
    /// Reads an `S3DestinationConfiguration`-shaped object (ExtendedS3 members are
    /// read when present). `None` without a valid `BucketARN`.
    pub fn from_config(config: &Map<String, Value>) -> Option<S3Settings> {
        let text = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_string);
        let hint = |key: &str| config.get("BufferingHints").and_then(|h| h.get(key)).and_then(Value::as_u64);
        // A converting stream's buffer is 128 MiB unless given, as on Firehose.
        let size_default =
            if crate::conversion::enabled(config) { crate::conversion::CONVERSION_BUFFER_MIB_DEFAULT } else { 5 };
        Some(S3Settings {
            bucket: text("BucketARN")?.strip_prefix("arn:aws:s3:::")?.to_string(),
            prefix: text("Prefix").unwrap_or_default(),
            error_output_prefix: text("ErrorOutputPrefix").filter(|p| !p.is_empty()),
            buffer_mib: hint("SizeInMBs").unwrap_or(size_default),
            buffer_interval_s: hint("IntervalInSeconds").unwrap_or(300),
            compression: text("CompressionFormat").unwrap_or_else(|| "UNCOMPRESSED".into()),
            file_extension: text("FileExtension").filter(|e| !e.is_empty()),
            format_extension: crate::conversion::format_extension(config),
            custom_time_zone: text("CustomTimeZone").filter(|z| !z.is_empty()),
            dynamic_partitioning: config
                .get("DynamicPartitioningConfiguration")
                .and_then(|d| d.get("Enabled"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// What delivery needs from an `HttpEndpointDestinationConfiguration`, with
/// Firehose's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `EndpointConfiguration.Url`, posted to unchanged.
    pub url: String,
    /// `EndpointConfiguration.AccessKey`, sent verbatim as `X-Amz-Firehose-Access-Key`.
    pub access_key: Option<String>,
    /// `RequestConfiguration.CommonAttributes`, in the order given.
    pub common_attributes: Vec<(String, String)>,
    /// `RequestConfiguration.ContentEncoding` is `GZIP`.
    pub gzip: bool,
    /// `RetryOptions.DurationInSeconds` (default 300).
    pub retry_duration_s: u64,
    /// `BufferingHints.SizeInMBs` (default 5).
    pub buffer_mib: u64,
    /// `BufferingHints.IntervalInSeconds` (default 300).
    pub buffer_interval_s: u64,
    /// `S3Configuration`: where failed data (and with `AllData`, every record) goes.
    pub s3: S3Settings,
}

impl HttpSettings {
    /// Reads an `HttpEndpointDestinationConfiguration`; `None` without a URL or a
    /// valid `S3Configuration`.
    pub fn from_config(config: &Map<String, Value>) -> Option<HttpSettings> {
        let endpoint = config.get("EndpointConfiguration")?;
        let request = config.get("RequestConfiguration");
        let hint = |key: &str| config.get("BufferingHints").and_then(|h| h.get(key)).and_then(Value::as_u64);
        let common_attributes = request
            .and_then(|r| r.get("CommonAttributes"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let name = a.get("AttributeName")?.as_str()?;
                let value = a.get("AttributeValue")?.as_str()?;
                Some((name.to_string(), value.to_string()))
            })
            .collect();
        Some(HttpSettings {
            url: endpoint.get("Url")?.as_str()?.to_string(),
            access_key: endpoint.get("AccessKey").and_then(Value::as_str).map(str::to_string),
            common_attributes,
            gzip: request.and_then(|r| r.get("ContentEncoding")).and_then(Value::as_str) == Some("GZIP"),
            retry_duration_s: config
                .get("RetryOptions")
                .and_then(|r| r.get("DurationInSeconds"))
                .and_then(Value::as_u64)
                .unwrap_or(300),
            buffer_mib: hint("SizeInMBs").unwrap_or(5),
            buffer_interval_s: hint("IntervalInSeconds").unwrap_or(300),
            s3: S3Settings::from_config(config.get("S3Configuration")?.as_object()?)?,
        })
    }
}

/// What delivery needs from an `IcebergDestinationConfiguration`, with Firehose's
/// defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergSettings {
    /// `DestinationTableConfigurationList`: `(database, table)` of each table.
    pub tables: Vec<(String, String)>,
    /// `BufferingHints.SizeInMBs` (default 5).
    pub buffer_mib: u64,
    /// `BufferingHints.IntervalInSeconds` (default 300).
    pub buffer_interval_s: u64,
    /// `RetryOptions.DurationInSeconds` (default 300).
    pub retry_duration_s: u64,
    /// `S3Configuration`: where records that fail go.
    pub s3: S3Settings,
}

impl IcebergSettings {
    /// Reads an `IcebergDestinationConfiguration`; `None` without a valid
    /// `S3Configuration`.
    pub fn from_config(config: &Map<String, Value>) -> Option<IcebergSettings> {
        let hint = |key: &str| config.get("BufferingHints").and_then(|h| h.get(key)).and_then(Value::as_u64);
        let tables = config
            .get("DestinationTableConfigurationList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let database = t.get("DestinationDatabaseName")?.as_str()?;
                Some((database.to_string(), t.get("DestinationTableName")?.as_str()?.to_string()))
            })
            .collect();
        Some(IcebergSettings {
            tables,
            buffer_mib: hint("SizeInMBs").unwrap_or(5),
            buffer_interval_s: hint("IntervalInSeconds").unwrap_or(300),
            retry_duration_s: config
                .get("RetryOptions")
                .and_then(|r| r.get("DurationInSeconds"))
                .and_then(Value::as_u64)
                .unwrap_or(300),
            s3: S3Settings::from_config(config.get("S3Configuration")?.as_object()?)?,
        })
    }
}

impl Destination {
    /// Where an Iceberg destination delivers; `None` for other kinds.
    pub fn iceberg_settings(&self) -> Option<IcebergSettings> {
        match self.kind {
            DestinationKind::Iceberg => IcebergSettings::from_config(&self.config),
            _ => None,
        }
    }

    /// Where an HTTP endpoint destination delivers; `None` for other kinds.
    pub fn http_settings(&self) -> Option<HttpSettings> {
        match self.kind {
            DestinationKind::HttpEndpoint => HttpSettings::from_config(&self.config),
            _ => None,
        }
    }

    /// The format conversion of an ExtendedS3 destination, if enabled. The
    /// configuration was validated when accepted.
    pub fn conversion(&self) -> Option<crate::conversion::ConversionSettings> {
        match self.kind {
            DestinationKind::ExtendedS3 => crate::conversion::settings(&self.config).ok().flatten(),
            _ => None,
        }
    }

    /// Where an S3 or ExtendedS3 destination delivers; `None` for other kinds.
    pub fn s3_settings(&self) -> Option<S3Settings> {
        match self.kind {
            DestinationKind::ExtendedS3 | DestinationKind::S3 => S3Settings::from_config(&self.config),
            _ => None,
        }
    }

    /// The processors the destination runs; `None` without (or with a disabled)
    /// `ProcessingConfiguration`. The configuration was validated when accepted.
    pub fn processing(&self) -> Option<ProcessingChain> {
        // MetadataExtraction feeds dynamic partitioning, or an Iceberg stream's routing.
        let metadata =
            self.kind == DestinationKind::Iceberg || self.s3_settings().is_some_and(|s| s.dynamic_partitioning);
        match self.kind {
            DestinationKind::ExtendedS3 | DestinationKind::HttpEndpoint | DestinationKind::Iceberg => {
                ProcessingChain::from_config(&self.config, metadata).ok().flatten()
            }
            _ => None,
        }
    }

    /// Where every source record is also delivered: an ExtendedS3 destination's
    /// `S3BackupConfiguration` with `S3BackupMode` `Enabled`, or an HTTP endpoint's
    /// `S3Configuration` with `S3BackupMode` `AllData`. `None` otherwise.
    pub fn backup_s3_settings(&self) -> Option<S3Settings> {
        let mode = self.config.get("S3BackupMode").and_then(Value::as_str);
        let member = match (self.kind, mode) {
            (DestinationKind::ExtendedS3, Some("Enabled")) => "S3BackupConfiguration",
            (DestinationKind::HttpEndpoint, Some("AllData")) => "S3Configuration",
            _ => return None,
        };
        S3Settings::from_config(self.config.get(member)?.as_object()?)
    }

    /// Every bucket the destination may write to: its own, its backup's, and an
    /// HTTP endpoint's `S3Configuration` (failed records go there in any mode).
    pub fn buckets(&self) -> Vec<String> {
        let mut buckets: Vec<String> =
            self.s3_settings().into_iter().chain(self.backup_s3_settings()).map(|s| s.bucket).collect();
        if matches!(self.kind, DestinationKind::HttpEndpoint | DestinationKind::Iceberg) {
            let failed =
                self.config.get("S3Configuration").and_then(Value::as_object).and_then(S3Settings::from_config);
            buckets.extend(failed.map(|s| s.bucket));
        }
        buckets.sort();
        buckets.dedup();
        buckets
    }

    /// The description with Firehose's defaults filled in. An S3 or ExtendedS3
    /// destination is described both ways, as Firehose does.
    pub fn describe(&self, destination_id: &str) -> DestinationDescription {
        let mut out = Map::new();
        out.insert("DestinationId".into(), json!(destination_id));
        match self.kind {
            DestinationKind::ExtendedS3 | DestinationKind::S3 => {
                let mut extended = self.config.clone();
                if crate::conversion::enabled(&extended) {
                    let size = crate::conversion::CONVERSION_BUFFER_MIB_DEFAULT;
                    with_default(&mut extended, "BufferingHints", json!({"SizeInMBs": size, "IntervalInSeconds": 300}));
                }
                if let Some(Value::Object(partitioning)) = extended.get_mut("DynamicPartitioningConfiguration") {
                    // Firehose describes the retry duration it uses when none was given.
                    if partitioning.get("Enabled") == Some(&json!(true)) {
                        with_default(partitioning, "RetryOptions", json!({"DurationInSeconds": 300}));
                    }
                }
                if let Some(backup) = extended.remove("S3BackupConfiguration") {
                    let backup = backup.as_object().map(describe_s3).unwrap_or_default();
                    extended.insert("S3BackupDescription".into(), Value::Object(backup));
                }
                let s3 = describe_s3(&extended);
                for (k, v) in &s3 {
                    extended.entry(k.clone()).or_insert(v.clone());
                }
                with_default(&mut extended, "S3BackupMode", json!("Disabled"));
                out.insert("S3DestinationDescription".into(), Value::Object(s3));
                out.insert("ExtendedS3DestinationDescription".into(), Value::Object(extended));
            }
            DestinationKind::HttpEndpoint => {
                let mut d = self.config.clone();
                if let Some(Value::Object(endpoint)) = d.get_mut("EndpointConfiguration") {
                    // The access key is a secret: Firehose never returns it.
                    endpoint.remove("AccessKey");
                }
                if let Some(s3) = d.remove("S3Configuration") {
                    let s3 = s3.as_object().map(describe_s3).unwrap_or_default();
                    d.insert("S3DestinationDescription".into(), Value::Object(s3));
                }
                with_default(&mut d, "BufferingHints", json!({"SizeInMBs": 5, "IntervalInSeconds": 300}));
                with_default(&mut d, "CloudWatchLoggingOptions", json!({"Enabled": false}));
                with_default(&mut d, "RequestConfiguration", json!({"ContentEncoding": "NONE"}));
                with_default(&mut d, "RetryOptions", json!({"DurationInSeconds": 300}));
                with_default(&mut d, "S3BackupMode", json!("FailedDataOnly"));
                out.insert("HttpEndpointDestinationDescription".into(), Value::Object(d));
            }
            DestinationKind::Iceberg => {
                let mut d = self.config.clone();
                if let Some(s3) = d.remove("S3Configuration") {
                    let s3 = s3.as_object().map(describe_s3).unwrap_or_default();
                    d.insert("S3DestinationDescription".into(), Value::Object(s3));
                }
                with_default(&mut d, "BufferingHints", json!({"SizeInMBs": 5, "IntervalInSeconds": 300}));
                with_default(&mut d, "CloudWatchLoggingOptions", json!({"Enabled": false}));
                with_default(&mut d, "RetryOptions", json!({"DurationInSeconds": 300}));
                with_default(&mut d, "S3BackupMode", json!("FailedDataOnly"));
                with_default(&mut d, "AppendOnly", json!(false));
                out.insert("IcebergDestinationDescription".into(), Value::Object(d));
            }
            other => {
                out.insert(format!("{}DestinationDescription", other.name()), Value::Object(self.config.clone()));
            }
        }
        DestinationDescription(out)
    }

    /// Applies an UpdateDestination. The same kind merges (members left out keep
    /// their values; lists and `ProcessingConfiguration` are replaced whole); another
    /// kind replaces the configuration, which must then be complete.
    pub fn apply(&self, update: &DestinationUpdate) -> Result<Destination, ApiError> {
        self.apply_with(update, &ParseOptions::default())
    }

    /// [`Destination::apply`] with the server's parse options.
    pub fn apply_with(&self, update: &DestinationUpdate, options: &ParseOptions) -> Result<Destination, ApiError> {
        let renamed = rename_update_members(&update.update);
        let same_kind = self.kind == update.kind
            || matches!((self.kind, update.kind), (DestinationKind::S3, DestinationKind::ExtendedS3));
        let config = if same_kind {
            let mut merged = Value::Object(self.config.clone());
            merge(&mut merged, &Value::Object(renamed));
            match merged {
                Value::Object(map) => map,
                _ => unreachable!("merging objects yields an object"),
            }
        } else {
            renamed
        };
        if self.config.get("S3BackupMode") == Some(&json!("Enabled"))
            && config.get("S3BackupMode") == Some(&json!("Disabled"))
        {
            return Err(ApiError::new(
                ErrorCode::InvalidArgumentException,
                "S3BackupMode cannot be changed from Enabled to Disabled.",
            ));
        }
        let partitioned = |config: &Map<String, Value>| {
            config.get("DynamicPartitioningConfiguration").and_then(|d| d.get("Enabled")).and_then(Value::as_bool)
                == Some(true)
        };
        if partitioned(&self.config) != partitioned(&config) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgumentException,
                "Dynamic partitioning can only be enabled when the Firehose stream is created, and never disabled.",
            ));
        }
        let kind = if same_kind { self.kind.max_extended(update.kind) } else { update.kind };
        let shape = format!("{}DestinationConfiguration", kind.name());
        crate::model::validate_shape(&shape, &Value::Object(config.clone()), options).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidArgumentException,
                format!("The updated destination is incomplete: {}", e.message),
            )
        })?;
        let updated = Destination { kind, config };
        updated.validate()?;
        Ok(updated)
    }

    /// Firehose's creation-time rules that the model cannot express: the `Prefix` /
    /// `ErrorOutputPrefix` expression rules of every S3 configuration in the
    /// destination, and a known `CustomTimeZone`. Then what Sluice cannot do: a
    /// setting that would change what is delivered is refused, never accepted and
    /// ignored (see [`unsupported`]).
    pub fn validate(&self) -> Result<(), ApiError> {
        self.validate_firehose_rules()?;
        match unsupported(self.kind, &self.config) {
            Some(message) => Err(ApiError::new(ErrorCode::InvalidArgumentException, message)),
            None => Ok(()),
        }
    }

    fn validate_firehose_rules(&self) -> Result<(), ApiError> {
        let invalid = |message: String| ApiError::new(ErrorCode::InvalidArgumentException, message);
        let check_s3 = |config: &Map<String, Value>, dynamic_partitioning: bool| -> Result<(), ApiError> {
            let prefix = config.get("Prefix").and_then(Value::as_str).unwrap_or("");
            let error_prefix = config.get("ErrorOutputPrefix").and_then(Value::as_str);
            crate::s3_key::validate_prefixes(prefix, error_prefix, dynamic_partitioning).map_err(invalid)?;
            let zone = config.get("CustomTimeZone").and_then(Value::as_str);
            crate::s3_key::time_zone(zone).map_err(invalid)?;
            Ok(())
        };
        let nested = |key: &str| self.config.get(key).and_then(Value::as_object);
        match self.kind {
            DestinationKind::ExtendedS3 | DestinationKind::S3 => {
                let dynamic_partitioning = self
                    .config
                    .get("DynamicPartitioningConfiguration")
                    .and_then(|d| d.get("Enabled"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                check_s3(&self.config, dynamic_partitioning)?;
                crate::conversion::validate(&self.config).map_err(invalid)?;
                nested("S3BackupConfiguration").map(|backup| check_s3(backup, false)).transpose()?;
                ProcessingChain::from_config(&self.config, dynamic_partitioning).map_err(invalid)?;
                if self.config.get("S3BackupMode") == Some(&json!("Enabled"))
                    && nested("S3BackupConfiguration").is_none()
                {
                    return Err(invalid(
                        "S3BackupConfiguration must be specified when S3BackupMode is Enabled.".to_string(),
                    ));
                }
            }
            DestinationKind::HttpEndpoint | DestinationKind::Iceberg => {
                nested("S3Configuration").map(|s3| check_s3(s3, false)).transpose()?;
                // An Iceberg stream's MetadataExtraction routes records to tables.
                let metadata = self.kind == DestinationKind::Iceberg;
                ProcessingChain::from_config(&self.config, metadata).map_err(invalid)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The first member of a destination that Sluice accepts in the API but cannot act
/// on in a way that changes what is delivered, as the message to refuse it with.
/// Members that have no effect on the delivered data in Sluice (`RoleARN`,
/// `CloudWatchLoggingOptions`, ...) are accepted; README.md lists them.
fn unsupported(kind: DestinationKind, config: &Map<String, Value>) -> Option<String> {
    // An absent `Enabled` is true, as on Firehose.
    let enabled = |member: &str| {
        config.get(member).and_then(Value::as_object).map(|m| m.get("Enabled").and_then(Value::as_bool) != Some(false))
    };
    match kind {
        DestinationKind::Iceberg => iceberg_unsupported(config),
        DestinationKind::HttpEndpoint if enabled("SecretsManagerConfiguration") == Some(true) => Some(
            "Sluice does not read secrets from AWS Secrets Manager: with SecretsManagerConfiguration enabled, the endpoint would receive no access key. Give the key in EndpointConfiguration.AccessKey, or set SecretsManagerConfiguration's Enabled to false.".to_string(),
        ),
        _ => None,
    }
}

/// What Sluice's Iceberg destination does not do yet, as the refusal's message.
fn iceberg_unsupported(config: &Map<String, Value>) -> Option<String> {
    let tables = config.get("DestinationTableConfigurationList").and_then(Value::as_array);
    let tables = tables.map(Vec::as_slice).unwrap_or_default();
    if tables.iter().any(|t| t.get("UniqueKeys").and_then(Value::as_array).is_some_and(|k| !k.is_empty())) {
        return Some("Sluice appends to Iceberg tables only: UniqueKeys (row-level updates and deletes) are not supported until the Iceberg library writes delete files. Leave UniqueKeys out.".into());
    }
    if tables.is_empty() {
        return Some("DestinationTableConfigurationList must name at least one table: the table records go to when they name none, and the database of those that name only a table.".into());
    }
    let enabled =
        |member: &str| config.get(member).and_then(|m| m.get("Enabled")).and_then(Value::as_bool) == Some(true);
    if enabled("SchemaEvolutionConfiguration") || enabled("TableCreationConfiguration") {
        return Some("Sluice does not create Iceberg tables or evolve their schemas yet: leave SchemaEvolutionConfiguration and TableCreationConfiguration disabled, and create the table first.".into());
    }
    None
}

impl DestinationKind {
    /// An S3 destination updated through ExtendedS3DestinationUpdate becomes ExtendedS3.
    fn max_extended(self, update: DestinationKind) -> DestinationKind {
        if update == DestinationKind::ExtendedS3 {
            DestinationKind::ExtendedS3
        } else {
            self
        }
    }
}

/// Update shapes name a few members differently from configuration shapes.
fn rename_update_members(update: &Map<String, Value>) -> Map<String, Value> {
    update
        .iter()
        .map(|(k, v)| {
            let key = match k.as_str() {
                "S3BackupUpdate" => "S3BackupConfiguration",
                "S3Update" => "S3Configuration",
                other => other,
            };
            (key.to_string(), v.clone())
        })
        .collect()
}

/// Deep merge of JSON objects; anything else (and `ProcessingConfiguration`) replaces.
fn merge(target: &mut Value, update: &Value) {
    match (target, update) {
        (Value::Object(t), Value::Object(u)) => {
            for (k, v) in u {
                match t.get_mut(k) {
                    Some(existing) if k != "ProcessingConfiguration" && existing.is_object() && v.is_object() => {
                        merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, u) => *t = u.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> Destination {
        let config = json!({"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b", "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60}});
        Destination { kind: DestinationKind::ExtendedS3, config: config.as_object().unwrap().clone() }
    }

    #[test]
    fn describe_fills_in_defaults() {
        let d = serde_json::to_value(s3().describe("destinationId-000000000001")).unwrap();
        let e = &d["ExtendedS3DestinationDescription"];
        assert_eq!(e["CompressionFormat"], "UNCOMPRESSED");
        assert_eq!(e["S3BackupMode"], "Disabled");
        assert_eq!(e["EncryptionConfiguration"]["NoEncryptionConfig"], "NoEncryption");
        assert_eq!(e["BufferingHints"]["SizeInMBs"], 1);
        assert_eq!(d["S3DestinationDescription"]["BucketARN"], "arn:aws:s3:::b");
        assert_eq!(d["DestinationId"], "destinationId-000000000001");
    }

    #[test]
    fn s3_settings_apply_firehose_defaults() {
        let settings = s3().s3_settings().unwrap();
        assert_eq!(settings.bucket, "b");
        assert_eq!((settings.buffer_mib, settings.buffer_interval_s), (1, 60));
        assert_eq!(settings.compression, "UNCOMPRESSED");
        assert_eq!((settings.prefix.as_str(), settings.error_output_prefix.as_deref()), ("", None));
        assert!(!settings.dynamic_partitioning);
        let bare = json!({"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::logs", "CompressionFormat": "GZIP"});
        let settings = S3Settings::from_config(bare.as_object().unwrap()).unwrap();
        assert_eq!((settings.buffer_mib, settings.buffer_interval_s, settings.compression.as_str()), (5, 300, "GZIP"));
        let http = Destination { kind: DestinationKind::HttpEndpoint, config: Map::new() };
        assert_eq!(http.s3_settings(), None);
    }

    #[test]
    fn update_merges_same_kind() {
        let update = DestinationUpdate {
            kind: DestinationKind::ExtendedS3,
            update: json!({"BufferingHints": {"IntervalInSeconds": 0}, "Prefix": "p/"}).as_object().unwrap().clone(),
        };
        let updated = s3().apply(&update).unwrap();
        assert_eq!(updated.config["BufferingHints"], json!({"SizeInMBs": 1, "IntervalInSeconds": 0}));
        assert_eq!(updated.config["Prefix"], "p/");
        assert_eq!(updated.config["BucketARN"], "arn:aws:s3:::b");
    }

    #[test]
    fn settings_sluice_cannot_act_on_are_refused_not_ignored() {
        let with = |member: &str, value: Value| {
            let mut config = s3().config;
            config.insert(member.into(), value);
            Destination { kind: DestinationKind::ExtendedS3, config }
        };
        // Format conversion: incomplete blocks by Firehose's rules; ORC and Parquet both written.
        let mut converting = with("DataFormatConversionConfiguration", json!({"Enabled": true}));
        converting.config.remove("BufferingHints");
        let refused = converting.validate().unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidArgumentException);
        assert!(refused.message.starts_with("InputFormatConfiguration must not be null"), "{}", refused.message);
        let orc = json!({
            "SchemaConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "DatabaseName": "d", "TableName": "t"},
            "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
            "OutputFormatConfiguration": {"Serializer": {"OrcSerDe": {"Compression": "ZLIB"}}},
        });
        let mut converting = with("DataFormatConversionConfiguration", orc);
        converting.config.remove("BufferingHints");
        converting.validate().unwrap();
        with("DataFormatConversionConfiguration", json!({"Enabled": false})).validate().unwrap();
        let update = DestinationUpdate {
            kind: DestinationKind::ExtendedS3,
            update: json!({"DataFormatConversionConfiguration": {"Enabled": true}}).as_object().unwrap().clone(),
        };
        assert_eq!(s3().apply(&update).unwrap_err().code, ErrorCode::InvalidArgumentException, "by an update too");
        let config = json!({
            "EndpointConfiguration": {"Url": "https://example.com"},
            "S3Configuration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"},
            "SecretsManagerConfiguration": {"Enabled": true, "SecretARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:s"},
        });
        let http = Destination { kind: DestinationKind::HttpEndpoint, config: config.as_object().unwrap().clone() };
        assert!(http.validate().unwrap_err().message.contains("SecretsManagerConfiguration"));
    }

    #[test]
    fn a_converting_stream_buffers_128_mib_unless_told() {
        let mut config = s3().config;
        config.remove("BufferingHints");
        config.insert(
            "DataFormatConversionConfiguration".into(),
            json!({
                "SchemaConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "DatabaseName": "d", "TableName": "t"},
                "InputFormatConfiguration": {"Deserializer": {"HiveJsonSerDe": {"TimestampFormats": ["millis"]}}},
                "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "GZIP"}}},
            }),
        );
        let d = Destination { kind: DestinationKind::ExtendedS3, config };
        d.validate().unwrap();
        assert_eq!((d.s3_settings().unwrap().buffer_mib, d.s3_settings().unwrap().buffer_interval_s), (128, 300));
        let described = serde_json::to_value(d.describe("d")).unwrap();
        assert_eq!(
            described["ExtendedS3DestinationDescription"]["BufferingHints"],
            json!({"SizeInMBs": 128, "IntervalInSeconds": 300})
        );
        let conversion = d.conversion().unwrap();
        assert_eq!(
            conversion.input,
            crate::conversion::InputSettings::Hive { timestamp_formats: vec!["millis".to_string()] }
        );
        assert!(
            matches!(conversion.output, crate::conversion::OutputSettings::Parquet { compression: Some(ref c), .. } if c == "GZIP")
        );
    }

    #[test]
    fn dynamic_partitioning_is_described_with_its_default_retry_duration() {
        let mut config = s3().config;
        config.insert("DynamicPartitioningConfiguration".into(), json!({"Enabled": true}));
        let d = Destination { kind: DestinationKind::ExtendedS3, config: config.clone() }.describe("d");
        let d = serde_json::to_value(d).unwrap();
        assert_eq!(
            d["ExtendedS3DestinationDescription"]["DynamicPartitioningConfiguration"],
            json!({"Enabled": true, "RetryOptions": {"DurationInSeconds": 300}})
        );
        config.insert(
            "DynamicPartitioningConfiguration".into(),
            json!({"Enabled": true, "RetryOptions": {"DurationInSeconds": 60}}),
        );
        let d = serde_json::to_value(Destination { kind: DestinationKind::ExtendedS3, config }.describe("d")).unwrap();
        assert_eq!(
            d["ExtendedS3DestinationDescription"]["DynamicPartitioningConfiguration"]["RetryOptions"]
                ["DurationInSeconds"],
            60
        );
    }

    #[test]
    fn changing_kind_needs_a_complete_configuration() {
        let update = DestinationUpdate {
            kind: DestinationKind::HttpEndpoint,
            update: json!({"BufferingHints": {"IntervalInSeconds": 0, "SizeInMBs": 1}}).as_object().unwrap().clone(),
        };
        assert_eq!(s3().apply(&update).unwrap_err().code, ErrorCode::InvalidArgumentException);
    }
}
