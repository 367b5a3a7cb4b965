//! One ORC column of a stripe: its arrow values turned into its streams, and its
//! children's. The tree mirrors the table's Hive types; columns are numbered in
//! pre-order from the root struct (0), as the file's type list is.
//!
//! A child holds values only where its parent is present: a struct's fields for
//! its non-null rows, a list's or a map's children for the elements of its
//! non-null rows. Arrow keeps child values under null parents too, so every
//! column is handed the indices of the rows it holds.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMillisecondType,
};
use arrow_array::{Array, ArrayRef};

use super::encoding::{put_signed_varint, BoolRle, ByteRle, IntRle};
use super::proto::{self, StreamKind, TypeKind};
use crate::hive::HiveType;

/// Seconds from the epoch to 2015-01-01 00:00:00 UTC: ORC counts timestamp
/// seconds from there.
const TIMESTAMP_BASE_S: i64 = 1_420_070_400;

/// Whether ORC can hold a timestamp of `ms` milliseconds since the epoch. Readers
/// take the seconds of a negative timestamp as rounded toward zero, so within the
/// second before the epoch the value read back is a second off (ORC-763): such a
/// record fails instead of being written wrong.
pub(crate) fn timestamp_fits(ms: i64) -> bool {
    !(-1000 < ms && ms < 0)
}

pub(crate) struct Column {
    pub(crate) id: u32,
    present: BoolRle,
    /// Non-null values this stripe and in the whole file.
    values: u64,
    file_values: u64,
    file_has_null: bool,
    data: Data,
}

enum Data {
    Boolean(BoolRle),
    Byte(ByteRle),
    /// `smallint`, `int`, `bigint`, `date` (days).
    Int(IntRle),
    /// `float` and `double`, IEEE 754 little-endian.
    Float(Vec<u8>),
    Double(Vec<u8>),
    /// Strings and binary: the bytes, and each value's length.
    Bytes {
        data: Vec<u8>,
        lengths: IntRle,
    },
    /// Unscaled values as unbounded varints, and each value's scale.
    Decimal {
        data: Vec<u8>,
        scales: IntRle,
        scale: i64,
    },
    /// Seconds from 2015-01-01, and nanoseconds with their trailing zeros coded.
    Timestamp {
        seconds: IntRle,
        nanos: IntRle,
    },
    /// Each list's or map's length, then its children.
    List {
        lengths: IntRle,
        element: Box<Column>,
    },
    Map {
        lengths: IntRle,
        key: Box<Column>,
        value: Box<Column>,
    },
    Struct(Vec<Column>),
}

impl Column {
    /// The column of `t` numbered `next` (and its children after it), appending
    /// their types to `types`.
    pub(crate) fn new(t: &HiveType, next: &mut u32, types: &mut Vec<proto::Type>) -> Column {
        let id = *next;
        *next += 1;
        let at = types.len();
        types.push(proto::Type::default());
        let mut ty = proto::Type::default();
        let (kind, data) = match t {
            HiveType::Boolean => (TypeKind::Boolean, Data::Boolean(BoolRle::default())),
            HiveType::TinyInt => (TypeKind::Byte, Data::Byte(ByteRle::default())),
            HiveType::SmallInt => (TypeKind::Short, Data::Int(IntRle::signed())),
            HiveType::Int => (TypeKind::Int, Data::Int(IntRle::signed())),
            HiveType::BigInt => (TypeKind::Long, Data::Int(IntRle::signed())),
            HiveType::Float => (TypeKind::Float, Data::Float(Vec::new())),
            HiveType::Double => (TypeKind::Double, Data::Double(Vec::new())),
            HiveType::Decimal { precision, scale } => {
                ty.precision = Some(*precision as u32);
                ty.scale = Some(*scale as u32);
                (TypeKind::Decimal, Data::Decimal { data: Vec::new(), scales: IntRle::signed(), scale: *scale as i64 })
            }
            HiveType::String => (TypeKind::String, bytes()),
            HiveType::Char(n) => {
                ty.maximum_length = Some(*n);
                (TypeKind::Char, bytes())
            }
            HiveType::Varchar(n) => {
                ty.maximum_length = Some(*n);
                (TypeKind::Varchar, bytes())
            }
            HiveType::Binary => (TypeKind::Binary, bytes()),
            HiveType::Date => (TypeKind::Date, Data::Int(IntRle::signed())),
            HiveType::Timestamp => {
                (TypeKind::Timestamp, Data::Timestamp { seconds: IntRle::signed(), nanos: IntRle::unsigned() })
            }
            HiveType::Array(element) => {
                let element = Box::new(Column::new(element, next, types));
                ty.subtypes = vec![element.id];
                (TypeKind::List, Data::List { lengths: IntRle::unsigned(), element })
            }
            HiveType::Map(key, value) => {
                let key = Box::new(Column::new(key, next, types));
                let value = Box::new(Column::new(value, next, types));
                ty.subtypes = vec![key.id, value.id];
                (TypeKind::Map, Data::Map { lengths: IntRle::unsigned(), key, value })
            }
            HiveType::Struct(fields) => {
                let children: Vec<Column> = fields.iter().map(|(_, t)| Column::new(t, next, types)).collect();
                ty.subtypes = children.iter().map(|c| c.id).collect();
                ty.field_names = fields.iter().map(|(name, _)| name.clone()).collect();
                (TypeKind::Struct, Data::Struct(children))
            }
        };
        ty.kind = Some(kind as i32);
        types[at] = ty;
        Column { id, present: BoolRle::default(), values: 0, file_values: 0, file_has_null: false, data }
    }

