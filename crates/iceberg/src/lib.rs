//! The Iceberg destination's table side (issue 14): JSON records appended to
//! Apache Iceberg tables through an Iceberg catalog. Sits where an S3 lane would
//! upload an object: a batch's records, after processing, become rows under the
//! table's current schema, one Parquet data file, and one snapshot.
//!
//! Each batch commits once. Its identity (given by the caller, stable across
//! retries and crashes) is carried in the snapshot's summary
//! (`sluice.batch-id`); before writing, the table's snapshots are searched for
//! it, so a batch redone after a crash that came after its commit appends
//! nothing the second time. Data files a crash left uncommitted are never
//! referenced (the redo writes its own, under the same names: a batch's
//! partitions are written in the order of their paths, so file numbers repeat).
//!
//! Partitioned tables: each row's partition comes from the table's default
//! partition spec (identity, bucket, truncate, year/month/day/hour, void), and
//! each partition of a batch gets its own data files under `data/<partition
//! path>/`, all in the batch's one snapshot.
//!
//! Catalogs: SQL (SQLite or PostgreSQL, the table layout pyiceberg and Java's
//! JDBC catalog share) and REST (the Iceberg REST catalog protocol). Table
//! locations: `file://` (synced) and `s3://` (see `storage`).
//!
//! This crate knows nothing of Firehose's wire format, the log or HTTP servers.

mod schema;
pub mod storage;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFileFormat, PartitionKey, Struct, TableMetadata};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use sluice_convert::{Cell, InputFormat, RecordError};

/// The snapshot summary property that names the batch a snapshot appended.
pub const BATCH_ID_PROPERTY: &str = "sluice.batch-id";

/// Rows converted at a time before they go to the data file writer.
const CHUNK_ROWS_MAX: usize = sluice_convert::CHUNK_ROWS_MAX;

/// Why an append failed. Record-level failures are not errors: they come back in
/// [`Appended::failed`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum IcebergError {
    /// The catalog could not be opened or asked.
    #[error("the Iceberg catalog: {0}")]
    Catalog(String),
    /// The table does not exist.
    #[error("the Iceberg table {0} does not exist")]
    NoSuchTable(String),
    /// The table's schema or layout is not one Sluice writes.
    #[error("{0}")]
    Schema(String),
    /// Writing or committing failed (the batch may be tried again).
    #[error("appending to the Iceberg table: {0}")]
    Write(String),
}

fn catalog_error(error: iceberg::Error) -> IcebergError {
    IcebergError::Catalog(error.to_string())
}

fn write_error(error: impl std::fmt::Display) -> IcebergError {
    IcebergError::Write(error.to_string())
}

/// Which catalog, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    pub kind: CatalogKind,
    /// The catalog name (a SQL catalog keeps its rows under it: pyiceberg's and
    /// Spark's `name`).
    pub name: String,
    /// Where tables created through this catalog would go (`file:///path`,
    /// `s3://bucket/path`); for a REST catalog, the warehouse it is asked for
    /// (`None`: its default).
    pub warehouse: Option<String>,
    /// Where the buckets of `s3://` table locations live.
    pub s3: storage::S3Buckets,
}

/// The kind of catalog.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogKind {
    /// A SQL catalog's database, as sqlx takes it (`sqlite:///abs/path.db`,
    /// `postgres://...`).
    Sql { uri: String },
    /// An Iceberg REST catalog at `uri` (`http(s)://host/prefix`), with a bearer
    /// `token` or an OAuth2 client `credential` (`id:secret`) if it needs one.
    Rest { uri: String, token: Option<String>, credential: Option<String> },
}

impl std::fmt::Debug for CatalogKind {
    // Tokens and credentials never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogKind::Sql { uri } => f.debug_struct("Sql").field("uri", &redacted_url(uri)).finish(),
            CatalogKind::Rest { uri, token, credential } => f
                .debug_struct("Rest")
                .field("uri", uri)
                .field("token", &token.as_ref().map(|_| "***"))
                .field("credential", &credential.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

/// A database URL with its password left out.
fn redacted_url(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &uri[..scheme], &uri[at..]),
        _ => uri.to_string(),
    }
}

/// An open catalog.
pub struct Tables {
    catalog: Arc<dyn Catalog>,
}

/// What an append did.
#[derive(Debug, Default)]
pub struct Appended {
    /// Rows written (0 when the batch was already committed, or every record failed).
    pub rows: u64,
    /// The batch had been committed before: nothing was written this time.
    pub already_committed: bool,
    /// Records that did not fit the table, by index in the input, with why.
    pub failed: Vec<(usize, RecordError)>,
}

