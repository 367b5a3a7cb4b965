//! Hive column types, as a Glue table's `StorageDescriptor.Columns[].Type` (or a
//! table declared in Sluice's config) spells them: the schema a converted record
//! must fit. Parsing happens once, when a stream's schema is resolved; the record
//! path only walks the parsed tree.
//!
//! The grammar is Hive's, as Glue accepts it: keywords in any case, blanks between
//! tokens, `integer` for `int`, `decimal` alone for `decimal(10,0)`, struct field
//! names bare or in backquotes. `uniontype` is refused (Firehose's conversion does
//! not support it either).

use std::fmt;

/// Nesting deeper than this is refused: types come from configuration and from a
/// Glue API, and a parser that recurses must bound its depth.
pub const TYPE_DEPTH_MAX: usize = 32;
/// Decimal precision Hive allows.
pub const DECIMAL_PRECISION_MAX: u8 = 38;
/// Length Hive allows for `char(n)`.
pub const CHAR_LENGTH_MAX: u32 = 255;
/// Length Hive allows for `varchar(n)`.
pub const VARCHAR_LENGTH_MAX: u32 = 65_535;

/// One column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiveType {
    /// `boolean`
    Boolean,
    /// `tinyint`: 8-bit signed.
    TinyInt,
    /// `smallint`: 16-bit signed.
    SmallInt,
    /// `int` or `integer`: 32-bit signed.
    Int,
    /// `bigint`: 64-bit signed.
    BigInt,
    /// `float`: 32-bit IEEE.
    Float,
    /// `double`: 64-bit IEEE.
    Double,
    /// `decimal(precision, scale)`.
    Decimal {
        /// Digits in all, 1 to 38.
        precision: u8,
        /// Digits after the point, at most `precision`.
        scale: u8,
    },
    /// `string`
    String,
    /// `char(n)`
    Char(u32),
    /// `varchar(n)`
    Varchar(u32),
    /// `binary`
    Binary,
    /// `date`
    Date,
    /// `timestamp`
    Timestamp,
    /// `array<element>`
    Array(Box<HiveType>),
    /// `map<key, value>`; the key is a primitive type.
    Map(Box<HiveType>, Box<HiveType>),
    /// `struct<name:type, ...>`, fields in order.
    Struct(Vec<(String, HiveType)>),
}

/// Why a type string is not a Hive type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column type {text:?}: {reason}")]
pub struct TypeError {
    /// The whole type string.
    pub text: String,
    /// What is wrong, and where.
    pub reason: String,
}

impl HiveType {
    /// Parses a column type.
    pub fn parse(text: &str) -> Result<HiveType, TypeError> {
        let mut parser = Parser { text, at: 0 };
        let parsed = parser.parse_type(0).map_err(|reason| TypeError { text: text.to_string(), reason })?;
        parser.skip_blanks();
        if parser.at != text.len() {
            let reason = format!("unexpected {:?} at offset {}", &text[parser.at..], parser.at);
            return Err(TypeError { text: text.to_string(), reason });
        }
        Ok(parsed)
    }

    /// Whether the type holds no other types.
    pub fn is_primitive(&self) -> bool {
        !matches!(self, HiveType::Array(_) | HiveType::Map(..) | HiveType::Struct(_))
    }

    /// Whether this type is `t` or holds it at any depth.
    pub fn contains(&self, t: &HiveType) -> bool {
        self == t
            || match self {
                HiveType::Array(element) => element.contains(t),
                HiveType::Map(key, value) => key.contains(t) || value.contains(t),
                HiveType::Struct(fields) => fields.iter().any(|(_, f)| f.contains(t)),
                _ => false,
            }
    }
}

