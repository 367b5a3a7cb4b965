//! The conversion side of `bench/convert.py`: reads JSON lines (one record each, as a
//! batch holds them), converts them to one Parquet file (OpenX, SNAPPY) on one
//! thread, and prints the time, the rows and the peak resident memory as JSON.
//!
//! `convert_bench RECORDS.jsonl COLUMNS.json OUT.parquet`, where COLUMNS.json is
//! `[[name, hive type], ...]`.

use std::time::Instant;

use sluice_convert::{Conversion, InputFormat, OutputFormat, ParquetOptions, TableSchema};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, records, columns, out] = &args[..] else {
        eprintln!("usage: convert_bench RECORDS.jsonl COLUMNS.json OUT.parquet");
        std::process::exit(2);
    };
    let columns: Vec<(String, String)> =
        serde_json::from_slice(&std::fs::read(columns).expect("read the columns")).expect("columns JSON");
    let schema = TableSchema::declared(columns.iter().map(|(n, t)| (n.as_str(), t.as_str()))).expect("a schema");
    // Read line by line, so that only the records are held, as a batch holds them.
    let reader = std::io::BufReader::new(std::fs::File::open(records).expect("open the records"));
    let mut records: Vec<Vec<u8>> = std::io::BufRead::split(reader, b'\n')
        .map(|line| line.expect("read a record"))
        .filter(|line| !line.is_empty())
        .collect();
    let bytes: usize = records.iter().map(Vec::len).sum();
    let conversion =
        Conversion::new(schema, InputFormat::default(), OutputFormat::Parquet(ParquetOptions::default())).unwrap();
    let started = Instant::now();
    let mut file = conversion.file().unwrap();
    let mut failed = 0u64;
    // Each record is let go once converted, as a delivery lane does.
    for record in &mut records {
        if file.push(&std::mem::take(record)).is_err() {
            failed += 1;
        }
    }
    let rows = file.rows();
    let body = file.finish().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(out, &body).expect("write the file");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds, "rows": rows, "failed": failed, "json_bytes": bytes,
            "parquet_bytes": body.len(), "peak_rss_mib": peak_kib as f64 / 1024.0,
        })
    );
}
