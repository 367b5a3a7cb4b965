//! ORC files Sluice writes, read back by an independent reader: pyarrow's ORC
//! reader (Apache ORC's C++ library; from PyPI, `.ci/run` installs it), for a
//! table with every Hive type, nested ones included, each compression, many
//! stripes with nulls at every depth, and timestamps before 1970.

mod common;

use std::fmt::Write as _;

use common::{python, COLUMNS, RECORD};
use sluice_convert::{Conversion, InputFormat, OrcCompression, OrcOptions, OutputFormat, TableSchema};

fn conversion(columns: &[(&str, &str)], options: OrcOptions) -> Conversion {
    let schema = TableSchema::declared(columns.iter().copied()).unwrap();
    Conversion::new(schema, InputFormat::default(), OutputFormat::Orc(options)).unwrap()
}

/// pyarrow's view of the file: its schema, compression, stripes and rows.
const PYARROW: &str = r#"
import sys, pyarrow.orc as orc
f = orc.ORCFile(sys.argv[1])
print(f.schema)
print("compression", f.compression, "stripes", f.nstripes, "rows", f.nrows, "version", f.file_version)
for row in f.read().to_pylist():
    print(sorted(row.items()))
"#;

#[test]
fn pyarrow_reads_every_type_with_the_values_written() {
    let dir = tempfile::tempdir().unwrap();
    for (compression, name) in
        [(OrcCompression::Snappy, "SNAPPY"), (OrcCompression::Zlib, "ZLIB"), (OrcCompression::None, "UNCOMPRESSED")]
    {
        let conversion = conversion(COLUMNS, OrcOptions { compression, ..Default::default() });
        assert_eq!(conversion.extension(), ".orc");
        let mut file = conversion.file().unwrap();
        assert_eq!(file.push(RECORD.as_bytes()).unwrap(), 2);
        assert!(file.push(b"{\"i\": \"not a number\"}").is_err());
        let path = dir.path().join(format!("{name}.orc"));
        std::fs::write(&path, file.finish().unwrap()).unwrap();
        let out = python(PYARROW, &path);
        for expected in [
            "b: bool",
            "t: int8",
            "s: int16",
            "i: int32",
            "l: int64",
            "f: float",
            "d: double",
            "dec: decimal128(38, 9)",
            "str: string",
            "bin: binary",
            "day: date32[day]",
            "ts_iso: timestamp[ns]",
            "tags: list<item: string>",
            "counts: map<string, int64>",
            "who: struct<name: string, age: int32, langs: list<item: string>>",
            &format!("compression {name} stripes 1 rows 2 version 0.12"),
            "('b', True)",
            "('t', -7)",
            "('s', 300)",
            "('i', -70000)",
            "('l', 9007199254740993)",
            "('f', 1.5)",
            "('d', -2.25)",
            "('dec', Decimal('12345678901234567890.123456789'))",
            "('str', 'héllo')",
            "('c', 'abcd')",
            "('v', 'short')",
            "('bin', b'raw')",
            "('day', datetime.date(2024, 2, 29))",
            "('tags', ['x', 'y'])",
            "('counts', [('a', 1), ('b', None)])",
            "('who', {'name': 'Ada', 'age': 36, 'langs': ['en']})",
        ] {
            assert!(out.contains(expected), "{name}: {expected} not in:\n{out}");
        }
        // Every accepted timestamp form gave the same instant (UTC wall time).
        for column in ["ts_iso", "ts_local", "ts_millis", "ts_float"] {
            let expected = format!("('{column}', datetime.datetime(2024, 2, 29, 11, 34, 56, 789000))");
            assert!(out.contains(&expected), "{name}: {column} in:\n{out}");
        }
        assert!(out.contains("('ts_seconds', datetime.datetime(2024, 2, 29, 11, 34, 56))"), "{out}");
        // The second row: only `i`; the failed record left nothing.
        assert!(out.contains("('i', 1)"), "{out}");
        assert_eq!(out.matches("[('b', ").count(), 2, "two rows:\n{out}");
        assert!(out.contains("[('b', None)"), "{out}");
    }
}

