//! Cells to arrow: the arrow type of each Hive type, and the arrays a chunk of
//! rows becomes. Second step of a conversion, between the deserializer (`json`)
//! and the file writers (`parquet`, `orc`), which take arrow record batches.
//!
//! Types as Hive's writers store them: `tinyint` to `bigint` as 8 to 64-bit
//! integers, `float` and `double`, `decimal(p,s)` as a 128-bit decimal,
//! `string`/`char`/`varchar` as UTF-8, `binary`, `date` as days, `timestamp` as
//! milliseconds since the epoch in UTC (Firehose's Parquet holds the legacy INT96
//! form; readers give the same instants for both), lists, maps and structs with
//! the field names the Parquet specification uses (`element`, `key_value`, `key`,
//! `value`). Every column and field is nullable, as in Hive.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, Int8Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{Array, ArrayRef, ListArray, MapArray, RecordBatch, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::hive::HiveType;
use crate::json::Cell;
use crate::schema::TableSchema;

/// The arrow schema of a table.
pub fn arrow_schema(schema: &TableSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.columns.iter().map(|c| Field::new(&c.name, arrow_type(&c.hive_type), true)).collect::<Vec<_>>(),
    ))
}

/// The arrow type a Hive type is written as.
pub fn arrow_type(t: &HiveType) -> DataType {
    match t {
        HiveType::Boolean => DataType::Boolean,
        HiveType::TinyInt => DataType::Int8,
        HiveType::SmallInt => DataType::Int16,
        HiveType::Int => DataType::Int32,
        HiveType::BigInt => DataType::Int64,
        HiveType::Float => DataType::Float32,
        HiveType::Double => DataType::Float64,
        HiveType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale as i8),
        HiveType::String | HiveType::Char(_) | HiveType::Varchar(_) => DataType::Utf8,
        HiveType::Binary => DataType::Binary,
        HiveType::Date => DataType::Date32,
        HiveType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        HiveType::Array(element) => DataType::List(Arc::new(Field::new("element", arrow_type(element), true))),
        HiveType::Map(key, value) => {
            DataType::Map(Arc::new(Field::new("key_value", map_entries(key, value), false)), false)
        }
        HiveType::Struct(fields) => DataType::Struct(struct_fields(fields)),
    }
}

fn map_entries(key: &HiveType, value: &HiveType) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("key", arrow_type(key), false),
        Field::new("value", arrow_type(value), true),
    ]))
}

fn struct_fields(fields: &[(String, HiveType)]) -> Fields {
    fields.iter().map(|(name, t)| Field::new(name, arrow_type(t), true)).collect()
}

/// The record batch of `columns` (one `Vec` of cells per column, all of one
/// length), emptied as they are read.
pub fn record_batch(schema: &TableSchema, arrow: &SchemaRef, columns: &mut [Vec<Cell>]) -> RecordBatch {
    let arrays: Vec<ArrayRef> = schema
        .columns
        .iter()
        .zip(columns.iter_mut())
        .map(|(c, cells)| array(&c.hive_type, std::mem::take(cells)))
        .collect();
    RecordBatch::try_new(arrow.clone(), arrays).expect("arrays are built to the schema's types and one length")
}

