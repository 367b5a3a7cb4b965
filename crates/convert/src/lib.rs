//! Data format conversion (issue 14): JSON records in, one columnar file out, under
//! the schema of a Glue table. Sits in a delivery lane between processing and the
//! object upload: the records of a batch (or of one of its partitions), after
//! Lambda and the other processors, become the rows of one Parquet object.
//!
//! The steps: the table's columns and their Hive types (`schema`, `hive`), the
//! input deserializer turning each record into rows of typed cells (`json`, with
//! `timestamp` and `joda` for the time forms), cells to arrow arrays (`columns`),
//! and the file writer (`parquet` or `orc`). A record that does not fit fails
//! alone ([`RecordError`]); the rest are written.
//!
//! This crate knows nothing of Firehose's wire format, HTTP servers or the log.
//! It holds the heavy columnar dependencies (arrow, parquet), so that the log,
//! the protocol and the edge build and test without them.

pub mod columns;
pub mod hive;
pub mod joda;
pub mod json;
pub mod orc;
pub mod parquet;
pub mod schema;
pub mod timestamp;

use arrow_schema::SchemaRef;

pub use hive::{HiveType, TypeError};
pub use json::{Cell, InputFormat, RecordError, RecordErrorKind, TimestampFormat};
pub use orc::{OrcCompression, OrcOptions};
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
    /// `OrcSerDe`.
    Orc(OrcOptions),
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
    /// Whether a column holds timestamps, at any depth (ORC cannot hold them all).
    timestamps: bool,
}

impl Conversion {
    /// Sets up a conversion.
    pub fn new(schema: TableSchema, input: InputFormat, output: OutputFormat) -> Result<Conversion, ConvertError> {
        if schema.columns.is_empty() {
            return Err(SchemaError::NoColumns.into());
        }
        let arrow = columns::arrow_schema(&schema);
        let timestamps = schema.columns.iter().any(|c| c.hive_type.contains(&HiveType::Timestamp));
        Ok(Conversion { schema, arrow, input, output, timestamps })
    }

    /// The table's schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The extension of the objects written, when `FileExtension` does not say.
    pub fn extension(&self) -> &'static str {
        match self.output {
            OutputFormat::Parquet(_) => ".parquet",
            OutputFormat::Orc(_) => ".orc",
        }
    }

    /// Starts a file.
    pub fn file(&self) -> Result<FileWriter<'_>, ConvertError> {
        let file = match &self.output {
            OutputFormat::Parquet(options) => {
                File::Parquet(Box::new(parquet::ParquetFile::new(self.arrow.clone(), options)?))
            }
            OutputFormat::Orc(options) => File::Orc(Box::new(orc::OrcFile::new(&self.schema, options))),
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
    file: File,
    /// A writer failure, kept for [`FileWriter::finish`].
    failed: Option<ConvertError>,
}

enum File {
    Parquet(Box<parquet::ParquetFile>),
    Orc(Box<orc::OrcFile>),
}

impl FileWriter<'_> {
    /// Converts one record: its rows are in the file, or (on an error) none is.
    /// Returns how many rows it had.
    pub fn push(&mut self, record: &[u8]) -> Result<usize, RecordError> {
        let conversion = self.conversion;
        let n = conversion.input.read(&conversion.schema, record, &mut self.columns)?;
        if conversion.timestamps && matches!(self.file, File::Orc(_)) {
            self.check_orc_timestamps(n)?;
        }
        self.pending_rows += n;
        self.rows += n as u64;
        if self.pending_rows >= CHUNK_ROWS_MAX {
            self.write_chunk();
        }
        Ok(n)
    }

    /// Fails (and takes back) the last `n` rows if a timestamp in them is one ORC
    /// cannot hold.
    fn check_orc_timestamps(&mut self, n: usize) -> Result<(), RecordError> {
        let schema = &self.conversion.schema;
        let unfit = schema.columns.iter().zip(&self.columns).find_map(|(column, cells)| {
            cells[cells.len() - n..]
                .iter()
                .find_map(|cell| orc::unfit_timestamp(cell, &column.hive_type).map(|ms| (column, ms)))
        });
        let Some((column, ms)) = unfit else { return Ok(()) };
        for cells in &mut self.columns {
            cells.truncate(cells.len() - n);
        }
        Err(RecordError {
            kind: RecordErrorKind::Malformed,
            message: format!(
                "Data does not match the schema. Column {}: the timestamp {ms} ms since the epoch (in the second before 1970-01-01) cannot be written to ORC (ORC-763).",
                column.name
            ),
        })
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
        let written = match &mut self.file {
            File::Parquet(file) => file.write(&batch),
            File::Orc(file) => file.write(&batch),
        };
        if let Err(error) = written {
            self.failed = Some(error);
        }
    }

    /// The file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, ConvertError> {
        self.write_chunk();
        if let Some(error) = self.failed {
            return Err(error);
        }
        match self.file {
            File::Parquet(file) => file.finish(),
            File::Orc(file) => file.finish(),
        }
    }
}
