//! `DataFormatConversionConfiguration` of an ExtendedS3 destination: Firehose's
//! create-time rules for it, in the order AWS checks them, and a typed view of
//! the settings for delivery (which converts with `sluice-convert`; this crate
//! stays free of it).
//!
//! The rules, each an `InvalidArgumentException` (as probed on AWS): the S3
//! `CompressionFormat` must be `UNCOMPRESSED`; an explicit `SizeInMBs` must be at
//! least 64; then the three parts must be present (Input, Output, Schema, in that
//! order; an empty object counts as absent), each part must name its
//! (de)serializer, only one of each, and the schema must name a role, database
//! and table. A missing `Enabled` counts as enabled; `Enabled: false` skips the
//! rules and keeps the block as given.

use serde_json::{Map, Value};

/// The buffer size a converting stream gets when no hints are given (MiB), as AWS
/// stores it.
pub const CONVERSION_BUFFER_MIB_DEFAULT: u64 = 128;
/// The least explicit buffer size a converting stream may have (MiB).
pub const CONVERSION_BUFFER_MIB_MIN: u64 = 64;

/// Where the table's schema comes from (`SchemaConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSource {
    /// `CatalogId` (the account), if given.
    pub catalog_id: Option<String>,
    /// `DatabaseName`.
    pub database: String,
    /// `TableName`.
    pub table: String,
    /// `Region`, if given (the stream's otherwise).
    pub region: Option<String>,
    /// `VersionId`; `LATEST` (the default) follows the table's changes.
    pub version_id: String,
    /// `RoleARN`: kept for the error records; Sluice assumes no roles.
    pub role_arn: String,
}

/// The deserializer (`InputFormatConfiguration.Deserializer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSettings {
    /// `OpenXJsonSerDe`.
    OpenX {
        /// `CaseInsensitive` (default true).
        case_insensitive: bool,
        /// `ConvertDotsInJsonKeysToUnderscores` (default false).
        dots_to_underscores: bool,
        /// `ColumnToJsonKeyMappings`.
        column_keys: Vec<(String, String)>,
    },
    /// `HiveJsonSerDe`.
    Hive {
        /// `TimestampFormats`.
        timestamp_formats: Vec<String>,
    },
}

/// The serializer (`OutputFormatConfiguration.Serializer`), with the values given
/// (defaults are the writer's).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputSettings {
    /// `ParquetSerDe`.
    Parquet {
        /// `Compression`.
        compression: Option<String>,
        /// `BlockSizeBytes`.
        block_bytes: Option<u64>,
        /// `PageSizeBytes`.
        page_bytes: Option<u64>,
        /// `EnableDictionaryCompression`.
        dictionary: Option<bool>,
        /// `WriterVersion`.
        writer_version: Option<String>,
    },
    /// `OrcSerDe` (its other members have no effect in Sluice).
    Orc {
        /// `Compression`.
        compression: Option<String>,
        /// `StripeSizeBytes`.
        stripe_bytes: Option<u64>,
        /// `FormatVersion`.
        format_version: Option<String>,
    },
}

/// An enabled conversion's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionSettings {
    /// Where the schema comes from.
    pub schema: SchemaSource,
    /// How records are read.
    pub input: InputSettings,
    /// How the file is written.
    pub output: OutputSettings,
}

/// Whether an ExtendedS3 configuration converts (the block is there and not
/// disabled).
pub fn enabled(config: &Map<String, Value>) -> bool {
    config
        .get("DataFormatConversionConfiguration")
        .and_then(Value::as_object)
        .is_some_and(|c| c.get("Enabled").and_then(Value::as_bool) != Some(false))
}

/// The extension of a converting stream's objects (`.parquet` or `.orc`); `None`
/// if it does not convert. Cheap: read where keys are named, for every batch.
pub fn format_extension(config: &Map<String, Value>) -> Option<&'static str> {
    if !enabled(config) {
        return None;
    }
    let block = config.get("DataFormatConversionConfiguration")?;
    let serializer = block.get("OutputFormatConfiguration")?.get("Serializer")?.as_object()?;
    Some(if serializer.contains_key("OrcSerDe") { ".orc" } else { ".parquet" })
}