    /// The root: a struct of the table's columns, as Hive writes it.
    pub(crate) fn root(columns: &[(String, HiveType)], types: &mut Vec<proto::Type>) -> Column {
        Column::new(&HiveType::Struct(columns.to_vec()), &mut 0, types)
    }

    /// Appends the values of `array` at `rows`.
    pub(crate) fn write(&mut self, array: &dyn Array, rows: &[usize]) {
        let mut present = Vec::with_capacity(rows.len());
        for &i in rows {
            let valid = array.is_valid(i);
            self.present.push(valid);
            if valid {
                present.push(i);
            }
        }
        self.values += present.len() as u64;
        self.file_has_null |= present.len() < rows.len();
        match &mut self.data {
            Data::Boolean(out) => {
                let a = array.as_boolean();
                present.iter().for_each(|&i| out.push(a.value(i)));
            }
            Data::Byte(out) => {
                let a = array.as_primitive::<Int8Type>();
                present.iter().for_each(|&i| out.push(a.value(i) as u8));
            }
            Data::Int(out) => match array.data_type() {
                arrow_schema::DataType::Int16 => {
                    let a = array.as_primitive::<Int16Type>();
                    present.iter().for_each(|&i| out.push(a.value(i) as i64));
                }
                arrow_schema::DataType::Int32 => {
                    let a = array.as_primitive::<Int32Type>();
                    present.iter().for_each(|&i| out.push(a.value(i) as i64));
                }
                arrow_schema::DataType::Date32 => {
                    let a = array.as_primitive::<Date32Type>();
                    present.iter().for_each(|&i| out.push(a.value(i) as i64));
                }
                _ => {
                    let a = array.as_primitive::<Int64Type>();
                    present.iter().for_each(|&i| out.push(a.value(i)));
                }
            },
            Data::Float(out) => {
                let a = array.as_primitive::<Float32Type>();
                present.iter().for_each(|&i| out.extend_from_slice(&a.value(i).to_le_bytes()));
            }
            Data::Double(out) => {
                let a = array.as_primitive::<Float64Type>();
                present.iter().for_each(|&i| out.extend_from_slice(&a.value(i).to_le_bytes()));
            }
            Data::Bytes { data, lengths } => {
                let mut put = |value: &[u8]| {
                    data.extend_from_slice(value);
                    lengths.push(value.len() as i64);
                };
                match array.data_type() {
                    arrow_schema::DataType::Binary => {
                        let a = array.as_binary::<i32>();
                        present.iter().for_each(|&i| put(a.value(i)));
                    }
                    _ => {
                        let a = array.as_string::<i32>();
                        present.iter().for_each(|&i| put(a.value(i).as_bytes()));
                    }
                }
            }
            Data::Decimal { data, scales, scale } => {
                let a = array.as_primitive::<Decimal128Type>();
                for &i in &present {
                    put_signed_varint(data, a.value(i));
                    scales.push(*scale);
                }
            }
            Data::Timestamp { seconds, nanos } => {
                let a = array.as_primitive::<TimestampMillisecondType>();
                for &i in &present {
                    let (s, n) = timestamp(a.value(i));
                    seconds.push(s);
                    nanos.push(n);
                }
            }
            Data::List { lengths, element } => {
                let a = array.as_list::<i32>();
                let children = elements(a.value_offsets(), &present, lengths);
                element.write(a.values().as_ref(), &children);
            }
            Data::Map { lengths, key, value } => {
                let a = array.as_map();
                let children = elements(a.value_offsets(), &present, lengths);
                key.write(a.keys().as_ref(), &children);
                value.write(a.values().as_ref(), &children);
            }
            Data::Struct(children) => {
                let a = array.as_struct();
                for (child, values) in children.iter_mut().zip(a.columns()) {
                    child.write(values.as_ref(), &present);
                }
            }
        }
    }

