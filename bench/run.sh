#!/usr/bin/env bash
# Benchmarks Sluice against moto's server and a bare hyper server (the floor) in one
# run, with the same requests, and writes BENCHMARKS.md. Not a test: run on demand.
#
#   bash bench/run.sh [seconds-per-scenario] [rounds]      (defaults 5 and 3)
#
# Every round runs every scenario once, so the targets compared are measured
# interleaved in time; the report takes each scenario's median round. This machine is
# a shared VM whose speed drifts over minutes, and interleaving keeps the ratios honest.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
# Record data put through each delivery scenario, per round.
DELIVER_MB=${DELIVER_MB:-400}
OUT=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' boto3 cryptography
cargo build --release -p sluice-server -p sluice-loadgen
LOADGEN=target/release/sluice-loadgen
SLUICE=target/release/sluice

pids=()
# Stops every server and removes their data (gigabytes of log) when the run ends.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$OUT"/data-*; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# Samples the resident memory of a process into a file until it exits.
sample_rss() { while kill -0 "$1" 2>/dev/null; do awk '/VmRSS/ {print $2}' /proc/"$1"/status >> "$2" 2>/dev/null || true; sleep 0.5; done; }

start_sluice() {  # name, port, extra config, "bucket" to create the delivery bucket
  local data="$OUT/data-$1"
  # Throughput limits off: the benchmark measures what the server can do.
  printf 'transition_ms = 0\n[throttle]\nenabled = false\n%b' "${3:-}" > "$OUT/$1.toml"
  # The ingest servers have no bucket: their delivery retries (cheaply) instead of
  # competing for the cores with the scenarios that follow. Delivery is measured
  # on its own server.
  if [ "${4:-}" = bucket ]; then mkdir -p "$data/buckets/bench"; fi
  SLUICE_LOG=warn "$SLUICE" serve --listen 127.0.0.1:"$2" --data-dir "$data" --config "$OUT/$1.toml" > "$OUT/$1.log" 2>&1 &
  local pid=$!; pids+=("$pid"); echo "$pid" > "$OUT/port-$2.pid"; wait_port "$2"
  sample_rss "$pid" "$OUT/$1.rss" & pids+=("$!")
}

load() {  # label, endpoint, extra args...
  local label=$1 endpoint=$2; shift 2
  echo "== $label" >&2
  # Start every scenario with no dirty pages left by the previous one, whose
  # writeback would otherwise slow this one's fsyncs.
  sync
  # The server's CPU time per request, when its process is known.
  local port=${endpoint##*:} pid=()
  [ -f "$OUT/port-$port.pid" ] && pid=(--server-pid "$(cat "$OUT/port-$port.pid")")
  "$LOADGEN" run --endpoint "$endpoint" --seconds "$SECS" --label "$label" "${pid[@]}" "$@" | tee -a "$RESULTS"
}

"$LOADGEN" floor --listen 127.0.0.1:4703 > /dev/null & pids+=("$!"); echo "$!" > "$OUT/port-4703.pid"; wait_port 4703
moto_server -H 127.0.0.1 -p 4702 > "$OUT/moto.log" 2>&1 & pids+=("$!"); wait_port 4702
python3 - <<'PY'
import boto3
boto3.client("s3", endpoint_url="http://127.0.0.1:4702", region_name="us-east-1",
             aws_access_key_id="a", aws_secret_access_key="b").create_bucket(Bucket="bench")
PY
start_sluice sluice 4701
# The cost of security: the same server verifying SigV4, and one serving TLS.
python3 -c "import sys; sys.path.insert(0, 'tests/e2e'); from pathlib import Path; from receiver import make_ca_and_cert; make_ca_and_cert(Path('$OUT'))"
start_sluice sluice-sigv4 4707 '[[auth.keys]]\naccess_key_id = "AKIDBENCH"\nsecret_access_key = "bench-secret"\n'
start_sluice sluice-tls 4708 "[tls]\ncert_file = \"$OUT/cert.pem\"\nkey_file = \"$OUT/key.pem\"\n"
start_sluice sluice-enc 4704
start_sluice sluice-100 4705
# Delivery: HTTP endpoint (plain http to the load generator's own receiver) and
# partitioned objects in the local bucket.
start_sluice sluice-deliver 4706 '[http]\nallow_http = true\n' bucket

PR=(--op put-record --record-bytes 100 --connections 64)
PRB=(--op put-record-batch --records 500 --record-bytes 1024 --connections 64)
# Deletes every stream of the Sluice ingest servers, and with them their logs: the
# ingest servers have no bucket, so what a round puts stays on disk, and by the third
# round a stream would hold the 8 GiB that makes Sluice refuse puts ([limits]).
# Each round starts from empty streams instead.
reset_streams() {
  OUT="$OUT" python3 - <<'PY'
import os, time, boto3
from botocore.config import Config
out = os.environ["OUT"]
for port, key, secret, scheme in [(4701, "a", "b", "http"), (4704, "a", "b", "http"), (4705, "a", "b", "http"),
                                  (4707, "AKIDBENCH", "bench-secret", "http"), (4708, "a", "b", "https")]:
    fh = boto3.client("firehose", endpoint_url=f"{scheme}://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id=key, aws_secret_access_key=secret, verify=f"{out}/ca.pem",
                      config=Config(retries={"max_attempts": 1}))
    for name in fh.list_delivery_streams(Limit=10000)["DeliveryStreamNames"]:
        fh.delete_delivery_stream(DeliveryStreamName=name)
    for _ in range(200):
        if not fh.list_delivery_streams(Limit=10000)["DeliveryStreamNames"]:
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"streams of port {port} were not deleted")
PY
}

