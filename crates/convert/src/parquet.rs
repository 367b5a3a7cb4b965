//! The Parquet writer: `ParquetSerDe`'s options to the `parquet` crate's writer
//! properties, and a file written in memory (the object's body). Last step of a
//! conversion to Parquet.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};

use crate::ConvertError;

/// `ParquetSerDe`, with Firehose's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetOptions {
    /// `Compression`: `UNCOMPRESSED`, `GZIP` or `SNAPPY` (the default).
    pub compression: ParquetCompression,
    /// `BlockSizeBytes`: a row group closes once its data reaches this size
    /// (default 256 MiB, at least 64 MiB).
    pub block_bytes: u64,
    /// `PageSizeBytes`: the data page size (default 1 MiB, at least 64 KiB).
    pub page_bytes: u64,
    /// `EnableDictionaryCompression` (default false).
    pub dictionary: bool,
    /// `WriterVersion`: `V1` (the default) or `V2`.
    pub writer_version_2: bool,
}

/// `ParquetSerDe.Compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    /// `UNCOMPRESSED`
    Uncompressed,
    /// `GZIP`
    Gzip,
    /// `SNAPPY`
    Snappy,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: ParquetCompression::Snappy,
            block_bytes: 256 << 20,
            page_bytes: 1 << 20,
            dictionary: false,
            writer_version_2: false,
        }
    }
}

/// A Parquet file being written into memory.
pub(crate) struct ParquetFile {
    writer: ArrowWriter<Vec<u8>>,
}

impl ParquetFile {
    pub(crate) fn new(schema: SchemaRef, options: &ParquetOptions) -> Result<ParquetFile, ConvertError> {
        let block_bytes = usize::try_from(options.block_bytes).unwrap_or(usize::MAX);
        let compression = match options.compression {
            ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
            ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
            ParquetCompression::Snappy => Compression::SNAPPY,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_size_limit(options.page_bytes as usize)
            .set_dictionary_enabled(options.dictionary)
            .set_writer_version(if options.writer_version_2 {
                WriterVersion::PARQUET_2_0
            } else {
                WriterVersion::PARQUET_1_0
            })
            // Row groups close by size (`BlockSizeBytes`), not by row count.
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(Some(block_bytes))
            .set_created_by(format!("Sluice {}", env!("CARGO_PKG_VERSION")))
            .build();
        // The file carries Parquet's own types only (no serialized arrow schema), as
        // Hive's writer does: every reader takes the types from them.
        let options = parquet::arrow::arrow_writer::ArrowWriterOptions::new()
            .with_properties(properties)
            .with_skip_arrow_metadata(true);
        let writer = ArrowWriter::try_new_with_options(Vec::new(), schema, options)
            .map_err(|e| ConvertError::Writer(e.to_string()))?;
        Ok(ParquetFile { writer })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ConvertError> {
        self.writer.write(batch).map_err(|e| ConvertError::Writer(e.to_string()))
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>, ConvertError> {
        self.writer.into_inner().map_err(|e| ConvertError::Writer(e.to_string()))
    }
}
