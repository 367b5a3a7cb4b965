//! Appends read back by pyiceberg (from PyPI; `.ci/run` installs it): a table
//! pyiceberg creates in a SQL catalog on SQLite, rows appended by Sluice, each
//! batch committed once however often it is appended, records that do not fit
//! reported and left out.

use std::path::Path;
use std::process::Command;

use sluice_convert::InputFormat;
use sluice_iceberg::{CatalogConfig, CatalogKind, Tables};

fn python(dir: &Path, script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("python3 with pyiceberg is installed (.ci/run installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The SQLite catalog pyiceberg made in `dir` (as [`CATALOG`] opens it).
async fn open(dir: &Path) -> Tables {
    let config = CatalogConfig {
        kind: CatalogKind::Sql { uri: format!("sqlite://{}/catalog.db", dir.display()) },
        name: "sluice".into(),
        warehouse: Some(format!("file://{}/warehouse", dir.display())),
        s3: Default::default(),
    };
    Tables::open(&config).await.unwrap()
}

const CATALOG: &str = r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
d = sys.argv[1]
catalog = SqlCatalog("sluice", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")
"#;

const CREATE: &str = r#"
from pyiceberg.schema import Schema
from pyiceberg.types import (NestedField, LongType, StringType, DecimalType, TimestamptzType, ListType,
                             StructType, DoubleType, BooleanType, DateType)
catalog.create_namespace("lake")
catalog.create_table("lake.events", schema=Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "user", StringType()),
    NestedField(3, "amount", DecimalType(12, 2)),
    NestedField(4, "at", TimestamptzType()),
    NestedField(5, "ok", BooleanType()),
    NestedField(6, "day", DateType()),
    NestedField(7, "tags", ListType(8, StringType())),
    NestedField(9, "geo", StructType(NestedField(10, "city", StringType()), NestedField(11, "lat", DoubleType()))),
))
"#;

const READ: &str = r#"
table = catalog.load_table("lake.events")
for row in sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"]):
    print(sorted(row.items()))
print("snapshots", len(table.snapshots()))
for s in table.snapshots():
    print("batch", s.summary["sluice.batch-id"], s.summary["added-records"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_reads_each_batch_once_with_the_values_appended() {
    let dir = tempfile::tempdir().unwrap();
    python(dir.path(), &format!("{CATALOG}{CREATE}"));
    let tables = open(dir.path()).await;
    tables.check("lake", "events").await.unwrap();
    assert!(tables.check("lake", "nope").await.unwrap_err().to_string().contains("does not exist"));
    let records: Vec<&[u8]> = vec![
        br#"{"id": 1, "User": "ada", "amount": "12.50", "at": "2024-05-01T10:00:00Z", "ok": true, "day": "2024-05-01", "tags": ["a"], "geo": {"city": "Oslo", "lat": 59.9}}"#,
        br#"{"user": "no id"}"#,
        b"not json",
        br#"{"id": 2}{"id": 3, "user": "two in one"}"#,
    ];
    let input = InputFormat::default();
    let first = tables.append("lake", "events", "batch-1", &input, &records).await.unwrap();
    assert_eq!(first.rows, 3);
    assert!(!first.already_committed);
    let failed: Vec<usize> = first.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![1, 2]);
    assert!(first.failed[0].1.message.contains("id: a required field is missing"), "{:?}", first.failed);
    // The same batch again (a redo after a crash): nothing more.
    let again = tables.append("lake", "events", "batch-1", &input, &records).await.unwrap();
    assert!(again.already_committed);
    assert_eq!(again.rows, 0);
    assert_eq!(again.failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2], "failures told again");
    let second = tables.append("lake", "events", "batch-2", &input, &[br#"{"id": 4}"#]).await.unwrap();
    assert_eq!(second.rows, 1);
    let out = python(dir.path(), &format!("{CATALOG}{READ}"));
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(rows[0].contains("('amount', Decimal('12.50'))"), "{out}");
    assert!(rows[0].contains("('geo', {'city': 'Oslo', 'lat': 59.9})"), "{out}");
    assert!(rows[0].contains("('tags', ['a'])"), "{out}");
    assert!(rows[0].contains("('day', datetime.date(2024, 5, 1))"), "{out}");
    assert!(rows[0].contains("('at', datetime.datetime(2024, 5, 1, 10, 0, tzinfo="), "{out}");
    assert!(rows[2].contains("('user', 'two in one')"), "{out}");
    assert!(out.contains("snapshots 2\n"), "{out}");
    assert!(out.contains("batch batch-1 3\n") && out.contains("batch batch-2 1\n"), "{out}");
}

const CREATE_PARTITIONED: &str = r#"
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, LongType, StringType, TimestamptzType
from pyiceberg.partitioning import PartitionSpec, PartitionField
from pyiceberg.transforms import IdentityTransform, DayTransform, BucketTransform
catalog.create_namespace("lake")
catalog.create_table("lake.clicks", schema=Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "user", StringType()),
    NestedField(3, "at", TimestamptzType()),
), partition_spec=PartitionSpec(
    PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="user"),
    PartitionField(source_id=3, field_id=1001, transform=DayTransform(), name="at_day"),
    PartitionField(source_id=1, field_id=1002, transform=BucketTransform(4), name="id_bucket"),
))
"#;