impl Tables {
    /// Opens the catalog (a SQLite catalog's file and tables are created if
    /// absent; a REST catalog is asked for its configuration when first used).
    pub async fn open(config: &CatalogConfig) -> Result<Tables, IcebergError> {
        let storage = Arc::new(storage::TableStorageFactory::new(config.s3.clone()));
        let catalog: Arc<dyn Catalog> = match &config.kind {
            CatalogKind::Sql { uri } => {
                sqlx::any::install_default_drivers();
                let bind_style = if uri.starts_with("sqlite:") { "QMark" } else { "DollarNumeric" };
                let mut props = HashMap::from([
                    (iceberg_catalog_sql::SQL_CATALOG_PROP_URI.to_string(), uri.clone()),
                    (iceberg_catalog_sql::SQL_CATALOG_PROP_BIND_STYLE.to_string(), bind_style.to_string()),
                ]);
                if let Some(warehouse) = &config.warehouse {
                    props.insert(iceberg_catalog_sql::SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.clone());
                }
                let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
                    .with_storage_factory(storage)
                    .load(config.name.clone(), props)
                    .await
                    .map_err(catalog_error)?;
                Arc::new(catalog)
            }
            CatalogKind::Rest { uri, token, credential } => {
                let mut props = HashMap::from([(iceberg_catalog_rest::REST_CATALOG_PROP_URI.to_string(), uri.clone())]);
                let optional = [
                    (iceberg_catalog_rest::REST_CATALOG_PROP_WAREHOUSE, &config.warehouse),
                    ("token", token),
                    ("credential", credential),
                ];
                for (key, value) in optional {
                    if let Some(value) = value {
                        props.insert(key.to_string(), value.clone());
                    }
                }
                let catalog = iceberg_catalog_rest::RestCatalogBuilder::default()
                    .with_storage_factory(storage)
                    .load(config.name.clone(), props)
                    .await
                    .map_err(catalog_error)?;
                Arc::new(catalog)
            }
        };
        Ok(Tables { catalog })
    }

    /// The table, loaded now.
    async fn load(&self, database: &str, table: &str) -> Result<iceberg::table::Table, IcebergError> {
        let ident = TableIdent::new(NamespaceIdent::new(database.to_string()), table.to_string());
        // One round trip: a missing table (or namespace) is the load's own error.
        match self.catalog.load_table(&ident).await {
            Err(e) if matches!(e.kind(), iceberg::ErrorKind::TableNotFound | iceberg::ErrorKind::NamespaceNotFound) => {
                Err(IcebergError::NoSuchTable(format!("{database}.{table}")))
            }
            loaded => loaded.map_err(catalog_error),
        }
    }

    /// Checks that the table exists and that Sluice can write its schema and layout.
    pub async fn check(&self, database: &str, table: &str) -> Result<(), IcebergError> {
        let table = self.load(database, table).await?;
        writable(table.metadata()).map(|_| ())
    }