for round in $(seq 1 "$ROUNDS"); do
  create=()
  if [ "$round" = 1 ]; then create=(--create); else reset_streams; create=(--create); fi
  load "floor PutRecord" http://127.0.0.1:4703 "${PR[@]}"
  load "sluice PutRecord" http://127.0.0.1:4701 "${PR[@]}" "${create[@]}"
  load "sluice PutRecord SigV4" http://127.0.0.1:4707 "${PR[@]}" "${create[@]}" --sign AKIDBENCH:bench-secret
  load "sluice PutRecord TLS" https://127.0.0.1:4708 "${PR[@]}" "${create[@]}" --ca-file "$OUT/ca.pem"
  load "moto PutRecord" http://127.0.0.1:4702 "${PR[@]}" "${create[@]}"
  load "floor PutRecordBatch" http://127.0.0.1:4703 "${PRB[@]}"
  # Each of these writes gigabytes, and this VM's disk slows down after a few: the
  # order rotates from round to round so that no variant always comes last.
  for i in 0 1 2 3; do
    case $(( (i + round) % 4 )) in
      0) load "sluice PutRecordBatch" http://127.0.0.1:4701 "${PRB[@]}" ;;
      1) load "sluice PutRecordBatch SigV4" http://127.0.0.1:4707 "${PRB[@]}" --sign AKIDBENCH:bench-secret ;;
      2) load "sluice PutRecordBatch TLS" https://127.0.0.1:4708 "${PRB[@]}" --ca-file "$OUT/ca.pem" ;;
      3) load "sluice PutRecordBatch encrypted" http://127.0.0.1:4704 "${PRB[@]}" "${create[@]}" --encrypted ;;
    esac
  done
  load "moto PutRecordBatch" http://127.0.0.1:4702 "${PRB[@]}"
  load "sluice PutRecord 100 streams" http://127.0.0.1:4705 "${PR[@]}" --streams 100 "${create[@]}"
  load "sluice PutRecordBatch 100 streams" http://127.0.0.1:4705 "${PRB[@]}" --streams 100
  for mode in http partitioned; do
    echo "== delivery $mode" >&2
    sync
    "$LOADGEN" deliver --endpoint http://127.0.0.1:4706 --mode "$mode" --megabytes "$DELIVER_MB" \
      --stream "deliver-$mode-$round" --receiver 127.0.0.1:$((4720 + round)) --label "delivery $mode" | tee -a "$RESULTS"
  done
done

for s in sluice sluice-sigv4 sluice-tls sluice-enc sluice-100 sluice-deliver; do
  echo "{\"label\": \"rss $s\", \"rss_kib_max\": $(sort -n "$OUT/$s.rss" | tail -1)}" >> "$RESULTS"
done
# The disk's own limit for the same shape of work: sequential 1 MiB writes with an
# fdatasync after each, in the same filesystem as the log.
dd if=/dev/zero of="$OUT/dd.bin" bs=1M count=512 oflag=dsync 2> "$OUT/dd.txt"; rm -f "$OUT/dd.bin"
# Written aside first: report.py keeps the section bench/ab.sh wrote into the old file.
python3 bench/report.py "$RESULTS" "$OUT/dd.txt" "bash bench/run.sh $SECS $ROUNDS" > "$OUT/BENCHMARKS.md"
mv "$OUT/BENCHMARKS.md" BENCHMARKS.md
echo "wrote BENCHMARKS.md (raw figures in $RESULTS)" >&2
