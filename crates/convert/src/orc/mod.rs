//! The ORC writer: `OrcSerDe`'s options and a file written in memory (the
//! object's body). Last step of a conversion to ORC, beside `parquet`.
//!
//! Written here rather than with the `orc-rust` crate: its writer gained dates,
//! timestamps and compression only in a release built on arrow 59, while the
//! Iceberg crate pins arrow 58, and one arrow major serves every columnar crate.
//! It writes what ORC readers have known since Hive 0.11, and nothing optional:
//!
//! * The file: `ORC`, the stripes, the footer, the postscript and one byte with
//!   the postscript's length. The footer holds the schema (Hive's types as ORC
//!   types, the root a struct of the table's columns), each stripe's place and
//!   rows, and per column how many values it holds and whether one was null. No
//!   row index (`rowIndexStride` 0), no bloom filters, no stripe statistics.
//! * A stripe: each column's streams in pre-order, then the stripe footer naming
//!   each stream's kind, column and length, every column `DIRECT` encoded (run
//!   lengths version 1, strings as bytes and lengths), timestamps written in UTC.
//!   A stripe closes once its buffered streams reach `StripeSizeBytes`.
//! * Compression (`ZLIB`: raw deflate, or `SNAPPY`) in chunks of at most 256 KiB,
//!   each behind a 3-byte header (length times two, plus one if the chunk is
//!   stored as it was because compressing did not shrink it); the postscript is
//!   never compressed.

mod column;
mod encoding;
mod proto;

use std::io::Write;

use arrow_array::RecordBatch;
use prost::Message;

use crate::hive::HiveType;
use crate::json::Cell;
use crate::schema::TableSchema;
use crate::ConvertError;
use column::{timestamp_fits, Column};
use proto::CompressionKind;

/// A timestamp in `cell` (of type `t`) that ORC cannot hold, in milliseconds
/// since the epoch; see [`timestamp_fits`].
pub(crate) fn unfit_timestamp(cell: &Cell, t: &HiveType) -> Option<i64> {
    match (cell, t) {
        (Cell::Timestamp(ms), _) => (!timestamp_fits(*ms)).then_some(*ms),
        (Cell::List(items), HiveType::Array(element)) => items.iter().find_map(|c| unfit_timestamp(c, element)),
        (Cell::Map(entries), HiveType::Map(key, value)) => {
            entries.iter().find_map(|(k, v)| unfit_timestamp(k, key).or_else(|| unfit_timestamp(v, value)))
        }
        (Cell::Struct(values), HiveType::Struct(fields)) => {
            values.iter().zip(fields).find_map(|(c, (_, t))| unfit_timestamp(c, t))
        }
        _ => None,
    }
}

/// Uncompressed bytes per compression chunk: ORC's default.
const COMPRESSION_CHUNK_BYTES: usize = 256 << 10;

/// The writer version the postscript names: ORC-135, timestamps in UTC.
const WRITER_VERSION: u32 = 6;

/// `OrcSerDe`, with Firehose's defaults. Options of `OrcSerDe` not here have no
/// effect in Sluice (see the README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrcOptions {
    /// `Compression`: `NONE`, `ZLIB` or `SNAPPY` (the default).
    pub compression: OrcCompression,
    /// `StripeSizeBytes`: a stripe closes once its data reaches this size (default
    /// 64 MiB, at least 8 MiB).
    pub stripe_bytes: u64,
    /// `FormatVersion` `V0_11` (else `V0_12`, the default): the version the file
    /// names. Both are written alike, with the encodings of 0.11.
    pub version_0_11: bool,
}

/// `OrcSerDe.Compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcCompression {
    /// `NONE`
    None,
    /// `ZLIB`
    Zlib,
    /// `SNAPPY`
    Snappy,
}

impl Default for OrcOptions {
    fn default() -> Self {
        OrcOptions { compression: OrcCompression::Snappy, stripe_bytes: 64 << 20, version_0_11: false }
    }
}

/// An ORC file being written into memory.
pub(crate) struct OrcFile {
    out: Vec<u8>,
    root: Column,
    types: Vec<proto::Type>,
    stripes: Vec<proto::StripeInformation>,
    stripe_rows: u64,
    rows: u64,
    options: OrcOptions,
}

