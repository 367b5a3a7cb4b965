//! The input deserializers: a record's JSON text to rows of typed cells under the
//! table's schema, as Firehose's OpenX JSON SerDe and Hive JSON SerDe read it.
//! First step of a conversion; `columns` then turns the cells into arrow arrays.
//!
//! Values are read lazily from the raw JSON text (`serde_json`'s `RawValue`): a
//! number is converted from its literal, so a `decimal(38,9)` keeps every digit
//! the record wrote, and keys the schema does not name are checked for syntax
//! but never built. The rules, shared by both SerDes unless said otherwise:
//! - several JSON values one after another in a record are several rows; a record
//!   with none, or a value that is not an object, fails the record;
//! - a column missing from the object, or `null`, is a null; keys that name no
//!   column are dropped;
//! - struct fields are matched without regard to case (OpenX: unless
//!   `CaseInsensitive` is false; Hive: always), OpenX may turn dots in keys into
//!   underscores and may map a column to another key (`ColumnToJsonKeyMappings`,
//!   top-level columns only); map keys are kept as written;
//! - numbers and booleans may be written as JSON strings; a string column takes
//!   any scalar's text and a nested value's JSON text; `varchar(n)` and `char(n)`
//!   keep their first n characters;
//! - a value that does not fit its column (an integer out of range, a decimal
//!   with more integer digits than its type has room for, a malformed date) fails
//!   the whole record rather than becoming a null or wrapping around: the record
//!   goes to the error output, where it can be found.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::hive::HiveType;
use crate::schema::TableSchema;
use crate::timestamp;

/// The `Deserializer` of an `InputFormatConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFormat {
    /// `OpenXJsonSerDe`.
    OpenX {
        /// `CaseInsensitive` (default true).
        case_insensitive: bool,
        /// `ConvertDotsInJsonKeysToUnderscores` (default false).
        dots_to_underscores: bool,
        /// `ColumnToJsonKeyMappings`: column (lower case) to the JSON key it reads.
        column_keys: HashMap<String, String>,
    },
    /// `HiveJsonSerDe`.
    Hive {
        /// `TimestampFormats`, tried in order before the default form.
        timestamp_formats: Vec<TimestampFormat>,
    },
}

impl Default for InputFormat {
    /// The OpenX SerDe with its defaults.
    fn default() -> Self {
        InputFormat::OpenX { case_insensitive: true, dots_to_underscores: false, column_keys: HashMap::new() }
    }
}

/// One of the Hive JSON SerDe's `TimestampFormats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampFormat {
    /// `millis`: epoch milliseconds.
    Millis,
    /// A Joda-Time pattern, as given.
    Pattern(crate::joda::Pattern),
}

/// Why a record was not converted; the record goes to the error output with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RecordError {
    /// What kind of failure.
    pub kind: RecordErrorKind,
    /// What is wrong, for the error record.
    pub message: String,
}

/// The kinds of [`RecordError`], each with Firehose's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// The record is not JSON.
    Parse,
    /// The record is JSON that does not fit the schema.
    Malformed,
}

impl RecordError {
    /// The `errorCode` of the error record.
    pub fn code(&self) -> &'static str {
        match self.kind {
            RecordErrorKind::Parse => "DataFormatConversion.ParseError",
            RecordErrorKind::Malformed => "DataFormatConversion.MalformedData",
        }
    }

    fn parse(message: impl fmt::Display) -> RecordError {
        RecordError { kind: RecordErrorKind::Parse, message: format!("The record is not valid JSON: {message}") }
    }

    fn malformed(message: impl fmt::Display) -> RecordError {
        RecordError { kind: RecordErrorKind::Malformed, message: format!("Data does not match the schema. {message}") }
    }
}