    /// Appends the top-level columns of a batch (this is the root).
    pub(crate) fn write_columns(&mut self, columns: &[ArrayRef], rows: usize) {
        let all: Vec<usize> = (0..rows).collect();
        (0..rows).for_each(|_| self.present.push(true));
        self.values += rows as u64;
        let Data::Struct(children) = &mut self.data else { unreachable!("the root is a struct") };
        for (child, values) in children.iter_mut().zip(columns) {
            child.write(values.as_ref(), &all);
        }
    }

    /// Bytes buffered in this stripe, before compression.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.present.len()
            + match &self.data {
                Data::Boolean(out) => out.len(),
                Data::Byte(out) => out.len(),
                Data::Int(out) => out.len(),
                Data::Float(out) | Data::Double(out) => out.len(),
                Data::Bytes { data, lengths } => data.len() + lengths.len(),
                Data::Decimal { data, scales, .. } => data.len() + scales.len(),
                Data::Timestamp { seconds, nanos } => seconds.len() + nanos.len(),
                Data::List { lengths, element } => lengths.len() + element.buffered_bytes(),
                Data::Map { lengths, key, value } => lengths.len() + key.buffered_bytes() + value.buffered_bytes(),
                Data::Struct(children) => children.iter().map(Column::buffered_bytes).sum(),
            }
    }

    /// Ends the stripe: this column's and its children's streams, in pre-order,
    /// each with its kind and column. The `PRESENT` stream only if a value was null.
    pub(crate) fn finish_stripe(&mut self, streams: &mut Vec<(StreamKind, u32, Vec<u8>)>) {
        let present = self.present.any_false();
        let bits = self.present.finish();
        if present {
            streams.push((StreamKind::Present, self.id, bits));
        }
        self.file_values += std::mem::take(&mut self.values);
        let id = self.id;
        let mut push = |kind, bytes: Vec<u8>| streams.push((kind, id, bytes));
        match &mut self.data {
            Data::Boolean(out) => push(StreamKind::Data, out.finish()),
            Data::Byte(out) => push(StreamKind::Data, out.finish()),
            Data::Int(out) => push(StreamKind::Data, out.finish()),
            Data::Float(out) | Data::Double(out) => push(StreamKind::Data, std::mem::take(out)),
            Data::Bytes { data, lengths } => {
                push(StreamKind::Data, std::mem::take(data));
                push(StreamKind::Length, lengths.finish());
            }
            Data::Decimal { data, scales, .. } => {
                push(StreamKind::Data, std::mem::take(data));
                push(StreamKind::Secondary, scales.finish());
            }
            Data::Timestamp { seconds, nanos } => {
                push(StreamKind::Data, seconds.finish());
                push(StreamKind::Secondary, nanos.finish());
            }
            Data::List { lengths, element } => {
                push(StreamKind::Length, lengths.finish());
                element.finish_stripe(streams);
            }
            Data::Map { lengths, key, value } => {
                push(StreamKind::Length, lengths.finish());
                key.finish_stripe(streams);
                value.finish_stripe(streams);
            }
            Data::Struct(children) => children.iter_mut().for_each(|c| c.finish_stripe(streams)),
        }
    }

    /// The file's statistics of this column and its children, in pre-order.
    pub(crate) fn statistics(&self, out: &mut Vec<proto::ColumnStatistics>) {
        out.push(proto::ColumnStatistics {
            number_of_values: Some(self.file_values),
            has_null: Some(self.file_has_null),
        });
        match &self.data {
            Data::List { element, .. } => element.statistics(out),
            Data::Map { key, value, .. } => {
                key.statistics(out);
                value.statistics(out);
            }
            Data::Struct(children) => children.iter().for_each(|c| c.statistics(out)),
            _ => {}
        }
    }

    /// Columns in this subtree.
    pub(crate) fn count(&self) -> usize {
        1 + match &self.data {
            Data::List { element, .. } => element.count(),
            Data::Map { key, value, .. } => key.count() + value.count(),
            Data::Struct(children) => children.iter().map(Column::count).sum(),
            _ => 0,
        }
    }
}