/// Checks an ExtendedS3 configuration's conversion block as Firehose does; the
/// error is the message of an `InvalidArgumentException`.
pub fn validate(config: &Map<String, Value>) -> Result<(), String> {
    if !enabled(config) {
        return Ok(());
    }
    let compression = config.get("CompressionFormat").and_then(Value::as_str).unwrap_or("UNCOMPRESSED");
    if compression != "UNCOMPRESSED" {
        return Err("The S3 destination's compression format must be set to UNCOMPRESSED when data format conversion is enabled. Set the compression in the serializer instead.".into());
    }
    let size = config.get("BufferingHints").and_then(|h| h.get("SizeInMBs")).and_then(Value::as_u64);
    if size.is_some_and(|s| s < CONVERSION_BUFFER_MIB_MIN) {
        return Err(format!(
            "BufferingHints.SizeInMBs must be at least {CONVERSION_BUFFER_MIB_MIN} when data format conversion is enabled."
        ));
    }
    settings(config).map(|_| ())
}

/// The settings of an enabled conversion (`None` without one); errors as in
/// [`validate`], from the third rule on.
pub fn settings(config: &Map<String, Value>) -> Result<Option<ConversionSettings>, String> {
    if !enabled(config) {
        return Ok(None);
    }
    let block = config.get("DataFormatConversionConfiguration").and_then(Value::as_object).expect("enabled");
    // An empty object is as good as none.
    let part = |name: &str| block.get(name).and_then(Value::as_object).filter(|o| !o.is_empty());
    let input = part("InputFormatConfiguration").ok_or("InputFormatConfiguration must not be null")?;
    let output = part("OutputFormatConfiguration").ok_or("OutputFormatConfiguration must not be null")?;
    let schema = part("SchemaConfiguration").ok_or("SchemaConfiguration must not be null")?;
    // The (de)serializers named in `object.member`, each with its settings.
    type Chosen = Vec<(String, Map<String, Value>)>;
    let chosen = |object: &Map<String, Value>, member: &str| -> Result<Chosen, String> {
        let inner = object.get(member).and_then(Value::as_object).filter(|o| !o.is_empty());
        let inner = inner.ok_or_else(|| format!("{member} must not be null"))?;
        Ok(inner.iter().filter_map(|(k, v)| Some((k.clone(), v.as_object()?.clone()))).collect())
    };
    let deserializers = chosen(input, "Deserializer")?;
    let serializers = chosen(output, "Serializer")?;
    if deserializers.len() > 1 {
        return Err("More than one deserializer specified. Only one may be chosen.".into());
    }
    if serializers.len() > 1 {
        return Err("More than one serializer specified. Only one may be chosen.".into());
    }
    let text = |object: &Map<String, Value>, member: &str| {
        object.get(member).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
    };
    let required = |member: &str, shown: &str| {
        text(schema, member).ok_or_else(|| format!("SchemaConfiguration.{shown} must not be null or empty"))
    };
    let schema = SchemaSource {
        role_arn: required("RoleARN", "RoleArn")?,
        database: required("DatabaseName", "DatabaseName")?,
        table: required("TableName", "TableName")?,
        catalog_id: text(schema, "CatalogId"),
        region: text(schema, "Region"),
        version_id: text(schema, "VersionId").unwrap_or_else(|| "LATEST".into()),
    };
    let (kind, serde) = deserializers.into_iter().next().ok_or("Deserializer must not be null")?;
    let flag = |object: &Map<String, Value>, member: &str| object.get(member).and_then(Value::as_bool);
    let input = match kind.as_str() {
        "HiveJsonSerDe" => InputSettings::Hive {
            timestamp_formats: serde
                .get("TimestampFormats")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect(),
        },
        _ => InputSettings::OpenX {
            case_insensitive: flag(&serde, "CaseInsensitive").unwrap_or(true),
            dots_to_underscores: flag(&serde, "ConvertDotsInJsonKeysToUnderscores").unwrap_or(false),
            column_keys: serde
                .get("ColumnToJsonKeyMappings")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(column, key)| Some((column.clone(), key.as_str()?.to_string())))
                .collect(),
        },
    };
    let (kind, serde) = serializers.into_iter().next().ok_or("Serializer must not be null")?;
    let output = match kind.as_str() {
        "OrcSerDe" => OutputSettings::Orc {
            compression: text(&serde, "Compression"),
            stripe_bytes: serde.get("StripeSizeBytes").and_then(Value::as_u64),
            format_version: text(&serde, "FormatVersion"),
        },
        _ => OutputSettings::Parquet {
            compression: text(&serde, "Compression"),
            block_bytes: serde.get("BlockSizeBytes").and_then(Value::as_u64),
            page_bytes: serde.get("PageSizeBytes").and_then(Value::as_u64),
            dictionary: flag(&serde, "EnableDictionaryCompression"),
            writer_version: text(&serde, "WriterVersion"),
        },
    };
    Ok(Some(ConversionSettings { schema, input, output }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(extra: Value) -> Map<String, Value> {
        let mut c = json!({
            "RoleARN": "arn:aws:iam::000000000000:role/r",
            "BucketARN": "arn:aws:s3:::b",
            "DataFormatConversionConfiguration": {
                "SchemaConfiguration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "DatabaseName": "db", "TableName": "t"},
                "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {}}},
            },
        });
        // Members of `extra` replace the base's; inside the conversion block, each part
        // given replaces the base's part whole.
        let c = c.as_object_mut().unwrap();
        for (key, value) in extra.as_object().unwrap() {
            match (key.as_str(), value.as_object()) {
                ("DataFormatConversionConfiguration", Some(parts)) => {
                    let block = c[key].as_object_mut().unwrap();
                    for (part, v) in parts {
                        block.insert(part.clone(), v.clone());
                    }
                }
                _ => {
                    c.insert(key.clone(), value.clone());
                }
            }
        }
        c.clone()
    }

    #[test]
    fn a_complete_block_gives_its_settings_with_defaults() {
        let settings = settings(&config(json!({}))).unwrap().unwrap();
        assert_eq!(settings.schema.version_id, "LATEST");
        assert_eq!((settings.schema.database.as_str(), settings.schema.table.as_str()), ("db", "t"));
        assert_eq!(
            settings.input,
            InputSettings::OpenX { case_insensitive: true, dots_to_underscores: false, column_keys: vec![] }
        );
        assert!(matches!(settings.output, OutputSettings::Parquet { compression: None, .. }));
        let disabled = config(json!({"DataFormatConversionConfiguration": {"Enabled": false}}));
        assert_eq!(settings_or_error(&disabled), Ok(false));
    }

    fn settings_or_error(config: &Map<String, Value>) -> Result<bool, String> {
        validate(config).map(|()| enabled(config))
    }

    #[test]
    fn the_rules_are_checked_in_the_order_aws_checks_them() {
        let d = "DataFormatConversionConfiguration";
        let cases = [
            (
                json!({"CompressionFormat": "GZIP", "BufferingHints": {"SizeInMBs": 1}}),
                "The S3 destination's compression format must be set to UNCOMPRESSED",
            ),
            (
                json!({"BufferingHints": {"SizeInMBs": 63}, d: {"InputFormatConfiguration": {}}}),
                "BufferingHints.SizeInMBs must be at least 64",
            ),
            (
                json!({d: {"InputFormatConfiguration": {}, "SchemaConfiguration": {}}}),
                "InputFormatConfiguration must not be null",
            ),
            (
                json!({d: {"OutputFormatConfiguration": {}, "SchemaConfiguration": {}}}),
                "OutputFormatConfiguration must not be null",
            ),
            (json!({d: {"SchemaConfiguration": {}}}), "SchemaConfiguration must not be null"),
            (json!({d: {"InputFormatConfiguration": {"Deserializer": {}}}}), "Deserializer must not be null"),
            (json!({d: {"OutputFormatConfiguration": {"Serializer": {}}}}), "Serializer must not be null"),
            (
                json!({d: {"InputFormatConfiguration": {"Deserializer": {"HiveJsonSerDe": {}, "OpenXJsonSerDe": {}}}, "OutputFormatConfiguration": {"Serializer": {"OrcSerDe": {}, "ParquetSerDe": {}}}}}),
                "More than one deserializer specified. Only one may be chosen.",
            ),
            (
                json!({d: {"OutputFormatConfiguration": {"Serializer": {"OrcSerDe": {}, "ParquetSerDe": {}}}, "SchemaConfiguration": {"RoleARN": ""}}}),
                "More than one serializer specified. Only one may be chosen.",
            ),
            (
                json!({d: {"SchemaConfiguration": {"RoleARN": "", "DatabaseName": ""}}}),
                "SchemaConfiguration.RoleArn must not be null or empty",
            ),
            (
                json!({d: {"SchemaConfiguration": {"RoleARN": "r", "DatabaseName": ""}}}),
                "SchemaConfiguration.DatabaseName must not be null or empty",
            ),
            (
                json!({d: {"SchemaConfiguration": {"RoleARN": "r", "DatabaseName": "db"}}}),
                "SchemaConfiguration.TableName must not be null or empty",
            ),
        ];
        for (extra, expected) in cases {
            let error = validate(&config(extra.clone())).expect_err(&extra.to_string());
            assert!(error.starts_with(expected), "{extra}: {error}");
        }
        // 64 MiB given, and no hints at all, are both fine.
        validate(&config(json!({"BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 60}}))).unwrap();
        validate(&config(json!({}))).unwrap();
    }
}