/// A value read for a column, in the form the writers take it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Missing, or JSON `null`.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `tinyint` to `bigint`, within the type's range.
    Int(i64),
    /// `float` (rounded to 32 bits when written) or `double`.
    Float(f64),
    /// `decimal(p, s)`: the unscaled value, within `p` digits.
    Decimal(i128),
    /// `string`, `char(n)`, `varchar(n)`.
    Text(String),
    /// `binary`.
    Bytes(Vec<u8>),
    /// `date`: days since 1970-01-01.
    Date(i32),
    /// `timestamp`: milliseconds since the epoch, UTC.
    Timestamp(i64),
    /// `array<...>`.
    List(Vec<Cell>),
    /// `map<...>`, entries in the order written.
    Map(Vec<(Cell, Cell)>),
    /// `struct<...>`, one cell per field.
    Struct(Vec<Cell>),
}

impl InputFormat {
    /// Appends the rows of one record to `columns` (one `Vec` of cells per column,
    /// in schema order), all or none: on an error, `columns` are as they were.
    /// Returns the number of rows.
    pub fn read(&self, schema: &TableSchema, record: &[u8], columns: &mut [Vec<Cell>]) -> Result<usize, RecordError> {
        let before = columns.first().map_or(0, Vec::len);
        let result = self.read_all(schema, record, columns);
        if result.is_err() {
            for column in columns.iter_mut() {
                column.truncate(before);
            }
        }
        result
    }

    fn read_all(&self, schema: &TableSchema, record: &[u8], columns: &mut [Vec<Cell>]) -> Result<usize, RecordError> {
        let mut n = 0;
        for value in serde_json::Deserializer::from_slice(record).into_iter::<&RawValue>() {
            let value = value.map_err(RecordError::parse)?;
            let Some(object) = self.object(value)? else {
                return Err(RecordError::malformed(format!(
                    "A record holds JSON objects, not {}.",
                    kind_of(value.get())
                )));
            };
            for (column, cells) in schema.columns.iter().zip(columns.iter_mut()) {
                let key = self.column_key(&column.name);
                let cell = match object.get(key) {
                    Some(raw) => self.cell(&column.hive_type, raw, 0).map_err(|e| e.within(&column.name))?,
                    None => Cell::Null,
                };
                cells.push(cell);
            }
            n += 1;
        }
        if n == 0 {
            return Err(RecordError::parse("the record holds no JSON value"));
        }
        Ok(n)
    }

    /// The JSON key a top-level column reads, normalised as keys are.
    fn column_key<'a>(&'a self, column: &'a str) -> Cow<'a, str> {
        match self {
            InputFormat::OpenX { column_keys, .. } => match column_keys.get(column) {
                Some(key) => self.normalize(key),
                None => Cow::Borrowed(column),
            },
            InputFormat::Hive { .. } => Cow::Borrowed(column),
        }
    }

