"""Delivery to the local-directory default: Firehose's object keys, buffering by size
and interval, compression, the shutdown flush, retries while a bucket is missing,
and exactly-once objects across kill -9 (every acknowledged record in exactly one
object)."""

import base64
import gzip
import os
import random
import re
import time
import urllib.request
from datetime import datetime, timedelta, timezone

from conftest import S3_CONFIG, Server, make_stream
from test_crash import kill_under_load

KEY = re.compile(r"^(?P<prefix>.*?)(?P<stream>[A-Za-z0-9_.-]+)-(?P<version>\d+)-"
                 r"(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})-(?P<uuid>[0-9a-f-]{36})(?P<ext>.*)$")


def bucket(server, name="bucket"):
    path = server.data_dir / "buckets" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def objects(bucket_dir):
    """Every file in the bucket: temporary files are written outside buckets, so
    anything here is an object a reader would take for data."""
    found = []
    for root, _, files in os.walk(bucket_dir):
        for name in files:
            found.append(os.path.relpath(os.path.join(root, name), bucket_dir))
    return sorted(found)


def wait_for_objects(bucket_dir, n=1, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = objects(bucket_dir)
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} objects after {timeout}s: {objects(bucket_dir)}")


def hints(size_mb, interval_s):
    return {"SizeInMBs": size_mb, "IntervalInSeconds": interval_s}


def test_interval_zero_delivers_within_two_seconds_with_firehose_keys(server, fh):
    out = bucket(server)
    make_stream(fh, "keys", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    records = [f"record-{i}\n".encode() for i in range(50)]
    started = time.time()
    fh.put_record_batch(DeliveryStreamName="keys", Records=[{"Data": r} for r in records])
    [key] = wait_for_objects(out, timeout=2)
    assert time.time() - started < 2
    m = KEY.match(key)
    assert m, key
    now = datetime.now(timezone.utc)
    arrival = datetime.strptime(m["ts"], "%Y-%m-%d-%H-%M-%S").replace(tzinfo=timezone.utc)
    assert abs((now - arrival).total_seconds()) < 10
    assert m["prefix"] == arrival.strftime("%Y/%m/%d/%H/")
    assert (m["stream"], m["version"], m["ext"]) == ("keys", "1", "")
    assert (out / key).read_bytes() == b"".join(records), "records concatenated in order, no delimiter added"
    with urllib.request.urlopen(server.endpoint + "/metrics") as r:
        metrics = r.read().decode()
    assert 'DeliveryToS3_Records{DeliveryStreamName="keys"} 50' in metrics
    assert 'DeliveryToS3_Success{DeliveryStreamName="keys"} 1' in metrics
    assert 'DeliveryToS3_DataFreshness{DeliveryStreamName="keys"}' in metrics
    assert server.stop() == 0
    assert server.dump("keys") == [], "delivered records are acknowledged and leave the log"


def test_prefixes_time_zone_and_compression(server, fh):
    out = bucket(server)
    cases = {
        "static": (dict(Prefix="legacy"), r"^legacy\d{4}/\d{2}/\d{2}/\d{2}/static-1-"),
        "expr": (dict(Prefix="year=!{timestamp:yyyy}/r=!{firehose:random-string}/",
                      ErrorOutputPrefix="!{firehose:error-output-type}/"), r"^year=\d{4}/r=[0-9a-f]{11}/expr-1-"),
        "tokyo": (dict(Prefix="tokyo/", CustomTimeZone="Asia/Tokyo"), None),
        "gz": (dict(CompressionFormat="GZIP"), r"^\d{4}/\d{2}/\d{2}/\d{2}/gz-1-.*\.gz$"),
        "ext": (dict(CompressionFormat="GZIP", FileExtension=".json.gz"), r".*\.json\.gz$"),
    }
    for name, (extra, _) in cases.items():
        make_stream(fh, name, ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0), **extra))
    for name in cases:
        fh.put_record(DeliveryStreamName=name, Record={"Data": f"{name}-data\n".encode()})
    keys = wait_for_objects(out, n=len(cases))
    by_stream = {KEY.match(k)["stream"]: k for k in keys}
    for name, (_, pattern) in cases.items():
        key = by_stream[name]
        if pattern:
            assert re.match(pattern, key), (name, key)
        body = (out / key).read_bytes()
        assert (gzip.decompress(body) if key.endswith(".gz") else body) == f"{name}-data\n".encode()
    # Prefix and suffix timestamp are both in Tokyo time (UTC+9) and agree.
    tokyo = KEY.match(by_stream["tokyo"])
    local = datetime.strptime(tokyo["ts"], "%Y-%m-%d-%H-%M-%S")
    assert tokyo["prefix"] == local.strftime("tokyo/%Y/%m/%d/%H/"), by_stream["tokyo"]
    tokyo_now = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=9)
    assert abs((tokyo_now - local).total_seconds()) < 600, by_stream["tokyo"]