    /// Appends the rows of `records` (JSON, read with `input` under the table's
    /// current schema) as one snapshot carrying `batch_id`; a batch already
    /// committed appends nothing. Records that do not fit come back in
    /// [`Appended::failed`] (a committed batch's too, read again, so that a redo
    /// can still write them where they go); the others are written.
    pub async fn append(
        &self,
        database: &str,
        table: &str,
        batch_id: &str,
        input: &InputFormat,
        records: &[&[u8]],
    ) -> Result<Appended, IcebergError> {
        let loaded = self.load(database, table).await?;
        let already_committed = committed(loaded.metadata(), batch_id);
        let (hive, partitions) = writable(loaded.metadata())?;
        let iceberg_schema = loaded.metadata().current_schema().clone();
        let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg_schema).map_err(catalog_error)?);
        let converted_schema = sluice_convert::columns::arrow_schema(&hive);
        // Data files are named after the batch, so a redo that comes before the
        // commit writes the same names again.
        let batch_uuid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, batch_id.as_bytes());
        let location = DefaultLocationGenerator::new(loaded.metadata()).map_err(write_error)?;
        let names = DefaultFileNameGenerator::new(batch_uuid.to_string(), None, DataFileFormat::Parquet);
        let parquet = ParquetWriterBuilder::new(
            parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build(),
            iceberg_schema.clone(),
        );
        let rolling =
            RollingFileWriterBuilder::new_with_default_file_size(parquet, loaded.file_io().clone(), location, names);
        // One writer per partition (a single one for an unpartitioned table).
        let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
        let mut appended = Appended { already_committed, ..Appended::default() };
        let mut columns: Vec<Vec<Cell>> = vec![Vec::new(); hive.columns.len()];
        let fields = iceberg_schema.as_struct().fields();
        for (i, record) in records.iter().enumerate() {
            let before = columns[0].len();
            let n = match input.read(&hive, record, &mut columns) {
                Ok(n) => n,
                Err(error) => {
                    appended.failed.push((i, error));
                    continue;
                }
            };
            let missing =
                (before..before + n).find_map(|row| schema::missing_required(fields, columns.iter().map(|c| &c[row])));
            if let Some(path) = missing {
                for column in &mut columns {
                    column.truncate(before);
                }
                let message = format!("Data does not match the schema. {path}: a required field is missing");
                let kind = sluice_convert::RecordErrorKind::Malformed;
                appended.failed.push((i, RecordError { kind, message }));
                continue;
            }
            if already_committed {
                for column in &mut columns {
                    column.clear();
                }
                continue;
            }
            appended.rows += n as u64;
            if columns[0].len() >= CHUNK_ROWS_MAX {
                let batch = sluice_convert::columns::record_batch(&hive, &converted_schema, &mut columns);
                partitions.write(&mut writer, schema::cast_to(&batch, &target)?).await?;
            }
        }
        if !columns[0].is_empty() {
            let batch = sluice_convert::columns::record_batch(&hive, &converted_schema, &mut columns);
            partitions.write(&mut writer, schema::cast_to(&batch, &target)?).await?;
        }
        if already_committed || appended.rows == 0 {
            // Nothing was written: the data file writer made no file.
            return Ok(appended);
        }
        let data_files = writer.close().await.map_err(write_error)?;
        let transaction = Transaction::new(&loaded);
        let action = transaction
            .fast_append()
            .set_commit_uuid(batch_uuid)
            .add_data_files(data_files)
            .set_snapshot_properties(HashMap::from([(BATCH_ID_PROPERTY.to_string(), batch_id.to_string())]));
        let transaction = action.apply(transaction).map_err(write_error)?;
        transaction.commit(self.catalog.as_ref()).await.map_err(write_error)?;
        Ok(appended)
    }
}

/// How a table's rows are split into partitions: by its default partition spec.
enum Partitions {
    /// Every row in one partition (the spec's empty key).
    None(PartitionKey),
    /// By the spec's transforms of each row's source columns.
    Split(Box<RecordBatchPartitionSplitter>),
}

impl Partitions {
    fn of(metadata: &TableMetadata) -> Result<Partitions, IcebergError> {
        let spec = metadata.default_partition_spec().clone();
        let schema = metadata.current_schema().clone();
        if spec.is_unpartitioned() {
            return Ok(Partitions::None(PartitionKey::new(spec.as_ref().clone(), schema, Struct::empty())));
        }
        RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)
            .map(|splitter| Partitions::Split(Box::new(splitter)))
            .map_err(|e| IcebergError::Schema(format!("Sluice cannot write this table's partition spec: {e}")))
    }

    /// Writes `batch`'s rows, each to its partition's data files.
    async fn write<W: PartitioningWriter>(&self, writer: &mut W, batch: RecordBatch) -> Result<(), IcebergError> {
        match self {
            Partitions::None(key) => writer.write(key.clone(), batch).await.map_err(write_error),
            Partitions::Split(splitter) => {
                let mut parts = splitter.split(&batch).map_err(write_error)?;
                // In path order, so a redo of the batch names its files as the first
                // try did (file numbers count up over the batch's partitions).
                parts.sort_by_cached_key(|(key, _)| key.to_path());
                for (key, part) in parts {
                    writer.write(key, part).await.map_err(write_error)?;
                }
                Ok(())
            }
        }
    }
}

/// Whether a snapshot of the table carries `batch_id`.
fn committed(metadata: &TableMetadata, batch_id: &str) -> bool {
    metadata
        .snapshots()
        .any(|s| s.summary().additional_properties.get(BATCH_ID_PROPERTY).map(String::as_str) == Some(batch_id))
}

/// The Hive view of the table's schema and how its rows are partitioned, if
/// Sluice writes this table: one with types it reads JSON into and a partition
/// spec it computes.
fn writable(metadata: &TableMetadata) -> Result<(sluice_convert::TableSchema, Partitions), IcebergError> {
    Ok((schema::table_schema(metadata.current_schema())?, Partitions::of(metadata)?))
}