/// One column's array. Cells were read for this type, so a mismatch is a bug.
fn array(t: &HiveType, cells: Vec<Cell>) -> ArrayRef {
    // Appends every cell to `builder` (made for `cells.len()` values): `$pattern`'s
    // value, or a null.
    macro_rules! scalar {
        ($builder:expr, $pattern:pat => $value:expr) => {{
            let mut b = $builder;
            for cell in cells {
                match cell {
                    $pattern => b.append_value($value),
                    Cell::Null => b.append_null(),
                    other => unreachable!("{other:?} read for {t}"),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let n = cells.len();
    // The bytes of a string or binary column, for its builder's capacity.
    let byte_len = |cells: &[Cell]| -> usize {
        cells
            .iter()
            .map(|c| match c {
                Cell::Text(s) => s.len(),
                Cell::Bytes(b) => b.len(),
                _ => 0,
            })
            .sum()
    };
    match t {
        HiveType::Boolean => scalar!(BooleanBuilder::with_capacity(n), Cell::Bool(v) => v),
        HiveType::TinyInt => scalar!(Int8Builder::with_capacity(n), Cell::Int(v) => v as i8),
        HiveType::SmallInt => scalar!(Int16Builder::with_capacity(n), Cell::Int(v) => v as i16),
        HiveType::Int => scalar!(Int32Builder::with_capacity(n), Cell::Int(v) => v as i32),
        HiveType::BigInt => scalar!(Int64Builder::with_capacity(n), Cell::Int(v) => v),
        HiveType::Float => scalar!(Float32Builder::with_capacity(n), Cell::Float(v) => v as f32),
        HiveType::Double => scalar!(Float64Builder::with_capacity(n), Cell::Float(v) => v),
        HiveType::Decimal { precision, scale } => scalar!(
            Decimal128Builder::with_capacity(n)
                .with_precision_and_scale(*precision, *scale as i8)
                .expect("the parser bounds precision and scale"),
            Cell::Decimal(v) => v
        ),
        HiveType::String | HiveType::Char(_) | HiveType::Varchar(_) => {
            scalar!(StringBuilder::with_capacity(n, byte_len(&cells)), Cell::Text(v) => v)
        }
        HiveType::Binary => scalar!(BinaryBuilder::with_capacity(n, byte_len(&cells)), Cell::Bytes(v) => v),
        HiveType::Date => scalar!(Date32Builder::with_capacity(n), Cell::Date(v) => v),
        HiveType::Timestamp => {
            scalar!(TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC"), Cell::Timestamp(v) => v)
        }
        HiveType::Array(element) => {
            let (lengths, valid, items) = nested(cells, |cell| match cell {
                Cell::List(items) => items,
                other => unreachable!("{other:?} read for an array"),
            });
            let values = array(element, items);
            let field = Arc::new(Field::new("element", arrow_type(element), true));
            Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(lengths), values, nulls(valid)))
        }
        HiveType::Map(key, value) => {
            let (lengths, valid, entries) = nested(cells, |cell| match cell {
                Cell::Map(entries) => entries,
                other => unreachable!("{other:?} read for a map"),
            });
            let (keys, values): (Vec<Cell>, Vec<Cell>) = entries.into_iter().unzip();
            let DataType::Struct(fields) = map_entries(key, value) else { unreachable!("entries are a struct") };
            let entries = StructArray::new(fields, vec![array(key, keys), array(value, values)], None);
            let field = Arc::new(Field::new("key_value", entries.data_type().clone(), false));
            Arc::new(MapArray::new(field, OffsetBuffer::from_lengths(lengths), entries, nulls(valid), false))
        }
        HiveType::Struct(fields) => {
            let mut valid = Vec::with_capacity(cells.len());
            let mut children: Vec<Vec<Cell>> = fields.iter().map(|_| Vec::with_capacity(cells.len())).collect();
            for cell in cells {
                match cell {
                    Cell::Struct(values) => {
                        valid.push(true);
                        for (child, value) in children.iter_mut().zip(values) {
                            child.push(value);
                        }
                    }
                    Cell::Null => {
                        valid.push(false);
                        for child in &mut children {
                            child.push(Cell::Null);
                        }
                    }
                    other => unreachable!("{other:?} read for a struct"),
                }
            }
            let arrays = fields.iter().zip(children).map(|((_, t), cells)| array(t, cells)).collect();
            Arc::new(StructArray::new(struct_fields(fields), arrays, nulls(valid)))
        }
    }
}

/// The lengths, validity and flattened items of list-like cells.
fn nested<T>(cells: Vec<Cell>, items_of: impl Fn(Cell) -> Vec<T>) -> (Vec<usize>, Vec<bool>, Vec<T>) {
    let mut lengths = Vec::with_capacity(cells.len());
    let mut valid = Vec::with_capacity(cells.len());
    let mut items = Vec::new();
    for cell in cells {
        if cell == Cell::Null {
            lengths.push(0);
            valid.push(false);
        } else {
            let these = items_of(cell);
            lengths.push(these.len());
            valid.push(true);
            items.extend(these);
        }
    }
    (lengths, valid, items)
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|&v| v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}