    /// A JSON key as struct fields are matched against it.
    fn normalize<'k>(&self, key: &'k str) -> Cow<'k, str> {
        let (case_insensitive, dots) = match self {
            InputFormat::OpenX { case_insensitive, dots_to_underscores, .. } => {
                (*case_insensitive, *dots_to_underscores)
            }
            InputFormat::Hive { .. } => (true, false),
        };
        let mut key = Cow::Borrowed(key);
        if case_insensitive && key.chars().any(char::is_uppercase) {
            key = Cow::Owned(key.to_lowercase());
        }
        if dots && key.contains('.') {
            key = Cow::Owned(key.replace('.', "_"));
        }
        key
    }

    /// The entries of an object, keys normalised for field lookup; `None` if the
    /// value is not an object.
    fn object<'a>(&self, raw: &'a RawValue) -> Result<Option<Fields<'a>>, RecordError> {
        if !raw.get().starts_with('{') {
            return Ok(None);
        }
        let entries = entries(raw)?;
        let mut fields = Fields { entries: Vec::with_capacity(entries.len()), index: None };
        for (key, value) in entries {
            let key = match self.normalize(&key) {
                Cow::Borrowed(_) => key,
                Cow::Owned(normalized) => Cow::Owned(normalized),
            };
            fields.entries.push((key, value));
        }
        if fields.entries.len() > FIELDS_SCANNED_MAX {
            // Later keys win, as in the SerDes' maps.
            fields.index = Some(fields.entries.iter().enumerate().map(|(i, (k, _))| (k.to_string(), i)).collect());
        }
        Ok(Some(fields))
    }

    /// Reads `raw` as a value of type `t`.
    fn cell(&self, t: &HiveType, raw: &RawValue, depth: usize) -> Result<Cell, CellError> {
        let text = raw.get();
        if text == "null" {
            return Ok(Cell::Null);
        }
        if depth > crate::hive::TYPE_DEPTH_MAX {
            // The type's depth is bounded; so is the walk. Only reached through a
            // bug, since each step goes one level down the type too.
            return Err(CellError::new("nested too deeply"));
        }
        Ok(match t {
            HiveType::Boolean => Cell::Bool(match scalar(raw)?.as_ref() {
                s if s.eq_ignore_ascii_case("true") => true,
                s if s.eq_ignore_ascii_case("false") => false,
                s => return Err(CellError::new(format!("{s:?} is not a boolean"))),
            }),
            HiveType::TinyInt => Cell::Int(integer(raw, i8::MIN.into(), i8::MAX.into(), "tinyint")?),
            HiveType::SmallInt => Cell::Int(integer(raw, i16::MIN.into(), i16::MAX.into(), "smallint")?),
            HiveType::Int => Cell::Int(integer(raw, i32::MIN.into(), i32::MAX.into(), "int")?),
            HiveType::BigInt => Cell::Int(integer(raw, i64::MIN, i64::MAX, "bigint")?),
            HiveType::Float | HiveType::Double => {
                let s = scalar(raw)?;
                let value: f64 = s.trim().parse().map_err(|_| CellError::new(format!("{s:?} is not a number")))?;
                if matches!(t, HiveType::Float) && value.is_finite() && (value as f32).is_infinite() {
                    return Err(CellError::new(format!("{s} is out of range for a float")));
                }
                Cell::Float(value)
            }
            HiveType::Decimal { precision, scale } => Cell::Decimal(decimal(&scalar(raw)?, *precision, *scale)?),
            HiveType::String => Cell::Text(text_of(raw)?),
            HiveType::Char(n) | HiveType::Varchar(n) => {
                let mut s = text_of(raw)?;
                if let Some((cut, _)) = s.char_indices().nth(*n as usize) {
                    s.truncate(cut);
                }
                Cell::Text(s)
            }
            HiveType::Binary => Cell::Bytes(text_of(raw)?.into_bytes()),
            HiveType::Date => Cell::Date(date(&scalar(raw)?)?),
            HiveType::Timestamp => {
                let s = scalar(raw)?;
                let instant = match self {
                    InputFormat::OpenX { .. } => timestamp::openx(&s),
                    InputFormat::Hive { timestamp_formats } => hive_timestamp(timestamp_formats, &s),
                };
                Cell::Timestamp(instant.map_err(CellError::new)?.as_millisecond())
            }
            HiveType::Array(element) => {
                if !text.starts_with('[') {
                    return Err(CellError::new(format!("{} is not an array", kind_of(text))));
                }
                let items: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|e| CellError::new(format!("reading the array: {e}")))?;
                let mut cells = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    cells.push(self.cell(element, item, depth + 1).map_err(|e| e.within(&format!("[{i}]")))?);
                }
                Cell::List(cells)
            }
            HiveType::Map(key_type, value_type) => {
                if !text.starts_with('{') {
                    return Err(CellError::new(format!("{} is not an object", kind_of(text))));
                }
                let mut cells = Vec::new();
                for (key, value) in entries(raw).map_err(|e| CellError::new(e.message))? {
                    let key_cell = key_cell(key_type, &key)?;
                    let value_cell = self.cell(value_type, value, depth + 1).map_err(|e| e.within(&key))?;
                    cells.push((key_cell, value_cell));
                }
                Cell::Map(cells)
            }
            HiveType::Struct(fields) => {
                let Some(object) = self.object(raw).map_err(|e| CellError::new(e.message))? else {
                    return Err(CellError::new(format!("{} is not an object", kind_of(text))));
                };
                let mut cells = Vec::with_capacity(fields.len());
                for (name, field_type) in fields {
                    let key = self.normalize(name);
                    cells.push(match object.get(key) {
                        Some(value) => self.cell(field_type, value, depth + 1).map_err(|e| e.within(name))?,
                        None => Cell::Null,
                    });
                }
                Cell::Struct(cells)
            }
        })
    }
}

