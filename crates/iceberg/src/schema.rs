//! An Iceberg table's schema as conversion reads records for it: each Iceberg
//! type as the Hive type `sluice-convert` reads JSON into (`long` as `bigint`,
//! `timestamptz` as `timestamp`, ...), the rule that required fields are present,
//! and the cast of the converted arrow columns to the table's own arrow types
//! (microsecond timestamps, field ids), which the Parquet data files carry.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use iceberg::spec::{NestedFieldRef, PrimitiveType, Schema, Type};
use sluice_convert::{Cell, Column, HiveType, TableSchema};

use crate::IcebergError;

/// The Hive view of an Iceberg schema; types Sluice cannot read JSON into
/// (`time`, `uuid`, `fixed`, nanosecond timestamps) are refused, naming the column.
pub(crate) fn table_schema(schema: &Schema) -> Result<TableSchema, IcebergError> {
    let columns = schema
        .as_struct()
        .fields()
        .iter()
        .map(|field| {
            Ok(Column {
                name: field.name.to_lowercase(),
                hive_type: hive_type(&field.field_type)
                    .map_err(|t| IcebergError::Schema(format!("column {:?}: Sluice does not write {t}", field.name)))?,
            })
        })
        .collect::<Result<Vec<_>, IcebergError>>()?;
    Ok(TableSchema { columns })
}

fn hive_type(t: &Type) -> Result<HiveType, String> {
    Ok(match t {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => HiveType::Boolean,
            PrimitiveType::Int => HiveType::Int,
            PrimitiveType::Long => HiveType::BigInt,
            PrimitiveType::Float => HiveType::Float,
            PrimitiveType::Double => HiveType::Double,
            PrimitiveType::Decimal { precision, scale } if *precision <= 38 => {
                HiveType::Decimal { precision: *precision as u8, scale: *scale as u8 }
            }
            PrimitiveType::Date => HiveType::Date,
            PrimitiveType::Timestamp | PrimitiveType::Timestamptz => HiveType::Timestamp,
            PrimitiveType::String => HiveType::String,
            PrimitiveType::Binary => HiveType::Binary,
            other => return Err(format!("{other} columns")),
        },
        Type::Struct(s) => HiveType::Struct(
            s.fields()
                .iter()
                .map(|f| Ok((f.name.clone(), hive_type(&f.field_type)?)))
                .collect::<Result<_, String>>()?,
        ),
        Type::List(l) => HiveType::Array(Box::new(hive_type(&l.element_field.field_type)?)),
        Type::Map(m) => HiveType::Map(
            Box::new(hive_type(&m.key_field.field_type)?),
            Box::new(hive_type(&m.value_field.field_type)?),
        ),
    })
}

/// The first required field a row (its cells in column order) leaves empty, as
/// a path (`a.b`).
pub(crate) fn missing_required<'a>(fields: &[NestedFieldRef], row: impl Iterator<Item = &'a Cell>) -> Option<String> {
    fields.iter().zip(row).find_map(|(field, cell)| missing_in(field, cell))
}

fn missing_in(field: &NestedFieldRef, cell: &Cell) -> Option<String> {
    if *cell == Cell::Null {
        return field.required.then(|| field.name.clone());
    }
    let within = |inner: Option<String>| inner.map(|path| format!("{}.{path}", field.name));
    match (&*field.field_type, cell) {
        (Type::Struct(s), Cell::Struct(values)) => {
            within(s.fields().iter().zip(values).find_map(|(f, v)| missing_in(f, v)))
        }
        (Type::List(l), Cell::List(items)) => within(items.iter().find_map(|v| missing_in(&l.element_field, v))),
        (Type::Map(m), Cell::Map(entries)) => within(entries.iter().find_map(|(_, v)| missing_in(&m.value_field, v))),
        _ => None,
    }
}

/// The converted batch with the table's arrow types; `None` for a column whose
/// values cannot be cast (a bug: the Hive view was made from the same schema).
pub(crate) fn cast_to(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, IcebergError> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(array, field)| {
            arrow_cast::cast(array, field.data_type())
                .map_err(|e| IcebergError::Schema(format!("column {:?}: {e}", field.name())))
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(Arc::clone(target), columns).map_err(|e| IcebergError::Schema(e.to_string()))
}