/// Many rows over several stripes, nulls at every depth, values that make runs and
/// literals: every value read back is the one written, compared in Python.
#[test]
fn many_stripes_and_nulls_at_every_depth_read_back_exactly() {
    let columns = [
        ("n", "bigint"),
        ("flag", "boolean"),
        ("small", "tinyint"),
        ("ratio", "double"),
        ("price", "decimal(10,2)"),
        ("name", "string"),
        ("at", "timestamp"),
        ("day", "date"),
        ("items", "array<struct<k:string,v:array<int>>>"),
        ("attrs", "map<string,struct<x:double,when:timestamp>>"),
        ("inner", "struct<a:int,b:struct<c:string>>"),
    ];
    let conversion = conversion(
        &columns,
        OrcOptions { compression: OrcCompression::Zlib, stripe_bytes: 64 << 10, ..Default::default() },
    );
    let mut file = conversion.file().unwrap();
    let mut expected = String::new();
    let rows = 30_000;
    for n in 0..rows {
        let null = |every: i64| n % every == 0;
        let opt = |every: i64, value: String| if null(every) { "null".to_string() } else { value };
        // Timestamps from 1960 to 2040, some before 1970 with milliseconds.
        let ms = -315_619_200_000i64 + n * 84_153_123_457 % 2_524_608_000_000;
        let record = format!(
            r#"{{"n":{n},"flag":{},"small":{},"ratio":{},"price":{},"name":{},"at":{},"day":{},"items":{},"attrs":{},"inner":{}}}"#,
            opt(7, (n % 3 == 0).to_string()),
            opt(11, ((n % 256) - 128).to_string()),
            opt(13, format!("{}", n as f64 / 8.0)),
            opt(5, format!("\"{}.{:02}\"", n * 37 % 100_000_000, n % 100)),
            opt(9, format!("\"name-{}\"", n % 1000 / 3)),
            opt(17, iso(ms)),
            opt(19, format!("\"{}\"", day(n))),
            opt(6, format!(r#"[{{"k":"a{n}","v":[1,{n},null]}},null,{{"k":null,"v":null}}]"#)),
            opt(4, format!(r#"{{"x":{{"x":{n}.5,"when":{}}},"y":null}}"#, iso(ms / 2))),
            opt(3, format!(r#"{{"a":{},"b":{}}}"#, opt(2, n.to_string()), opt(5, format!(r#"{{"c":"c{n}"}}"#)))),
        );
        assert_eq!(file.push(record.as_bytes()).unwrap(), 1, "{record}");
        writeln!(expected, "{record}").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.orc");
    std::fs::write(&path, file.finish().unwrap()).unwrap();
    std::fs::write(dir.path().join("expected.jsonl"), expected).unwrap();
    // Python reads both and compares row by row, each value as the type says.
    let script = r#"
import sys, json, datetime, decimal, os, pyarrow.orc as orc
f = orc.ORCFile(sys.argv[1])
print("stripes", f.nstripes, "rows", f.nrows)
table = f.read()
def ts(text):
    return None if text is None else datetime.datetime.fromisoformat(text).replace(tzinfo=None)
def day(s):
    return None if s is None else datetime.date.fromisoformat(s)
def expect(r):
    items = r["items"]
    if items is not None:
        items = [None if i is None else {"k": i["k"], "v": i["v"]} for i in items]
    attrs = r["attrs"]
    if attrs is not None:
        attrs = [(k, None if v is None else {"x": v["x"], "when": ts(v["when"])}) for k, v in attrs.items()]
    inner = r["inner"]
    if inner is not None:
        inner = {"a": inner["a"], "b": inner["b"]}
    price = r["price"]
    return {"n": r["n"], "flag": r["flag"], "small": r["small"], "ratio": r["ratio"],
            "price": None if price is None else decimal.Decimal(price), "name": r["name"], "at": ts(r["at"]),
            "day": day(r["day"]), "items": items, "attrs": attrs, "inner": inner}
expected = [expect(json.loads(l)) for l in open(os.path.join(os.path.dirname(sys.argv[1]), "expected.jsonl"))]
got = table.to_pylist()
assert len(got) == len(expected), (len(got), len(expected))
for i, (g, e) in enumerate(zip(got, expected)):
    assert g == e, (i, g, e)
print("rows equal", len(got))
"#;
    let out = python(script, &path);
    assert!(out.contains(&format!("rows equal {rows}")), "{out}");
    let stripes: usize = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(stripes > 3, "several stripes: {out}");
}

/// `ms` milliseconds since the epoch as a JSON string in ISO 8601 (UTC).
fn iso(ms: i64) -> String {
    format!("\"{}\"", jiff::Timestamp::from_millisecond(ms).unwrap())
}

/// `2000-01-01` plus `n` days, as ISO text.
fn day(n: i64) -> String {
    let date = jiff::civil::date(2000, 1, 1).checked_add(jiff::Span::new().days(n % 20_000 - 10_000)).unwrap();
    date.to_string()
}

#[test]
fn a_timestamp_orc_cannot_hold_fails_its_record_alone() {
    let conversion = conversion(&[("at", "timestamp"), ("tags", "array<timestamp>")], OrcOptions::default());
    let mut file = conversion.file().unwrap();
    assert_eq!(file.push(br#"{"at": "1969-12-31T23:59:58.500Z"}"#).unwrap(), 1);
    let refused = file
        .push(br#"{"at": "1970-01-01T00:00:00Z", "tags": ["1969-12-31T23:59:59Z", "1969-12-31T23:59:59.500Z"]}"#)
        .unwrap_err();
    assert_eq!(refused.code(), "DataFormatConversion.MalformedData");
    assert!(refused.message.contains("ORC-763"), "{refused}");
    assert_eq!(file.push(br#"{"at": "1969-12-31T23:59:59Z", "tags": ["1969-12-31T23:59:58.999Z"]}"#).unwrap(), 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("before-1970.orc");
    std::fs::write(&path, file.finish().unwrap()).unwrap();
    let out = python(PYARROW, &path);
    assert!(out.contains("rows 2"), "{out}");
    assert!(out.contains("('at', datetime.datetime(1969, 12, 31, 23, 59, 58, 500000))"), "{out}");
    assert!(out.contains("('at', datetime.datetime(1969, 12, 31, 23, 59, 59))"), "{out}");
    assert!(out.contains("('tags', [datetime.datetime(1969, 12, 31, 23, 59, 58, 999000)])"), "{out}");
}