/// Objects with more keys than this get a hash index for field lookup; smaller
/// ones are scanned, which is faster for the few keys most records have.
const FIELDS_SCANNED_MAX: usize = 32;

/// An object's entries, keys normalised.
struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
    index: Option<HashMap<String, usize>>,
}

impl<'a> Fields<'a> {
    /// The value of `key`; the last one if the object repeats it.
    fn get(&self, key: Cow<'_, str>) -> Option<&'a RawValue> {
        match &self.index {
            Some(index) => index.get(key.as_ref()).map(|&i| self.entries[i].1),
            None => self.entries.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v),
        }
    }
}

/// A value that does not fit its column, and where it is.
#[derive(Debug)]
struct CellError {
    path: Vec<String>,
    reason: String,
}

impl CellError {
    fn new(reason: impl Into<String>) -> CellError {
        CellError { path: Vec::new(), reason: reason.into() }
    }

    /// The same error, one level further out.
    fn within(mut self, step: &str) -> CellError {
        self.path.push(step.to_string());
        self
    }
}

impl From<CellError> for RecordError {
    fn from(error: CellError) -> RecordError {
        let mut path = String::new();
        for step in error.path.iter().rev() {
            if !path.is_empty() && !step.starts_with('[') {
                path.push('.');
            }
            path.push_str(step);
        }
        RecordError::malformed(format!("{path}: {}", error.reason))
    }
}

/// What kind of JSON value `text` is, for messages.
fn kind_of(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The text of a scalar: a string's content, or a number's or boolean's literal.
fn scalar(raw: &RawValue) -> Result<Cow<'_, str>, CellError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'_, str>>(text).map_err(|e| CellError::new(e.to_string())),
        Some(b'{' | b'[') => Err(CellError::new(format!("{} is not a scalar", kind_of(text)))),
        _ => Ok(Cow::Borrowed(text)),
    }
}

/// What a string column keeps of any value: a string's content, anything else's
/// JSON text.
fn text_of(raw: &RawValue) -> Result<String, CellError> {
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|e| CellError::new(e.to_string()))
    } else {
        Ok(text.to_string())
    }
}

fn integer(raw: &RawValue, min: i64, max: i64, name: &str) -> Result<i64, CellError> {
    let s = scalar(raw)?;
    let value: i64 = s.trim().parse().map_err(|_| CellError::new(format!("{s:?} is not an integer")))?;
    if value < min || value > max {
        return Err(CellError::new(format!("{value} is out of range for a {name}")));
    }
    Ok(value)
}

/// A map key's cell from the key's text.
fn key_cell(t: &HiveType, key: &str) -> Result<Cell, CellError> {
    let as_raw = |text: String| RawValue::from_string(text).map_err(|e| CellError::new(e.to_string()));
    let quoted = serde_json::to_string(key).expect("a string serialises");
    let raw = as_raw(quoted)?;
    let reader = InputFormat::default();
    reader.cell(t, &raw, 0).map_err(|e| CellError::new(format!("map key {key:?}: {}", e.reason)))
}

