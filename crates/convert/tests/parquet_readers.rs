//! Parquet files Sluice writes, read back by independent readers: pyarrow and
//! DuckDB (both from PyPI; `.ci/run` installs them), for a table with every Hive
//! type, nested ones included, and each writer option.

mod common;

use common::{python, COLUMNS, RECORD};
use sluice_convert::{Conversion, InputFormat, OutputFormat, ParquetCompression, ParquetOptions, TableSchema};

fn write(options: ParquetOptions) -> Vec<u8> {
    let schema = TableSchema::declared(COLUMNS.iter().copied()).unwrap();
    let conversion = Conversion::new(schema, InputFormat::default(), OutputFormat::Parquet(options)).unwrap();
    let mut file = conversion.file().unwrap();
    assert_eq!(file.push(RECORD.as_bytes()).unwrap(), 2);
    assert!(file.push(b"{\"i\": \"not a number\"}").is_err());
    file.finish().unwrap()
}

/// pyarrow's view of the file: its schema and the rows as Python values.
const PYARROW: &str = r#"
import sys, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
print(f.schema_arrow)
print(f.metadata.row_group(0).column(0).compression)
for row in f.read().to_pylist():
    print(sorted(row.items()))
"#;

#[test]
fn pyarrow_reads_every_type_with_the_values_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.parquet");
    std::fs::write(&path, write(ParquetOptions::default())).unwrap();
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
        "ts_iso: timestamp[ms, tz=UTC]",
        "tags: list<element: string>",
        "counts: map<string, int64",
        "who: struct<name: string, age: int32, langs: list<element: string>>",
        "SNAPPY",
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
        assert!(out.contains(expected), "{expected} not in:\n{out}");
    }
    // Every accepted timestamp form gave the same instant.
    // (The time zone's spelling differs between Python versions; the schema above says UTC.)
    let instant = "datetime.datetime(2024, 2, 29, 11, 34, 56, 789000, tzinfo=";
    for column in ["ts_iso", "ts_local", "ts_millis", "ts_float"] {
        assert!(out.contains(&format!("('{column}', {instant}")), "{column} in:\n{out}");
    }
    let seconds = "datetime.datetime(2024, 2, 29, 11, 34, 56, tzinfo=";
    assert!(out.contains(&format!("('ts_seconds', {seconds}")), "{out}");
    // The second row: only `i`; the failed record left nothing.
    assert!(out.contains("('i', 1)"), "{out}");
    assert_eq!(out.matches("[('b', ").count(), 2, "two rows:\n{out}");
    assert!(out.contains("[('b', None)"), "{out}");
}

#[test]
fn duckdb_reads_the_file_and_each_compression_is_what_was_asked() {
    let dir = tempfile::tempdir().unwrap();
    for (compression, name) in [
        (ParquetCompression::Uncompressed, "UNCOMPRESSED"),
        (ParquetCompression::Gzip, "GZIP"),
        (ParquetCompression::Snappy, "SNAPPY"),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        let options = ParquetOptions { compression, dictionary: true, writer_version_2: true, ..Default::default() };
        std::fs::write(&path, write(options)).unwrap();
        let script = r#"
import sys, duckdb
f = sys.argv[1]
print(duckdb.sql(f"select count(*), sum(i), max(dec)::varchar, max(who.name), max(ts_millis)::varchar from '{f}'").fetchall())
print(duckdb.sql(f"select distinct compression from parquet_metadata('{f}')").fetchall())
"#;
        let out = python(script, &path);
        assert!(
            out.contains("[(2, -69999, '12345678901234567890.123456789', 'Ada', '2024-02-29 11:34:56.789+00')]"),
            "{name}: {out}"
        );
        assert!(out.contains(&format!("[('{name}',)]")), "{name}: {out}");
    }
}