fn bytes() -> Data {
    Data::Bytes { data: Vec::new(), lengths: IntRle::unsigned() }
}

/// Writes the lengths of the lists at `present` and returns their elements' indices.
fn elements(offsets: &[i32], present: &[usize], lengths: &mut IntRle) -> Vec<usize> {
    let mut children = Vec::new();
    for &i in present {
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        lengths.push((end - start) as i64);
        children.extend(start..end);
    }
    children
}

/// A timestamp's two ORC values: seconds from 2015-01-01, with the seconds of a
/// negative timestamp rounded toward zero as readers expect them; nanoseconds with
/// the count of trailing decimal zeros removed (less 1) in the low three bits.
fn timestamp(ms: i64) -> (i64, i64) {
    let mut seconds = ms.div_euclid(1000);
    let nanos = ms.rem_euclid(1000) * 1_000_000;
    if seconds < 0 && nanos > 0 {
        seconds += 1;
    }
    (seconds - TIMESTAMP_BASE_S, encoded_nanos(nanos))
}

fn encoded_nanos(nanos: i64) -> i64 {
    if nanos == 0 || nanos % 100 != 0 {
        return nanos << 3;
    }
    let (mut value, mut zeros) = (nanos / 100, 2);
    while value % 10 == 0 && zeros < 8 {
        value /= 10;
        zeros += 1;
    }
    (value << 3) | (zeros - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded_nanos(v: i64) -> i64 {
        let zeros = v & 7;
        let value = v >> 3;
        if zeros == 0 {
            value
        } else {
            value * 10i64.pow(zeros as u32 + 1)
        }
    }

    #[test]
    fn nanoseconds_lose_their_trailing_zeros_and_come_back() {
        assert_eq!(encoded_nanos(0), 0);
        assert_eq!(encoded_nanos(1_000_000), (1 << 3) | 5);
        for nanos in [1, 7, 100, 120_000_000, 999_000_000, 500_000_000, 999_999_999, 10] {
            assert_eq!(decoded_nanos(encoded_nanos(nanos)), nanos, "{nanos}");
        }
    }

    #[test]
    fn negative_timestamps_round_their_seconds_toward_zero() {
        // 1969-12-31T23:59:58.500Z: seconds -1 (toward zero), nanos 500 ms.
        assert_eq!(timestamp(-1500), (-1 - TIMESTAMP_BASE_S, encoded_nanos(500_000_000)));
        assert_eq!(timestamp(-2000), (-2 - TIMESTAMP_BASE_S, 0));
        assert_eq!(timestamp(TIMESTAMP_BASE_S * 1000 + 1), (0, encoded_nanos(1_000_000)));
        assert!(!timestamp_fits(-1) && !timestamp_fits(-999));
        assert!(timestamp_fits(-1000) && timestamp_fits(0) && timestamp_fits(-1001));
    }
}
