//! What the readers' tests share: a table with every Hive type (nested ones
//! included), a record in every accepted form for it, and a Python runner for the
//! independent readers (pyarrow, DuckDB; `.ci/run` installs them).

use std::process::Command;

/// The table: every scalar type, a decimal, a timestamp per input form, nested types.
pub(crate) const COLUMNS: &[(&str, &str)] = &[
    ("b", "boolean"),
    ("t", "tinyint"),
    ("s", "smallint"),
    ("i", "int"),
    ("l", "bigint"),
    ("f", "float"),
    ("d", "double"),
    ("dec", "decimal(38,9)"),
    ("str", "string"),
    ("c", "char(4)"),
    ("v", "varchar(8)"),
    ("bin", "binary"),
    ("day", "date"),
    ("ts_iso", "timestamp"),
    ("ts_local", "timestamp"),
    ("ts_seconds", "timestamp"),
    ("ts_millis", "timestamp"),
    ("ts_float", "timestamp"),
    ("tags", "array<string>"),
    ("counts", "map<string,bigint>"),
    ("who", "struct<name:string,age:int,langs:array<string>>"),
];

/// Two rows for `COLUMNS`: every column set, then only `i`.
pub(crate) const RECORD: &str = r#"{"b":true,"t":-7,"s":300,"i":-70000,"l":9007199254740993,"f":1.5,"d":-2.25,
"dec":"12345678901234567890.123456789","str":"héllo","c":"abcdef","v":"short","bin":"raw",
"day":"2024-02-29","ts_iso":"2024-02-29T12:34:56.789+01:00","ts_local":"2024-02-29 11:34:56.789",
"ts_seconds":1709206496,"ts_millis":1709206496789,"ts_float":"1709206496.789",
"tags":["x","y"],"counts":{"a":1,"b":null},"who":{"Name":"Ada","age":36,"langs":["en"]}}
{"i":1}"#;

/// Runs `script` with `path` as its argument; its standard output.
pub(crate) fn python(script: &str, path: &std::path::Path) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 with pyarrow and duckdb is installed (.ci/run installs them)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
