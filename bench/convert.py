"""Format conversion speed (issue 14): Sluice's JSON-to-Parquet conversion (one thread,
OpenX with its per-record validation, SNAPPY) against DuckDB (from PyPI, what Floci
converts with) turning the same JSON lines into Parquet with one thread, side by side,
rounds interleaved. 1 KiB records with 20 columns. Each side runs in its own process;
its peak resident memory includes the records it holds (Sluice: the batch, as a
delivery lane holds it).

    python3 bench/convert.py [MIB] [ROUNDS]     # default 128 MiB of records, 3 rounds

Needs `cargo build --release -p sluice-convert --example convert_bench`. Prints a
Markdown section and writes it into BENCHMARKS.md ("## Format conversion").
"""

import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    [(f"id{i}", "bigint") for i in range(4)]
    + [(f"x{i}", "double") for i in range(4)]
    + [(f"s{i}", "string") for i in range(8)]
    + [("flag", "boolean"), ("at", "timestamp"), ("day", "date"), ("price", "decimal(12,2)")]
)
DUCK_TYPES = {"bigint": "BIGINT", "double": "DOUBLE", "string": "VARCHAR", "boolean": "BOOLEAN",
              "timestamp": "TIMESTAMP", "date": "DATE", "decimal(12,2)": "DECIMAL(12,2)"}


def record(rng, i):
    r = {}
    for name, t in COLUMNS:
        if t == "bigint":
            r[name] = rng.randrange(1 << 40)
        elif t == "double":
            r[name] = rng.random() * 1000
        elif t == "string":
            r[name] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(90, 120)))
        elif t == "boolean":
            r[name] = rng.random() < 0.5
        elif t == "timestamp":
            r[name] = f"2024-05-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}"
        elif t == "date":
            r[name] = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        else:
            r[name] = f"{rng.randrange(10**9)}.{rng.randrange(100):02d}"
    return json.dumps(r, separators=(",", ":"))


DUCK = """
import json, resource, sys, time, duckdb
src, out, columns = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
con = duckdb.connect()
con.execute("SET threads = 1")
cols = "{" + ", ".join(f"'{n}': '{t}'" for n, t in columns) + "}"
started = time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_json('{src}', format = 'newline_delimited', columns = {cols})) "
            f"TO '{out}' (FORMAT parquet, COMPRESSION snappy)")
seconds = time.perf_counter() - started
rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
print(json.dumps({"seconds": seconds, "rows": rows,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    binary = ROOT / "target/release/examples/convert_bench"
    assert binary.exists(), "cargo build --release -p sluice-convert --example convert_bench"
    work = Path(tempfile.mkdtemp(prefix="sluice-convert-bench-"))
    src, columns = work / "records.jsonl", work / "columns.json"
    rng = random.Random(14)
    with open(src, "w") as f:
        written, i = 0, 0
        while written < mib << 20:
            line = record(rng, i) + "\n"
            f.write(line)
            written += len(line)
            i += 1
    n_records = i
    columns.write_text(json.dumps(COLUMNS))
    duck_columns = json.dumps([(n, DUCK_TYPES[t]) for n, t in COLUMNS])
    results = {"sluice": [], "duckdb": []}
    for _ in range(rounds):
        out = subprocess.run([str(binary), str(src), str(columns), str(work / "sluice.parquet")],
                             check=True, capture_output=True, text=True).stdout
        results["sluice"].append(json.loads(out))
        out = subprocess.run([sys.executable, "-c", DUCK, str(src), str(work / "duck.parquet"), duck_columns],
                             check=True, capture_output=True, text=True).stdout
        results["duckdb"].append(json.loads(out))
    for name, runs in results.items():
        assert all(r["rows"] == n_records for r in runs), (name, runs)
    size = src.stat().st_size
    median = {name: statistics.median(r["seconds"] for r in runs) for name, runs in results.items()}
    peak = {name: max(r["peak_rss_mib"] for r in runs) for name, runs in results.items()}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        "## Format conversion (issue 14)",
        "",
        f"* Command: `python3 bench/convert.py {mib} {rounds}`",
        f"* When: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"* Machine: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}",
        f"* Data: {n_records:,} JSON records of about 1 KiB, 20 columns (bigint, double, string, boolean, "
        f"timestamp, date, decimal(12,2)), {size / 2**20:.0f} MiB in all; one thread each; SNAPPY Parquet out.",
        "* Sluice: `sluice-convert` as a delivery lane runs it (OpenX SerDe: every value checked against its "
        "column), records held in memory as a batch is. DuckDB: `COPY (SELECT * FROM read_json(...)) TO ... "
        "(FORMAT parquet)` with `threads = 1`, reading the same lines from a file.",
        f"* Rounds: {rounds}, interleaved; the median round's time, the highest peak memory.",
        "",
        "| Converter | records/s | JSON MB/s | peak RSS MiB | vs DuckDB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("sluice", "duckdb"):
        rate = n_records / median[name]
        lines.append(f"| {name} | {rate:,.0f} | {size / 1e6 / median[name]:,.1f} | {peak[name]:,.0f} | "
                     f"{median['duckdb'] / median[name]:.2f}x |")
    section = "\n".join(lines) + "\n"
    print(section)
    bench_md = ROOT / "BENCHMARKS.md"
    text = bench_md.read_text()
    start = text.find("## Format conversion (issue 14)")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    bench_md.write_text(text)


if __name__ == "__main__":
    main()
