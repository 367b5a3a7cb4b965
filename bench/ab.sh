#!/usr/bin/env bash
# Two builds of Sluice side by side: the same ingest loads against both, interleaved
# (A then B, then B then A...) so the VM's drift and writeback hit both alike, and
# the medians and ratios written into BENCHMARKS.md (its "Two builds side by side"
# section). Not a test.
#
#   bash bench/ab.sh A_BINARY B_BINARY [rounds] [seconds-per-run]   (defaults 4 and 4)
#
# The run has two halves with the servers' slots (port, data directory, start order)
# swapped: measured here, whichever build ran in the second slot was 4-8% slower on
# PutRecordBatch, whatever the build. Each build spends half its rounds in each slot.
#
# For example, the last commit against the working tree:
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p sluice-server)
#   bash bench/ab.sh /tmp/base-target/release/sluice target/release/sluice
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1"); B=$(realpath "$2")
ROUNDS=${3:-4}
SECS=${4:-4}
# Which loads (operation and number of streams); AB_SCENARIOS="put-record-batch 1" runs one.
IFS=',' read -r -a SCENARIOS <<< "${AB_SCENARIOS:-put-record 1,put-record 100,put-record-batch 1}"
OUT=bench/results/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cargo build --release -p sluice-loadgen
LOADGEN=target/release/sluice-loadgen
printf 'transition_ms = 0\n[throttle]\nenabled = false\n' > "$OUT/config.toml"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$OUT"/data-*; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; exit 1; }

# Each round starts from fresh streams (their logs deleted with them): the servers
# have no bucket, and a stream holding 8 GiB would make Sluice refuse puts.
fresh_streams() {
  for port in 4811 4812; do
    python3 - "$port" <<'PY'
import sys, boto3
fh = boto3.client("firehose", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="a", aws_secret_access_key="b")
for name in fh.list_delivery_streams(Limit=10000)["DeliveryStreamNames"]:
    fh.delete_delivery_stream(DeliveryStreamName=name)
PY
    # 100 streams (bench-0 .. bench-99); one-stream loads use bench-0.
    "$LOADGEN" run --endpoint http://127.0.0.1:"$port" --op put-record --streams 100 --create --seconds 1 > /dev/null
  done
}

# One half: build $1 in slot 4811, build $2 in slot 4812.
half() {
  declare -A PID PORT
  local slot=4811
  for name in "$1" "$2"; do
    local bin=${!name}
    SLUICE_LOG=warn "$bin" serve --listen 127.0.0.1:"$slot" --data-dir "$OUT/data-$slot" --config "$OUT/config.toml" \
      > "$OUT/$name-$slot.log" 2>&1 &
    PID[$name]=$!; PORT[$name]=$slot; pids+=("$!"); wait_port "$slot"
    slot=4812
  done
  for round in $(seq 1 $((ROUNDS / 2))); do
    fresh_streams
    # Who goes first alternates, so neither build always follows the other's writeback.
    local order="$1 $2"; [ $((round % 2)) -eq 0 ] && order="$2 $1"
    for scenario in "${SCENARIOS[@]}"; do
      read -r op streams <<< "$scenario"
      for name in $order; do
        sync
        "$LOADGEN" run --endpoint http://127.0.0.1:"${PORT[$name]}" --op "$op" --streams "$streams" --records 500 \
          --record-bytes "$([ "$op" = put-record ] && echo 100 || echo 1024)" --seconds "$SECS" \
          --server-pid "${PID[$name]}" --label "$name|$op|$streams" >> "$OUT/results.jsonl"
      done
    done
  done
  kill "${PID[$1]}" "${PID[$2]}"; wait "${PID[$1]}" "${PID[$2]}" 2>/dev/null || true
  rm -rf "$OUT"/data-*
}

half A B
half B A

python3 - "$OUT/results.jsonl" "$A" "$B" "$ROUNDS" "$SECS" <<'EOF'
import json, statistics, sys, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
a_bin, b_bin, rounds, secs = sys.argv[2:6]
by = {}
for r in rows:
    side, op, streams = r["label"].split("|")
    by.setdefault((op, streams), {}).setdefault(side, []).append(r)
lines = ["<!-- ab -->", "## Two builds side by side", "",
         f"`bash bench/ab.sh A B {rounds} {secs}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
         f"on the machine above. A = `{a_bin}`, B = `{b_bin}`. Each load ran {rounds} times against each build, "
         "interleaved, half of them with the two servers' places swapped; medians. Server CPU per request is its "
         "user + system time over the window divided by requests answered.", "",
         "| Load | A requests/s | B requests/s | B / A | A p99 ms | B p99 ms | A CPU µs/req | B CPU µs/req | errors A / B |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for (op, streams), sides in by.items():
    med = lambda side, key: statistics.median(r[key] for r in sides[side])
    a, b = med("A", "requests_per_s"), med("B", "requests_per_s")
    name = ("PutRecord" if op == "put-record" else "PutRecordBatch (500 × 1 KiB)") + (f", {streams} streams" if streams != "1" else "")
    lines.append(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {med('A', 'p99_ms'):.2f} | {med('B', 'p99_ms'):.2f} "
                 f"| {med('A', 'server_cpu_us_per_request'):.1f} | {med('B', 'server_cpu_us_per_request'):.1f} "
                 f"| {sum(r['errors'] for r in sides['A'])} / {sum(r['errors'] for r in sides['B'])} |")
section = "\n".join(lines) + "\n"
text = open("BENCHMARKS.md").read() if os.path.exists("BENCHMARKS.md") else ""
# The cluster section (bench/cluster.sh) stays after this one.
cluster = "\n<!-- cluster -->" + text.split("<!-- cluster -->", 1)[1] if "<!-- cluster -->" in text else ""
text = text.split("<!-- ab -->")[0].rstrip("\n") + "\n\n" + section + cluster
open("BENCHMARKS.md", "w").write(text)
print(section)
EOF
