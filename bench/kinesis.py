"""The Kinesis source against its ceiling, in one run on this machine: a backlog of
records in a kinesalite data stream is read (a) by a plain reader that only calls
GetRecords as fast as kinesalite serves it (`sluice-loadgen kinesis-read`), and (b) by
Sluice, from its start until every record is delivered to a local bucket. Writes the
"Kinesis source" section of BENCHMARKS.md. Not a test: run on demand.

    python3 bench/kinesis.py [records] [shards] [rounds]      (defaults 200000 4 3)
"""

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
SLUICE = ROOT / "target" / "release" / "sluice"
LOADGEN = ROOT / "target" / "release" / "sluice-loadgen"
KINESALITE = ROOT / "tests" / "js" / "node_modules" / ".bin" / "kinesalite"
RECORD_BYTES = 200


def wait_http(url, accept_error=False):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            if accept_error:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def metric(endpoint, name):
    text = urllib.request.urlopen(endpoint + "/metrics").read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")]
    return sum(values)


def kinesis_client(endpoint):
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=Config(retries={"max_attempts": 10}))


def preload(endpoint, stream, n, shards):
    def put(worker):
        client = kinesis_client(endpoint)
        for start in range(worker * 500, n, 500 * 4):
            records = [{"PartitionKey": f"key-{i % (shards * 16)}",
                        "Data": json.dumps({"n": i, "pad": "x" * (RECORD_BYTES - 40)}).encode()[:RECORD_BYTES]}
                       for i in range(start, min(start + 500, n))]
            out = client.put_records(StreamName=stream, Records=records)
            assert out["FailedRecordCount"] == 0
    threads = [threading.Thread(target=put, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def sluice_round(work, kinesalite, stream, n):
    data = work / "sluice-data"
    shutil.rmtree(data, ignore_errors=True)
    (data / "buckets" / "bucket").mkdir(parents=True)
    config = work / "sluice.toml"
    config.write_text("[throttle]\nenabled = false\n")
    port = 4690
    endpoint = f"http://127.0.0.1:{port}"
    args = [str(SLUICE), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--config", str(config),
            "--kinesis-endpoint", kinesalite]
    log = open(work / "sluice.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    wait_http(endpoint + "/health")
    fh = boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                      aws_secret_access_key="bench")
    fh.create_delivery_stream(
        DeliveryStreamName="bench", DeliveryStreamType="KinesisStreamAsSource",
        KinesisStreamSourceConfiguration={"KinesisStreamARN": f"arn:aws:kinesis:us-east-1:000000000000:stream/{stream}",
                                          "RoleARN": "arn:aws:iam::000000000000:role/bench"},
        ExtendedS3DestinationConfiguration={"RoleARN": "arn:aws:iam::000000000000:role/bench",
                                            "BucketARN": "arn:aws:s3:::bucket"})
    while fh.describe_delivery_stream(DeliveryStreamName="bench")["DeliveryStreamDescription"][
            "DeliveryStreamStatus"] != "ACTIVE":
        time.sleep(0.05)
    time.sleep(1.5)  # the reader starts at the stream's creation time: nothing to read yet
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    return args, endpoint, log


def run_round(work, shards, n, sluice_first):
    kport = 4691
    kinesalite = f"http://127.0.0.1:{kport}"
    kproc = subprocess.Popen([str(KINESALITE), "--port", str(kport), "--createStreamMs", "0", "--shardLimit", "100"],
                             stdout=open(work / "kinesalite.log", "ab"), stderr=subprocess.STDOUT)
    try:
        wait_http(kinesalite, accept_error=True)
        stream = "bench"
        client = kinesis_client(kinesalite)
        client.create_stream(StreamName=stream, ShardCount=shards)
        client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.1})
        args, endpoint, log = sluice_round(work, kinesalite, stream, n)
        preload(kinesalite, stream, n, shards)
        def plain_reader():
            out = subprocess.run([str(LOADGEN), "kinesis-read", "--endpoint", kinesalite, "--stream", stream,
                                  "--records", str(n)], check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])["records_per_s"]

        def sluice():
            # From its start until every record is delivered.
            started = time.time()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_http(endpoint + "/health")
                while metric(endpoint, "DataReadFromKinesisStream_Records") < n:
                    time.sleep(0.05)
                urllib.request.urlopen(urllib.request.Request(endpoint + "/_sluice/flush", method="POST"),
                                       timeout=300)
                delivered = metric(endpoint, "DeliveryToS3_Records")
                seconds = time.time() - started
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            return delivered, n / seconds

        # Reading leaves the records in place: the two read the same backlog, in
        # alternating order from round to round.
        if sluice_first:
            (delivered, sluice_rate), plain = sluice(), plain_reader()
        else:
            plain, (delivered, sluice_rate) = plain_reader(), sluice()
        assert delivered == n, (delivered, n)
        lines = sum(p.read_bytes().count(b"}") for p in (work / "sluice-data" / "buckets" / "bucket").rglob("*")
                    if p.is_file())
        assert lines == n, (lines, n)
        return plain, sluice_rate
    finally:
        kproc.terminate()
        kproc.wait()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    subprocess.run(["cargo", "build", "--release", "-p", "sluice-server", "-p", "sluice-loadgen"], cwd=ROOT,
                   check=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            plain, sluice = run_round(Path(tmp), shards, n, sluice_first=r % 2 == 1)
            print(f"round {r + 1}: plain reader {plain:,.0f} records/s, Sluice {sluice:,.0f} records/s "
                  f"({sluice / plain:.2f}x)", flush=True)
            results.append((plain, sluice))
    results.sort(key=lambda x: x[1] / x[0])
    plain, sluice = results[len(results) // 2]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / (1 << 20)
    section = f"""## Kinesis source (issue 13)

A backlog of {n:,} records of {RECORD_BYTES} bytes in a {shards}-shard kinesalite data stream (in memory), read
(a) by a plain reader that only calls GetRecords as fast as kinesalite serves it, every shard in
parallel, 10,000 records per call (`sluice-loadgen kinesis-read`: the source's own ceiling here),
and (b) by Sluice, from its start until every record is delivered to a local bucket (read, appended
to its log with fsync, batched, written as objects; DeliveryToS3.Records counted and the bucket's
records checked). The same server and backlog, one after the other (in alternating order); the
median round of {rounds} by ratio.

* Command: `python3 bench/kinesis.py {n} {shards} {rounds}`
* When: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
* Machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}

| Reader | records/s | vs the plain reader |
|---|---:|---:|
| plain reader (GetRecords only) | {plain:,.0f} | 1.00x |
| Sluice (read, log, deliver) | {sluice:,.0f} | {sluice / plain:.2f}x |

Every round: {", ".join(f"{s / p:.2f}x" for p, s in sorted(results, key=lambda x: x[1] / x[0]))}. Target: at least 0.8x.
"""
    bench = ROOT / "BENCHMARKS.md"
    text = bench.read_text()
    pattern = re.compile(r"## Kinesis source \(issue 13\)\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section.rstrip("\n") + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    bench.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