// Every data file's rows checked against the partition its manifest entry names
// (pyiceberg's own transforms), and a filtered scan (which prunes by those
// partition values) finding exactly the rows it should.
const READ_PARTITIONED: &str = r#"
import datetime, pyarrow.parquet as pq
from pyiceberg.expressions import EqualTo
from pyiceberg.transforms import DayTransform, BucketTransform
from pyiceberg.types import LongType, TimestamptzType
table = catalog.load_table("lake.clicks")
rows = table.scan().to_arrow().to_pylist()
print("rows", len(rows), "ids", len({r["id"] for r in rows}))
print("ada", sorted(r["id"] for r in table.scan(row_filter=EqualTo("user", "ada")).to_arrow().to_pylist()))
day = DayTransform().transform(TimestamptzType())
bucket = BucketTransform(4).transform(LongType())
files = table.inspect.files().to_pylist()
for f in files:
    p = f["partition"]
    # pyiceberg shows a day partition as a date, its transform gives days since the epoch.
    p_day = None if p["at_day"] is None else (p["at_day"] - datetime.date(1970, 1, 1)).days
    for r in pq.read_table(f["file_path"].removeprefix("file://")).to_pylist():
        at = None if r["at"] is None else int(r["at"].timestamp() * 1_000_000)
        assert (r["user"], day(at), bucket(r["id"])) == (p["user"], p_day, p["id_bucket"]), (f["file_path"], r, p)
print("files", len(files), "partitions", len({tuple(sorted(f["partition"].items())) for f in files}))
print("paths", all("/data/user=" in f["file_path"] for f in files))
print("snapshots", len(table.snapshots()))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_gets_each_row_in_its_partition_in_one_snapshot_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    python(dir.path(), &format!("{CATALOG}{CREATE_PARTITIONED}"));
    let tables = open(dir.path()).await;
    tables.check("lake", "clicks").await.unwrap();
    let users = ["ada", "bo", "cy"];
    let records: Vec<String> = (0..60)
        .map(|i| match i {
            // A row with no user and no time: the null partition.
            59 => r#"{"id": 59}"#.to_string(),
            _ => format!(r#"{{"id": {i}, "user": "{}", "at": "2024-05-0{}T10:00:00Z"}}"#, users[i % 3], 1 + i % 2),
        })
        .collect();
    let records: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    let input = InputFormat::default();
    let first = tables.append("lake", "clicks", "batch-1", &input, &records[..40]).await.unwrap();
    assert_eq!((first.rows, first.failed.len()), (40, 0));
    assert!(tables.append("lake", "clicks", "batch-1", &input, &records[..40]).await.unwrap().already_committed);
    let second = tables.append("lake", "clicks", "batch-2", &input, &records[40..]).await.unwrap();
    assert_eq!(second.rows, 20);
    let out = python(dir.path(), &format!("{CATALOG}{READ_PARTITIONED}"));
    assert!(out.contains("rows 60 ids 60\n"), "{out}");
    let ada: Vec<String> = (0..59).filter(|i| i % 3 == 0).map(|i| i.to_string()).collect();
    assert!(out.contains(&format!("ada [{}]\n", ada.join(", "))), "{out}");
    // 3 users x 2 days x up to 4 buckets, and the null row's partition.
    let partitions: usize =
        out.split("partitions ").nth(1).unwrap().trim_end().split('\n').next().unwrap().parse().unwrap();
    assert!(partitions > 6, "{out}");
    assert!(out.contains("paths True\n"), "{out}");
    assert!(out.contains("snapshots 2\n"), "{out}");
}