impl fmt::Display for HiveType {
    /// The canonical spelling: lower case, no blanks, as Glue shows types.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HiveType::Boolean => f.write_str("boolean"),
            HiveType::TinyInt => f.write_str("tinyint"),
            HiveType::SmallInt => f.write_str("smallint"),
            HiveType::Int => f.write_str("int"),
            HiveType::BigInt => f.write_str("bigint"),
            HiveType::Float => f.write_str("float"),
            HiveType::Double => f.write_str("double"),
            HiveType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            HiveType::String => f.write_str("string"),
            HiveType::Char(n) => write!(f, "char({n})"),
            HiveType::Varchar(n) => write!(f, "varchar({n})"),
            HiveType::Binary => f.write_str("binary"),
            HiveType::Date => f.write_str("date"),
            HiveType::Timestamp => f.write_str("timestamp"),
            HiveType::Array(element) => write!(f, "array<{element}>"),
            HiveType::Map(key, value) => write!(f, "map<{key},{value}>"),
            HiveType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (name, field)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{name}:{field}")?;
                }
                f.write_str(">")
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_blanks(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// A word of letters, digits and underscores (empty if none).
    fn word(&mut self) -> &str {
        self.skip_blanks();
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let word = &self.text[self.at..self.at + len];
        self.at += len;
        word
    }

    /// Consumes `c` (after blanks) if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_blanks();
        if self.rest().starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.eat(c) {
            true => Ok(()),
            false => Err(format!("expected {c:?} at offset {}", self.at)),
        }
    }

    fn number(&mut self) -> Result<u32, String> {
        let at = self.at;
        let word = self.word();
        word.parse().map_err(|_| format!("expected a number at offset {at}, found {word:?}"))
    }

    fn parse_type(&mut self, depth: usize) -> Result<HiveType, String> {
        if depth >= TYPE_DEPTH_MAX {
            return Err(format!("nested deeper than {TYPE_DEPTH_MAX} levels"));
        }
        let at = self.at;
        let word = self.word().to_ascii_lowercase();
        Ok(match word.as_str() {
            "boolean" => HiveType::Boolean,
            "tinyint" => HiveType::TinyInt,
            "smallint" => HiveType::SmallInt,
            "int" | "integer" => HiveType::Int,
            "bigint" => HiveType::BigInt,
            "float" => HiveType::Float,
            "double" => HiveType::Double,
            "string" => HiveType::String,
            "binary" => HiveType::Binary,
            "date" => HiveType::Date,
            "timestamp" => HiveType::Timestamp,
            "decimal" => {
                let (precision, scale) = match self.eat('(') {
                    false => (10, 0),
                    true => {
                        let precision = self.number()?;
                        let scale = if self.eat(',') { self.number()? } else { 0 };
                        self.expect(')')?;
                        (precision, scale)
                    }
                };
                if precision == 0 || precision > u32::from(DECIMAL_PRECISION_MAX) {
                    return Err(format!("decimal precision {precision} is not between 1 and {DECIMAL_PRECISION_MAX}"));
                }
                if scale > precision {
                    return Err(format!("decimal scale {scale} is more than its precision {precision}"));
                }
                HiveType::Decimal { precision: precision as u8, scale: scale as u8 }
            }
            "char" | "varchar" => {
                self.expect('(')?;
                let length = self.number()?;
                self.expect(')')?;
                let max = if word == "char" { CHAR_LENGTH_MAX } else { VARCHAR_LENGTH_MAX };
                if length == 0 || length > max {
                    return Err(format!("{word} length {length} is not between 1 and {max}"));
                }
                if word == "char" {
                    HiveType::Char(length)
                } else {
                    HiveType::Varchar(length)
                }
            }
            "array" => {
                self.expect('<')?;
                let element = self.parse_type(depth + 1)?;
                self.expect('>')?;
                HiveType::Array(Box::new(element))
            }
            "map" => {
                self.expect('<')?;
                let key_at = self.at;
                let key = self.parse_type(depth + 1)?;
                if !key.is_primitive() {
                    return Err(format!("the map key at offset {key_at} must be a primitive type, not {key}"));
                }
                self.expect(',')?;
                let value = self.parse_type(depth + 1)?;
                self.expect('>')?;
                HiveType::Map(Box::new(key), Box::new(value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<(String, HiveType)> = Vec::new();
                // Hive's names are case-insensitive: `a` and `A` are one field.
                let mut seen = std::collections::HashSet::new();
                if !self.eat('>') {
                    loop {
                        let name = self.field_name()?;
                        if !seen.insert(name.to_lowercase()) {
                            return Err(format!("struct field {name:?} appears twice"));
                        }
                        self.expect(':')?;
                        let field = self.parse_type(depth + 1)?;
                        fields.push((name, field));
                        if self.eat('>') {
                            break;
                        }
                        self.expect(',')?;
                    }
                }
                HiveType::Struct(fields)
            }
            "uniontype" => return Err("uniontype is not supported by data format conversion".into()),
            "" => return Err(format!("expected a type at offset {at}")),
            other => return Err(format!("unknown type {other:?} at offset {at}")),
        })
    }

    /// A struct field's name: a word, or any text in backquotes.
    fn field_name(&mut self) -> Result<String, String> {
        if self.eat('`') {
            let rest = self.rest();
            let end = rest.find('`').ok_or_else(|| format!("unclosed backquote at offset {}", self.at))?;
            let name = rest[..end].to_string();
            self.at += end + 1;
            if name.is_empty() {
                return Err("an empty struct field name".into());
            }
            return Ok(name);
        }
        let at = self.at;
        match self.word() {
            "" => Err(format!("expected a struct field name at offset {at}")),
            name => Ok(name.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HiveType, TYPE_DEPTH_MAX};

    #[test]
    fn every_type_glue_shows_parses_and_prints_back_the_same() {
        for text in [
            "boolean",
            "tinyint",
            "smallint",
            "int",
            "bigint",
            "float",
            "double",
            "decimal(38,10)",
            "string",
            "char(10)",
            "varchar(65535)",
            "binary",
            "date",
            "timestamp",
            "array<string>",
            "map<string,bigint>",
            "struct<a:int,b:array<struct<c:decimal(5,2),d:map<int,string>>>>",
            "struct<>",
        ] {
            let parsed = HiveType::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn spelling_variants_mean_the_same_type() {
        let canonical = HiveType::parse("struct<id:int,amount:decimal(10,0),tags:array<string>>").unwrap();
        for variant in [
            "STRUCT< id : INTEGER , amount: DECIMAL, tags :Array<String> >",
            "struct<`id`:int,`amount`:decimal(10),tags:array<string>>",
        ] {
            assert_eq!(HiveType::parse(variant).unwrap(), canonical, "{variant}");
        }
        let quoted = HiveType::parse("struct<`a.b c`:string>").unwrap();
        assert_eq!(quoted, HiveType::Struct(vec![("a.b c".into(), HiveType::String)]));
    }

    #[test]
    fn what_hive_refuses_is_refused_with_the_reason() {
        for (text, reason) in [
            ("", "expected a type"),
            ("strin", "unknown type \"strin\""),
            ("decimal(39,1)", "precision 39"),
            ("decimal(0)", "precision 0"),
            ("decimal(5,6)", "scale 6 is more than its precision 5"),
            ("char(256)", "char length 256"),
            ("varchar(0)", "varchar length 0"),
            ("varchar", "expected '('"),
            ("array<int", "expected '>'"),
            ("map<array<int>,int>", "must be a primitive type"),
            ("struct<a:int,A:string>", "appears twice"),
            ("struct<a int>", "expected ':'"),
            ("uniontype<int,string>", "uniontype is not supported"),
            ("int int", "unexpected"),
            ("struct<`a:int>", "unclosed backquote"),
        ] {
            let error = HiveType::parse(text).expect_err(text);
            assert!(error.reason.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}int{}", "array<".repeat(n), ">".repeat(n));
        assert!(HiveType::parse(&deep(TYPE_DEPTH_MAX - 1)).is_ok());
        let error = HiveType::parse(&deep(100_000)).expect_err("too deep");
        assert!(error.reason.contains("nested deeper"), "{error}");
    }
}
