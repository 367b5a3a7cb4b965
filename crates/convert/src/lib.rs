//! Data format conversion (issue 14): JSON records in, one columnar file out, under
//! the schema of a Glue table. Sits in a delivery lane between processing and the
//! object upload: the records of a batch (or of one of its partitions), after
//! Lambda and the other processors, become the rows of one Parquet object.
//!
//! The steps: the table's columns and their Hive types (`schema`, `hive`), the
//! input deserializer turning each record into rows of typed cells (`json`, with
//! `timestamp` and `joda` for the time forms), cells to arrow arrays (`columns`),
//! and the file writer (`parquet`). A record that does not fit fails alone
//! ([`RecordError`]); the rest are written.
//!
//! This crate knows nothing of Firehose's wire format, HTTP servers or the log.
//! It holds the heavy columnar dependencies (arrow, parquet), so that the log,
//! the protocol and the edge build and test without them.

pub mod columns;
pub mod hive;
pub mod joda;
pub mod json;
pub mod parquet;
pub mod schema;
pub mod timestamp;

use arrow_schema::SchemaRef;

pub use hive::{HiveType, TypeError};
pub use json::{Cell, InputFormat, RecordError, RecordErrorKind, TimestampFormat};
pub use parquet::{ParquetCompression, ParquetOptions};
pub use schema::{Column, SchemaError, TableSchema};

/// Rows gathered before they become arrow arrays and go to the writer: bounds the
/// cells held at once, whatever the batch's size.
pub const CHUNK_ROWS_MAX: usize = 8192;

/// Why a conversion cannot be set up or a file not written: these fail the whole
/// batch (or refuse the stream), unlike a [`RecordError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The table's schema cannot be converted to.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The file writer failed.
    #[error("writing the file: {0}")]
    Writer(String),
}

/// The `OutputFormatConfiguration.Serializer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    /// `ParquetSerDe`.
    Parquet(ParquetOptions),
}

/// A stream's conversion: its table's schema, how records are read and how the
/// file is written. Built when the stream's schema is resolved; shared by the
/// batches converted under it.
#[derive(Debug)]
pub struct Conversion {
    schema: TableSchema,
    arrow: SchemaRef,
    input: InputFormat,
    output: OutputFormat,
}

impl Conversion {
    /// Sets up a conversion.
    pub fn new(schema: TableSchema, input: InputFormat, output: OutputFormat) -> Result<Conversion, ConvertError> {
        if schema.columns.is_empty() {
            return Err(SchemaError::NoColumns.into());
        }
        let arrow = columns::arrow_schema(&schema);
        Ok(Conversion { schema, arrow, input, output })
    }

    /// The table's schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The extension of the objects written, when `FileExtension` does not say.
    pub fn extension(&self) -> &'static str {
        match self.output {
            OutputFormat::Parquet(_) => ".parquet",
        }
    }

    /// Starts a file.
    pub fn file(&self) -> Result<FileWriter<'_>, ConvertError> {
        let file = match &self.output {
            OutputFormat::Parquet(options) => parquet::ParquetFile::new(self.arrow.clone(), options)?,
        };
        Ok(FileWriter {
            conversion: self,
            columns: vec![Vec::new(); self.schema.columns.len()],
            pending_rows: 0,
            rows: 0,
            file,
            failed: None,
        })
    }
}

/// One file being written: records go in one at a time, the file's bytes come out.
pub struct FileWriter<'a> {
    conversion: &'a Conversion,
    /// Cells of rows not yet handed to the writer, one `Vec` per column.
    columns: Vec<Vec<Cell>>,
    pending_rows: usize,
    rows: u64,
    file: parquet::ParquetFile,
    /// A writer failure, kept for [`FileWriter::finish`].
    failed: Option<ConvertError>,
}

impl FileWriter<'_> {
    /// Converts one record: its rows are in the file, or (on an error) none is.
    /// Returns how many rows it had.
    pub fn push(&mut self, record: &[u8]) -> Result<usize, RecordError> {
        let conversion = self.conversion;
        let n = conversion.input.read(&conversion.schema, record, &mut self.columns)?;
        self.pending_rows += n;
        self.rows += n as u64;
        if self.pending_rows >= CHUNK_ROWS_MAX {
            self.write_chunk();
        }
        Ok(n)
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn write_chunk(&mut self) {
        if self.pending_rows == 0 || self.failed.is_some() {
            return;
        }
        let batch = columns::record_batch(&self.conversion.schema, &self.conversion.arrow, &mut self.columns);
        self.pending_rows = 0;
        if let Err(error) = self.file.write(&batch) {
            self.failed = Some(error);
        }
    }

    /// The file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, ConvertError> {
        self.write_chunk();
        if let Some(error) = self.failed {
            return Err(error);
        }
        self.file.finish()
    }
}