impl OrcFile {
    pub(crate) fn new(schema: &TableSchema, options: &OrcOptions) -> OrcFile {
        let columns: Vec<(String, HiveType)> =
            schema.columns.iter().map(|c| (c.name.clone(), c.hive_type.clone())).collect();
        let mut types = Vec::new();
        let root = Column::root(&columns, &mut types);
        OrcFile {
            out: b"ORC".to_vec(),
            root,
            types,
            stripes: Vec::new(),
            stripe_rows: 0,
            rows: 0,
            options: options.clone(),
        }
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ConvertError> {
        self.root.write_columns(batch.columns(), batch.num_rows());
        self.stripe_rows += batch.num_rows() as u64;
        if self.root.buffered_bytes() as u64 >= self.options.stripe_bytes {
            self.finish_stripe()?;
        }
        Ok(())
    }

    fn finish_stripe(&mut self) -> Result<(), ConvertError> {
        if self.stripe_rows == 0 {
            return Ok(());
        }
        let offset = self.out.len() as u64;
        let mut streams = Vec::new();
        self.root.finish_stripe(&mut streams);
        let mut footer = proto::StripeFooter {
            streams: Vec::with_capacity(streams.len()),
            columns: vec![
                proto::ColumnEncoding { kind: Some(proto::ColumnEncodingKind::Direct as i32) };
                self.root.count()
            ],
            writer_timezone: Some("UTC".into()),
        };
        for (kind, column, bytes) in streams {
            let before = self.out.len();
            self.compress(&bytes)?;
            footer.streams.push(proto::Stream {
                kind: Some(kind as i32),
                column: Some(column),
                length: Some((self.out.len() - before) as u64),
            });
        }
        let data_length = self.out.len() as u64 - offset;
        let before = self.out.len();
        self.compress(&footer.encode_to_vec())?;
        self.stripes.push(proto::StripeInformation {
            offset: Some(offset),
            index_length: Some(0),
            data_length: Some(data_length),
            footer_length: Some((self.out.len() - before) as u64),
            number_of_rows: Some(self.stripe_rows),
        });
        self.rows += std::mem::take(&mut self.stripe_rows);
        Ok(())
    }

    /// Appends `bytes` compressed as the options say, in chunks.
    fn compress(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        let failed = |e: std::io::Error| ConvertError::Writer(format!("compressing an ORC stream: {e}"));
        if self.options.compression == OrcCompression::None {
            self.out.extend_from_slice(bytes);
            return Ok(());
        }
        for chunk in bytes.chunks(COMPRESSION_CHUNK_BYTES) {
            let compressed = match self.options.compression {
                OrcCompression::Zlib => {
                    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                    encoder.write_all(chunk).map_err(failed)?;
                    encoder.finish().map_err(failed)?
                }
                OrcCompression::Snappy => snap::raw::Encoder::new()
                    .compress_vec(chunk)
                    .map_err(|e| ConvertError::Writer(format!("compressing an ORC stream: {e}")))?,
                OrcCompression::None => unreachable!("handled above"),
            };
            let (header, body) = if compressed.len() < chunk.len() {
                (compressed.len() << 1, compressed.as_slice())
            } else {
                (chunk.len() << 1 | 1, chunk)
            };
            self.out.extend_from_slice(&(header as u32).to_le_bytes()[..3]);
            self.out.extend_from_slice(body);
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Vec<u8>, ConvertError> {
        self.finish_stripe()?;
        let mut statistics = Vec::new();
        self.root.statistics(&mut statistics);
        let footer = proto::Footer {
            header_length: Some(3),
            content_length: Some(self.out.len() as u64),
            stripes: std::mem::take(&mut self.stripes),
            types: std::mem::take(&mut self.types),
            number_of_rows: Some(self.rows),
            statistics,
            row_index_stride: Some(0),
        };
        let before = self.out.len();
        self.compress(&footer.encode_to_vec())?;
        let compression = match self.options.compression {
            OrcCompression::None => CompressionKind::None,
            OrcCompression::Zlib => CompressionKind::Zlib,
            OrcCompression::Snappy => CompressionKind::Snappy,
        };
        let postscript = proto::PostScript {
            footer_length: Some((self.out.len() - before) as u64),
            compression: Some(compression as i32),
            compression_block_size: Some(COMPRESSION_CHUNK_BYTES as u64),
            version: vec![0, if self.options.version_0_11 { 11 } else { 12 }],
            metadata_length: Some(0),
            writer_version: Some(WRITER_VERSION),
            magic: Some("ORC".into()),
        }
        .encode_to_vec();
        self.out.extend_from_slice(&postscript);
        // A postscript of the fields above is a few dozen bytes.
        self.out.push(u8::try_from(postscript.len()).expect("a postscript under 256 bytes"));
        Ok(self.out)
    }
}