/// Parses a decimal literal (`-12.50`, `1e3`) to the unscaled value at `scale`,
/// rounding half up beyond it as Hive does; refuses more than `precision` digits.
fn decimal(text: &str, precision: u8, scale: u8) -> Result<i128, CellError> {
    let bad = || CellError::new(format!("{text:?} is not a decimal"));
    let out_of_range = || CellError::new(format!("{text} is out of range for a decimal({precision},{scale})"));
    let s = text.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], s[at + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (s, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // The value is 0.DIGITS x 10^point; leading zeros dropped, so the first digit
    // is significant.
    let all = whole.bytes().chain(fraction.bytes()).map(|b| b - b'0');
    let mut point = whole.len() as i64 + i64::from(exponent);
    let mut digits: Vec<u8> = Vec::with_capacity(whole.len() + fraction.len());
    for d in all {
        if digits.is_empty() && d == 0 {
            point -= 1;
        } else {
            digits.push(d);
        }
    }
    // The unscaled value's integer digits: the first `kept` digits (zeros past the
    // end), then half up on the next.
    let kept = point + i64::from(scale);
    if digits.is_empty() || kept < 0 {
        return Ok(0);
    }
    if kept > i64::from(precision) {
        return Err(out_of_range());
    }
    let mut unscaled: i128 = 0;
    for i in 0..kept as usize {
        unscaled = unscaled * 10 + i128::from(digits.get(i).copied().unwrap_or(0));
    }
    if digits.get(kept as usize).is_some_and(|&d| d >= 5) {
        unscaled += 1;
    }
    if unscaled >= 10i128.pow(u32::from(precision)) {
        return Err(out_of_range());
    }
    Ok(if negative { -unscaled } else { unscaled })
}

/// A date: `yyyy-[M]M-[d]d`, as Hive's `Date.valueOf` reads it.
fn date(text: &str) -> Result<i32, CellError> {
    let bad = || CellError::new(format!("{text:?} is not a date (yyyy-MM-dd)"));
    let mut parts = text.trim().splitn(3, '-');
    let mut part = |max_len: usize| -> Result<i32, CellError> {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        p.parse().map_err(|_| bad())
    };
    let (year, month, day) = (part(4)?, part(2)?, part(2)?);
    let date = jiff::civil::Date::new(year as i16, month as i8, day as i8).map_err(|_| bad())?;
    let days = date.since(jiff::civil::date(1970, 1, 1)).map_err(|_| bad())?.get_days();
    Ok(days)
}

/// The Hive SerDe's timestamp: each of `TimestampFormats` in turn, then the default form.
fn hive_timestamp(formats: &[TimestampFormat], text: &str) -> Result<jiff::Timestamp, String> {
    for format in formats {
        let parsed = match format {
            TimestampFormat::Millis => timestamp::millis(text),
            TimestampFormat::Pattern(pattern) => pattern.parse(text),
        };
        if let Ok(instant) = parsed {
            return Ok(instant);
        }
    }
    timestamp::hive(text)
}

/// An object's entries in order, keys as written (borrowed where JSON escapes
/// allow). Syntax errors fail the record.
fn entries(raw: &RawValue) -> Result<Vec<(Cow<'_, str>, &RawValue)>, RecordError> {
    struct EntriesVisitor;
    impl<'de> Visitor<'de> for EntriesVisitor {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
            while let Some(key) = map.next_key_seed(KeySeed)? {
                let value: &'de RawValue = map.next_value()?;
                out.push((key, value));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(EntriesVisitor).map_err(RecordError::parse)
}

/// A key, borrowed from the text unless it has escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(columns: &[(&str, &str)]) -> TableSchema {
        TableSchema::declared(columns.iter().copied()).unwrap()
    }

    fn read(input: &InputFormat, schema: &TableSchema, record: &str) -> Result<Vec<Vec<Cell>>, RecordError> {
        let mut columns = vec![Vec::new(); schema.columns.len()];
        input.read(schema, record.as_bytes(), &mut columns)?;
        // Rows, for comparing.
        let n = columns[0].len();
        Ok((0..n).map(|i| columns.iter().map(|c| c[i].clone()).collect()).collect())
    }

    fn openx() -> InputFormat {
        InputFormat::default()
    }

    #[test]
    fn concatenated_objects_are_rows_and_missing_columns_are_null() {
        let s = schema(&[("id", "bigint"), ("name", "string")]);
        let rows = read(&openx(), &s, "{\"id\":1,\"name\":\"a\",\"extra\":[1,2]} {\"id\":2}\n{\"name\":null}").unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Cell::Int(1), Cell::Text("a".into())],
                vec![Cell::Int(2), Cell::Null],
                vec![Cell::Null, Cell::Null]
            ]
        );
    }

    #[test]
    fn keys_match_as_the_openx_options_say() {
        let s = schema(&[("userid", "int"), ("geo_city", "string"), ("ts", "bigint")]);
        let record = r#"{"UserId": 7, "geo.city": "Oslo", "event_time": 5}"#;
        let rows = read(&openx(), &s, record).unwrap();
        assert_eq!(rows[0], vec![Cell::Int(7), Cell::Null, Cell::Null]);
        let options = InputFormat::OpenX {
            case_insensitive: false,
            dots_to_underscores: true,
            column_keys: [("ts".to_string(), "event_time".to_string())].into(),
        };
        let rows = read(&options, &s, record).unwrap();
        assert_eq!(rows[0], vec![Cell::Null, Cell::Text("Oslo".into()), Cell::Int(5)]);
    }

    #[test]
    fn scalars_convert_from_strings_and_refuse_what_does_not_fit() {
        let s = schema(&[("b", "boolean"), ("t", "tinyint"), ("f", "double"), ("s", "string"), ("v", "varchar(3)")]);
        let rows = read(&openx(), &s, r#"{"b":"TRUE","t":"-128","f":"2.5","s":{"x":[1]},"v":"abcdef"}"#).unwrap();
        assert_eq!(
            rows[0],
            vec![
                Cell::Bool(true),
                Cell::Int(-128),
                Cell::Float(2.5),
                Cell::Text(r#"{"x":[1]}"#.into()),
                Cell::Text("abc".into())
            ]
        );
        for (record, expected) in [
            (r#"{"t":128}"#, "t: 128 is out of range for a tinyint"),
            (r#"{"t":1.5}"#, "t: \"1.5\" is not an integer"),
            (r#"{"b":"yes"}"#, "b: \"yes\" is not a boolean"),
            (r#"{"f":[1]}"#, "f: an array is not a scalar"),
        ] {
            let error = read(&openx(), &s, record).unwrap_err();
            assert_eq!(error.code(), "DataFormatConversion.MalformedData");
            assert_eq!(error.message, format!("Data does not match the schema. {expected}"), "{record}");
        }
    }

    #[test]
    fn a_failing_record_leaves_no_rows_behind() {
        let s = schema(&[("id", "int")]);
        let mut columns = vec![Vec::new()];
        openx().read(&s, b"{\"id\":1}", &mut columns).unwrap();
        let error = openx().read(&s, b"{\"id\":2}{\"id\":\"x\"}", &mut columns).unwrap_err();
        assert_eq!(error.kind, RecordErrorKind::Malformed);
        let error = openx().read(&s, b"{\"id\":3} {\"id\":", &mut columns).unwrap_err();
        assert_eq!(error.code(), "DataFormatConversion.ParseError");
        assert_eq!(openx().read(&s, b"  ", &mut columns).unwrap_err().kind, RecordErrorKind::Parse);
        assert_eq!(openx().read(&s, b"[1]", &mut columns).unwrap_err().kind, RecordErrorKind::Malformed);
        assert_eq!(columns, vec![vec![Cell::Int(1)]]);
    }

    #[test]
    fn decimals_keep_every_digit_and_round_half_up() {
        let d = |text: &str, p, s| decimal(text, p, s).map_err(|e| e.reason);
        assert_eq!(d("12345678901234567890.123456789", 38, 9), Ok(12345678901234567890123456789));
        assert_eq!(d("1.005", 5, 2), Ok(101));
        assert_eq!(d("-1.004", 5, 2), Ok(-100));
        assert_eq!(d("1.5e2", 5, 0), Ok(150));
        assert_eq!(d("25E-3", 5, 2), Ok(3));
        assert_eq!(d("0.0001", 5, 2), Ok(0));
        assert_eq!(d("000.50", 3, 2), Ok(50));
        assert_eq!(d("7", 4, 2), Ok(700));
        assert_eq!(d("99.995", 4, 2), Err("99.995 is out of range for a decimal(4,2)".into()));
        assert_eq!(d("100", 4, 2), Err("100 is out of range for a decimal(4,2)".into()));
        assert_eq!(d("1e999999", 38, 0), Err("1e999999 is out of range for a decimal(38,0)".into()));
        assert!(d("1.2.3", 5, 2).is_err());
        assert!(d("abc", 5, 2).is_err());
        assert!(d(".", 5, 2).is_err());
    }

    #[test]
    fn nested_values_and_dates_and_timestamps() {
        let s = schema(&[
            ("tags", "array<string>"),
            ("counts", "map<int,bigint>"),
            ("who", "struct<Name:string,age:smallint>"),
            ("day", "date"),
            ("at", "timestamp"),
        ]);
        let record =
            r#"{"tags":["a",null],"counts":{"1":10,"2":null},"who":{"NAME":"x"},"day":"1970-1-2","at":1500000000}"#;
        let rows = read(&openx(), &s, record).unwrap();
        assert_eq!(
            rows[0],
            vec![
                Cell::List(vec![Cell::Text("a".into()), Cell::Null]),
                Cell::Map(vec![(Cell::Int(1), Cell::Int(10)), (Cell::Int(2), Cell::Null)]),
                Cell::Struct(vec![Cell::Text("x".into()), Cell::Null]),
                Cell::Date(1),
                Cell::Timestamp(1_500_000_000_000),
            ]
        );
        let error = read(&openx(), &s, r#"{"who":{"age":70000}}"#).unwrap_err();
        assert_eq!(error.message, "Data does not match the schema. who.age: 70000 is out of range for a smallint");
        let error = read(&openx(), &s, r#"{"counts":{"1":[2]}}"#).unwrap_err();
        assert_eq!(error.message, "Data does not match the schema. counts.1: an array is not a scalar");
        let ints = schema(&[("ns", "array<int>")]);
        let error = read(&openx(), &ints, r#"{"ns":[1,"x"]}"#).unwrap_err();
        assert_eq!(error.message, "Data does not match the schema. ns[1]: \"x\" is not an integer");
        assert!(read(&openx(), &s, r#"{"counts":{"x":1}}"#).is_err());
        assert!(read(&openx(), &s, r#"{"day":"2021-02-30"}"#).is_err());
    }

    #[test]
    fn the_hive_serde_tries_its_timestamp_formats_then_its_default() {
        let s = schema(&[("at", "timestamp")]);
        let hive = InputFormat::Hive {
            timestamp_formats: vec![
                TimestampFormat::Millis,
                TimestampFormat::Pattern(crate::joda::Pattern::new("dd/MM/yyyy HH:mm").unwrap()),
            ],
        };
        for (text, ms) in [
            ("1500000000000", 1_500_000_000_000),
            ("\"02/01/1970 00:00\"", 86_400_000),
            ("\"1970-01-01 00:00:01.5\"", 1500),
        ] {
            let rows = read(&hive, &s, &format!("{{\"at\":{text}}}")).unwrap();
            assert_eq!(rows[0], vec![Cell::Timestamp(ms)], "{text}");
        }
        // Without `millis`, the Hive SerDe does not read numbers as times.
        let plain = InputFormat::Hive { timestamp_formats: Vec::new() };
        assert!(read(&plain, &s, r#"{"at":1500000000000}"#).is_err());
    }
}
