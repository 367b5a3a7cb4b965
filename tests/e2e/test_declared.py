"""Declared streams (issue 12): `--streams FILE` makes buckets and delivery streams
exist as soon as `/health` answers, and brings them to a changed declaration on
restart without losing the records they still buffer."""

import json
import time

import pytest

from conftest import S3_CONFIG, Server


def declaration(tmp_path, streams, buckets=("decl",)):
    path = tmp_path / "streams.json"
    path.write_text(json.dumps({"buckets": list(buckets), "streams": streams}))
    return path


def s3_stream(name, prefix="", mib=1, seconds=0, **extra):
    return {"DeliveryStreamName": name, **extra,
            "ExtendedS3DestinationConfiguration": dict(
                S3_CONFIG, BucketARN="arn:aws:s3:::decl", Prefix=prefix,
                ErrorOutputPrefix="errors/" if prefix else None,
                BufferingHints={"SizeInMBs": mib, "IntervalInSeconds": seconds})}


def clean(stream):
    config = stream["ExtendedS3DestinationConfiguration"]
    stream["ExtendedS3DestinationConfiguration"] = {k: v for k, v in config.items() if v is not None}
    return stream


def delivered(bucket_dir, prefix=""):
    lines = []
    for path in sorted((bucket_dir / prefix).rglob("*") if (bucket_dir / prefix).exists() else []):
        if path.is_file():
            lines += path.read_text().split()
    return lines


def wait_for(condition, timeout=30):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_declared_buckets_and_streams_exist_as_soon_as_health_answers(tmp_path):
    decl = declaration(tmp_path, [clean(s3_stream("events")),
                                  clean(s3_stream("west", Region="us-west-2",
                                                  Tags=[{"Key": "team", "Value": "data"}]))])
    # A long CREATING phase for streams made through the API; declared ones are
    # there, ACTIVE, before the first request.
    server = Server(tmp_path / "data", env={"SLUICE_STREAMS": str(decl)}, transition_ms=60_000).start()
    try:
        fh = server.client()
        d = fh.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
        assert d["DeliveryStreamStatus"] == "ACTIVE"
        west = server.client(region="us-west-2")
        d = west.describe_delivery_stream(DeliveryStreamName="west")["DeliveryStreamDescription"]
        assert d["DeliveryStreamStatus"] == "ACTIVE"
        assert west.list_tags_for_delivery_stream(DeliveryStreamName="west")["Tags"] == [{"Key": "team", "Value": "data"}]
        assert "west" not in fh.list_delivery_streams()["DeliveryStreamNames"], "in its own region only"
        bucket = server.data_dir / "buckets" / "decl"
        assert bucket.is_dir()
        fh.put_record_batch(DeliveryStreamName="events", Records=[{"Data": f"r{i}\n".encode()} for i in range(10)])
        wait_for(lambda: len(delivered(bucket)) == 10)
        assert sorted(delivered(bucket)) == sorted(f"r{i}" for i in range(10))
    finally:
        assert server.stop() == 0, server.logs()


def test_a_changed_declaration_updates_the_stream_on_restart_and_keeps_its_buffered_records(tmp_path):
    decl = declaration(tmp_path, [clean(s3_stream("events", prefix="old/", mib=128, seconds=900))])
    server = Server(tmp_path / "data", env={"SLUICE_STREAMS": str(decl)}).start()
    fh = server.client()
    names = [f"r{i}" for i in range(100)]
    out = fh.put_record_batch(DeliveryStreamName="events", Records=[{"Data": (n + "\n").encode()} for n in names])
    assert out["FailedPutCount"] == 0
    version = fh.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]["VersionId"]
    # Killed: the records stay buffered in the log, undelivered.
    server.kill()
    bucket = server.data_dir / "buckets" / "decl"
    assert delivered(bucket) == []
    declaration(tmp_path, [clean(s3_stream("events", prefix="new/", mib=1, seconds=0))])
    server.start()
    try:
        d = fh.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
        s3 = d["Destinations"][0]["ExtendedS3DestinationDescription"]
        assert s3["Prefix"] == "new/" and s3["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 0}
        assert int(d["VersionId"]) == int(version) + 1
        # Every record acknowledged before the kill is delivered once, under the new prefix.
        wait_for(lambda: len(delivered(bucket)) >= 100)
        assert sorted(delivered(bucket, "new")) == sorted(names)
        assert delivered(bucket, "old") == []
    finally:
        assert server.stop() == 0, server.logs()
    # The same declaration again changes nothing.
    server.start()
    try:
        d = fh.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
        assert int(d["VersionId"]) == int(version) + 1
    finally:
        assert server.stop() == 0, server.logs()


def test_a_declaration_the_api_would_refuse_stops_the_server_with_the_reason(tmp_path):
    bad = clean(s3_stream("events"))
    bad["ExtendedS3DestinationConfiguration"]["BufferingHints"]["SizeInMBs"] = 0
    decl = declaration(tmp_path, [bad])
    with pytest.raises(RuntimeError, match=r"streams\[0\].*ValidationException"):
        Server(tmp_path / "data", env={"SLUICE_STREAMS": str(decl)}).start()
    decl.write_text(json.dumps({"buckets": ["Not_A_Bucket"], "streams": []}))
    with pytest.raises(RuntimeError, match="not a valid bucket name"):
        Server(tmp_path / "data2", env={"SLUICE_STREAMS": str(decl)}).start()
