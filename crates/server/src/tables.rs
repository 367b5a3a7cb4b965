//! Format conversion's setup: the table a converting stream's `SchemaConfiguration`
//! names (declared in `[[glue.tables]]`, else fetched through the Glue API's
//! `GetTable` / `GetTableVersion`), and the [`Conversion`] built from it and the
//! stream's (de)serializer settings. Checked when a stream is created or updated
//! (a table that does not exist fails the call, as on Firehose), and resolved
//! again for every batch, so that `VersionId` `LATEST` follows the table's changes.

use serde_json::{json, Value};
use sluice_aws_call::{CallError, JsonApi};
use sluice_convert::{
    Conversion, InputFormat, OrcCompression, OrcOptions, OutputFormat, ParquetCompression, ParquetOptions, TableSchema,
    TimestampFormat,
};
use sluice_protocol::conversion::{ConversionSettings, InputSettings, OutputSettings, SchemaSource};

use crate::config::GlueConfig;

/// Why a conversion cannot be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TableError {
    /// Neither declared nor found in Glue.
    #[error("The Glue table {database}.{table} was not found: it is not declared in Sluice's configuration ([[glue.tables]]), and the Glue API answered: {reason}")]
    NotFound {
        /// `DatabaseName`.
        database: String,
        /// `TableName`.
        table: String,
        /// Glue's answer.
        reason: String,
    },
    /// Glue could not be asked (a batch retries; a create is refused).
    #[error("The Glue table {database}.{table} is not declared in Sluice's configuration ([[glue.tables]]), and the Glue API could not be asked for it: {reason}")]
    Unreachable {
        /// `DatabaseName`.
        database: String,
        /// `TableName`.
        table: String,
        /// Why.
        reason: String,
    },
    /// The table, or the stream's settings, cannot be converted to.
    #[error("{0}")]
    Invalid(String),
}

/// The table `source` names: a declared one, else Glue's (`region`: the stream's,
/// when the schema names none).
pub async fn resolve(glue: &GlueConfig, source: &SchemaSource, region: &str) -> Result<TableSchema, TableError> {
    let key = (source.database.to_lowercase(), source.table.to_lowercase());
    if let Some(schema) = glue.tables.get(&key) {
        return Ok(schema.clone());
    }
    let (database, table) = (source.database.clone(), source.table.clone());
    let region = source.region.as_deref().unwrap_or(region);
    let api = JsonApi::new(glue.client_for(region), "glue", "AWSGlue").map_err(|e| TableError::Unreachable {
        database: database.clone(),
        table: table.clone(),
        reason: e.to_string(),
    })?;
    let mut input = json!({"DatabaseName": source.database});
    if let Some(catalog_id) = &source.catalog_id {
        input["CatalogId"] = json!(catalog_id);
    }
    let answer = if source.version_id == "LATEST" {
        input["Name"] = json!(source.table);
        api.call("GetTable", &input).await.map(|output| output.get("Table").cloned())
    } else {
        input["TableName"] = json!(source.table);
        input["VersionId"] = json!(source.version_id);
        api.call("GetTableVersion", &input)
            .await
            .map(|output| output.get("TableVersion").and_then(|v| v.get("Table")).cloned())
    };
    let table_object = match answer {
        Ok(Some(table_object)) => table_object,
        Ok(None) => {
            let reason = "the answer has no table".to_string();
            return Err(TableError::Unreachable { database, table, reason });
        }
        Err(CallError::Service { kind, message, .. }) if kind == "EntityNotFoundException" => {
            return Err(TableError::NotFound { database, table, reason: format!("{kind}: {message}") });
        }
        Err(error) => return Err(TableError::Unreachable { database, table, reason: error.to_string() }),
    };
    TableSchema::from_glue_table(&table_object)
        .map_err(|e| TableError::Invalid(format!("The Glue table {database}.{table} cannot be converted to: {e}")))
}

/// The conversion a stream's settings describe, for `schema`.
pub fn conversion(settings: &ConversionSettings, schema: TableSchema) -> Result<Conversion, TableError> {
    let input = match &settings.input {
        InputSettings::OpenX { case_insensitive, dots_to_underscores, column_keys } => InputFormat::OpenX {
            case_insensitive: *case_insensitive,
            dots_to_underscores: *dots_to_underscores,
            column_keys: column_keys.iter().map(|(column, key)| (column.to_lowercase(), key.clone())).collect(),
        },
        InputSettings::Hive { timestamp_formats } => InputFormat::Hive {
            timestamp_formats: timestamp_formats
                .iter()
                .map(|format| match format.as_str() {
                    "millis" => Ok(TimestampFormat::Millis),
                    pattern => sluice_convert::joda::Pattern::new(pattern).map(TimestampFormat::Pattern),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| TableError::Invalid(format!("HiveJsonSerDe.TimestampFormats: {e}")))?,
        },
    };
    let output = match &settings.output {
        OutputSettings::Parquet { compression, block_bytes, page_bytes, dictionary, writer_version } => {
            let defaults = ParquetOptions::default();
            OutputFormat::Parquet(ParquetOptions {
                compression: match compression.as_deref() {
                    None | Some("SNAPPY") => ParquetCompression::Snappy,
                    Some("GZIP") => ParquetCompression::Gzip,
                    Some("UNCOMPRESSED") => ParquetCompression::Uncompressed,
                    Some(other) => {
                        return Err(TableError::Invalid(format!("Unknown ParquetSerDe.Compression {other}")))
                    }
                },
                block_bytes: block_bytes.unwrap_or(defaults.block_bytes),
                page_bytes: page_bytes.unwrap_or(defaults.page_bytes),
                dictionary: dictionary.unwrap_or(defaults.dictionary),
                writer_version_2: writer_version.as_deref() == Some("V2"),
            })
        }
        OutputSettings::Orc { compression, stripe_bytes, format_version } => {
            let defaults = OrcOptions::default();
            OutputFormat::Orc(OrcOptions {
                compression: match compression.as_deref() {
                    None | Some("SNAPPY") => OrcCompression::Snappy,
                    Some("ZLIB") => OrcCompression::Zlib,
                    Some("NONE") => OrcCompression::None,
                    Some(other) => return Err(TableError::Invalid(format!("Unknown OrcSerDe.Compression {other}"))),
                },
                stripe_bytes: stripe_bytes.unwrap_or(defaults.stripe_bytes),
                version_0_11: format_version.as_deref() == Some("V0_11"),
            })
        }
    };
    Conversion::new(schema, input, output).map_err(|e| TableError::Invalid(e.to_string()))
}

/// Resolves the table and sets up the conversion.
pub async fn setup(glue: &GlueConfig, settings: &ConversionSettings, region: &str) -> Result<Conversion, TableError> {
    let schema = resolve(glue, &settings.schema, region).await?;
    conversion(settings, schema)
}

/// The `dataCatalogTable` of a conversion's error records.
pub fn catalog_table(source: &SchemaSource, account_id: &str, region: &str) -> Value {
    json!({
        "catalogId": source.catalog_id.as_deref().unwrap_or(account_id),
        "databaseName": source.database,
        "tableName": source.table,
        "region": source.region.as_deref().unwrap_or(region),
        "versionId": source.version_id,
        "roleArn": source.role_arn,
    })
}