def test_size_trigger_and_shutdown_flush(server, fh):
    out = bucket(server)
    make_stream(fh, "sized", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 900)))
    chunk = [{"Data": b"s" * 100_000 + b"\n"}] * 4
    for _ in range(3):
        fh.put_record_batch(DeliveryStreamName="sized", Records=chunk)
    first = wait_for_objects(out, timeout=5)
    assert len(first) >= 1, "1 MiB reached: delivered long before the 900 s interval"
    fh.put_record(DeliveryStreamName="sized", Record={"Data": b"tail\n"})
    assert server.stop() == 0
    everything = b"".join((out / k).read_bytes() for k in objects(out))
    assert len(everything) == 12 * 100_001 + 5, "the shutdown flushed the rest, honouring no minimum"
    assert server.dump("sized") == []


def test_a_missing_bucket_is_retried_not_created(server, fh):
    make_stream(fh, "nobucket", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    fh.put_record(DeliveryStreamName="nobucket", Record={"Data": b"patient\n"})
    time.sleep(1.5)
    assert not (server.data_dir / "buckets" / "bucket").exists(), "Sluice must not create buckets"
    with urllib.request.urlopen(server.endpoint + "/metrics") as r:
        line = next(l for l in r.read().decode().splitlines()
                    if l.startswith('DeliveryToS3_DataFreshness{DeliveryStreamName="nobucket"}'))
    assert float(line.split()[-1]) >= 1.0, f"the waiting record's age is reported: {line}"
    out = bucket(server)
    [key] = wait_for_objects(out, timeout=10)
    assert (out / key).read_bytes() == b"patient\n"


def test_a_batch_interrupted_by_a_crash_is_delivered_again_exactly(server, fh):
    make_stream(fh, "redo", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    first = [f"first-{i}\n".encode() for i in range(10)]
    fh.put_record_batch(DeliveryStreamName="redo", Records=[{"Data": r} for r in first])
    time.sleep(1.0)  # the batch is decided and its upload keeps failing: no bucket yet
    later = [f"later-{i}\n".encode() for i in range(5)]
    fh.put_record_batch(DeliveryStreamName="redo", Records=[{"Data": r} for r in later])
    server.kill()
    out = bucket(server)
    server.start()
    keys = wait_for_objects(out, n=2)
    bodies = sorted((out / k).read_bytes() for k in keys)
    assert bodies == sorted([b"".join(first), b"".join(later)]), "the recorded batch, exactly, then the rest"
    assert "decided before a restart" in server.log.read_text()


def delivery_payload(record_id):
    """Newline-terminated, so records can be split back out of a delivered object."""
    return f"{record_id}|{'p' * (len(record_id) * 7)}\n".encode()


def test_kill_9_during_delivery_leaves_every_acked_record_in_exactly_one_object(tmp_path):
    server = Server(tmp_path / "data").start()
    out = bucket(server)
    client = server.client()
    make_stream(client, "exact", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 1)))
    acked, unknown = [], []
    rng = random.Random(7)
    for iteration in range(int(os.environ.get("SLUICE_DELIVERY_CRASH_ITERATIONS", "10"))):
        producers = [("exact", str(p), acked) for p in range(3)]
        kill_under_load(server, producers, rng.uniform(0.5, 2.0), iteration, unknown, make_payload=delivery_payload)
    assert server.stop() == 0
    seen = {}
    for key in objects(out):
        for line in (out / key).read_bytes().decode().splitlines():
            record_id, pad = line.split("|")
            assert pad == "p" * (len(record_id) * 7), f"damaged record in {key}"
            seen[record_id] = seen.get(record_id, 0) + 1
    left = [base64.b64decode(r["data"]).decode().split("|")[0] for r in server.dump("exact")]
    missing = [i for i in acked if i not in seen and i not in left]
    duplicated = {i: n for i, n in seen.items() if n > 1}
    assert not missing, f"{len(missing)} acknowledged records neither delivered nor in the log: {missing[:5]}"
    assert not duplicated, f"records delivered twice: {list(duplicated.items())[:5]}"
    assert set(seen) <= set(acked) | set(unknown)
    print(f"\ndelivery crash report: acked={len(acked)} unknown={len(unknown)} objects={len(objects(out))} "
          f"delivered={len(seen)} left_in_log={len(left)} duplicates=0 lost=0")


def test_update_destination_applies_to_new_batches(server, fh):
    out = bucket(server)
    make_stream(fh, "moving", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, Prefix="v1/", BufferingHints=hints(1, 0)))
    fh.put_record(DeliveryStreamName="moving", Record={"Data": b"before\n"})
    [first] = wait_for_objects(out)
    fh.update_destination(DeliveryStreamName="moving", CurrentDeliveryStreamVersionId="1",
                          DestinationId="destinationId-000000000001", ExtendedS3DestinationUpdate={"Prefix": "v2/"})
    fh.put_record(DeliveryStreamName="moving", Record={"Data": b"after\n"})
    keys = wait_for_objects(out, n=2)
    [second] = [k for k in keys if k != first]
    assert first.startswith("v1") and KEY.match(first)["version"] == "1"
    assert second.startswith("v2") and KEY.match(second)["version"] == "2", second
    assert (out / second).read_bytes() == b"after\n"


def test_records_outliving_the_retention_period_are_counted_logged_and_written_as_errors(tmp_path):
    import json
    server = Server(tmp_path / "data", extra_config="[delivery]\nretention_s = 2\n").start()
    fh = server.client()
    out = bucket(server)
    # The data key has an empty segment the local store refuses; the error prefix does not.
    make_stream(fh, "doomed", ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, Prefix="bad//", ErrorOutputPrefix="errors/", BufferingHints=hints(1, 0)))
    make_stream(fh, "homeless", ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, BucketARN="arn:aws:s3:::missing", BufferingHints=hints(1, 0)))
    records = [f"doomed-{i}".encode() for i in range(3)]
    fh.put_record_batch(DeliveryStreamName="doomed", Records=[{"Data": r} for r in records])
    fh.put_record(DeliveryStreamName="homeless", Record={"Data": b"nowhere"})
    [key] = wait_for_objects(out, timeout=15)
    assert key.startswith("errors/doomed-1-"), key
    lines = [json.loads(l) for l in (out / key).read_text().splitlines()]
    assert [base64.b64decode(l["rawData"]) for l in lines] == records
    assert all(l["errorCode"] == "S3.DeliveryFailed" and l["attemptsMade"] >= 1 for l in lines)
    assert all({"arrivalTimestamp", "errorMessage", "attemptEndingTimestamp"} <= set(l) for l in lines)
    deadline = time.time() + 15
    while True:
        with urllib.request.urlopen(server.endpoint + "/metrics") as r:
            metrics = r.read().decode()
        if 'sluice_records_expired{DeliveryStreamName="homeless"} 1' in metrics:
            break
        assert time.time() < deadline, "the record for a missing bucket was never given up"
        time.sleep(0.2)
    assert 'sluice_records_expired{DeliveryStreamName="doomed"} 3' in metrics
    assert server.stop() == 0
    assert "outlived the retention period" in server.log.read_text()
    assert server.dump("doomed") == [] and server.dump("homeless") == []


def test_deleting_a_stream_stops_its_retries(server, fh):
    make_stream(fh, "gone", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    fh.put_record(DeliveryStreamName="gone", Record={"Data": b"x\n"})
    time.sleep(1.2)  # failing: no bucket
    fh.delete_delivery_stream(DeliveryStreamName="gone")
    time.sleep(3.5)  # the retry after deletion notices it and stops
    log = server.log.read_text()
    assert server.stop() == 0
    assert "Stream deleted; its delivery stops." in log
    assert log.count("Delivery to S3 failed") <= 2, "no attempt after the deletion was noticed"


def test_s3_backup_enabled_by_update_receives_new_records_and_cannot_be_disabled(server, fh):
    import botocore.exceptions
    out, copies = bucket(server), bucket(server, "copies")
    try:
        make_stream(fh, "nobackupconfig", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, S3BackupMode="Enabled"))
        raise AssertionError("S3BackupMode Enabled without S3BackupConfiguration was accepted")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidArgumentException", e.response
    make_stream(fh, "later-backup", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    fh.put_record(DeliveryStreamName="later-backup", Record={"Data": b"before\n"})
    wait_for_objects(out)
    fh.update_destination(
        DeliveryStreamName="later-backup", CurrentDeliveryStreamVersionId="1",
        DestinationId="destinationId-000000000001",
        ExtendedS3DestinationUpdate={"S3BackupMode": "Enabled", "S3BackupUpdate": {
            "BucketARN": "arn:aws:s3:::copies", "RoleARN": S3_CONFIG["RoleARN"], "Prefix": "copy/",
            "BufferingHints": hints(1, 0), "CompressionFormat": "GZIP"}})
    fh.put_record(DeliveryStreamName="later-backup", Record={"Data": b"after\n"})
    [copy] = wait_for_objects(copies)
    assert copy.startswith("copy/") and copy.endswith(".gz"), copy
    assert gzip.decompress((copies / copy).read_bytes()) == b"after\n", "only records after the update"
    wait_for_objects(out, n=2)
    try:
        fh.update_destination(DeliveryStreamName="later-backup", CurrentDeliveryStreamVersionId="2",
                              DestinationId="destinationId-000000000001",
                              ExtendedS3DestinationUpdate={"S3BackupMode": "Disabled"})
        raise AssertionError("S3BackupMode went from Enabled back to Disabled")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidArgumentException", e.response
    with urllib.request.urlopen(server.endpoint + "/metrics") as r:
        text = r.read().decode()
    assert 'BackupToS3_Records{DeliveryStreamName="later-backup"} 1' in text, text
    assert 'DeliveryToS3_Records{DeliveryStreamName="later-backup"} 2' in text
