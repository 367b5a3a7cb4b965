"""Test controls (issue 12): `POST /_sluice/flush` delivers what streams buffer now
and answers once it is delivered or failed; `DELETE /_sluice/state` removes every
stream (and with `?buckets=true` the local buckets), so each test starts clean."""

import json
import urllib.error
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import S3_CONFIG, Server, make_stream


def call(server, method, path, key=None, secret=None):
    url = server.endpoint + path
    headers = {}
    if key:
        request = AWSRequest(method=method, url=url, data=b"")
        SigV4Auth(Credentials(key, secret), "firehose", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=120) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def buffered_stream(fh, name, bucket="bucket"):
    # Hints that would hold the records for 15 minutes.
    make_stream(fh, name, ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, BucketARN=f"arn:aws:s3:::{bucket}", BufferingHints={"SizeInMBs": 128, "IntervalInSeconds": 900}))


def objects(server, bucket="bucket"):
    root = server.data_dir / "buckets" / bucket
    return sorted(line for p in root.rglob("*") if p.is_file() for line in p.read_text().split())


def test_flush_delivers_every_buffered_batch_before_it_answers(server, fh):
    (server.data_dir / "buckets" / "bucket").mkdir(parents=True)
    for name in ("a", "b"):
        buffered_stream(fh, name)
        fh.put_record_batch(DeliveryStreamName=name, Records=[{"Data": f"{name}{i}\n".encode()} for i in range(50)])
    assert objects(server) == []
    status, body = call(server, "POST", "/_sluice/flush")
    assert status == 200, body
    assert body["Delivered"] is True
    lanes = {s["DeliveryStreamName"]: s["Lanes"] for s in body["Streams"]}
    assert {n: [(l["Lane"], l["Status"], l["Records"]) for l in ls] for n, ls in lanes.items()} == {
        "a": [("destination", "delivered", 50)], "b": [("destination", "delivered", 50)]}
    # Delivered when the answer came: no sleeping.
    assert objects(server) == sorted([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)])
    # Nothing buffered: a flush answers at once, delivering nothing.
    status, body = call(server, "POST", "/_sluice/flush")
    assert status == 200 and body["Delivered"] is True
    assert all(l["Records"] == 0 for s in body["Streams"] for l in s["Lanes"])


def test_flush_of_one_stream_leaves_the_others_buffered(server, fh):
    (server.data_dir / "buckets" / "bucket").mkdir(parents=True)
    for name in ("a", "b"):
        buffered_stream(fh, name)
        fh.put_record(DeliveryStreamName=name, Record={"Data": f"{name}\n".encode()})
    status, body = call(server, "POST", "/_sluice/flush?stream=a")
    assert status == 200, body
    assert [s["DeliveryStreamName"] for s in body["Streams"]] == ["a"]
    assert objects(server) == ["a"]
    status, body = call(server, "POST", "/_sluice/flush?stream=nope")
    assert status == 400 and body["__type"] == "ResourceNotFoundException"


def test_flush_reports_a_failed_delivery_instead_of_waiting_out_the_retries(server, fh):
    buffered_stream(fh, "lost", bucket="missing")
    fh.put_record(DeliveryStreamName="lost", Record={"Data": b"x\n"})
    status, body = call(server, "POST", "/_sluice/flush?wait_s=30")
    assert status == 200, body
    assert body["Delivered"] is False
    [lane] = body["Streams"][0]["Lanes"]
    assert lane["Status"] == "failed" and "NoSuchBucket" in lane["Error"], lane
    # Made now, the bucket gets the records on the next attempt.
    (server.data_dir / "buckets" / "missing").mkdir(parents=True)
    status, body = call(server, "POST", "/_sluice/flush?wait_s=60")
    assert body["Delivered"] is True, body
    assert objects(server, "missing") == ["x"]


def test_reset_removes_every_stream_and_with_buckets_the_buckets(server, fh):
    (server.data_dir / "buckets" / "bucket").mkdir(parents=True)
    for name in ("a", "b"):
        buffered_stream(fh, name)
        fh.put_record(DeliveryStreamName=name, Record={"Data": b"kept?\n"})
    west = server.client(region="us-west-2")
    buffered_stream(west, "w")
    status, body = call(server, "DELETE", "/_sluice/state")
    assert status == 200, body
    assert sorted(s["DeliveryStreamName"] for s in body["Streams"]) == ["a", "b", "w"]
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []
    assert west.list_delivery_streams()["DeliveryStreamNames"] == []
    assert (server.data_dir / "buckets" / "bucket").is_dir(), "buckets stay without ?buckets=true"
    # The same names can be created again, empty: the old records are gone.
    buffered_stream(fh, "a")
    call(server, "POST", "/_sluice/flush")
    assert objects(server) == []
    status, body = call(server, "DELETE", "/_sluice/state?buckets=true")
    assert status == 200 and body["Buckets"] == ["bucket"], body
    assert not (server.data_dir / "buckets" / "bucket").exists()


AUTH = """
[[auth.keys]]
access_key_id = "AKIDADMIN"
secret_access_key = "admin-secret"
[[auth.keys]]
access_key_id = "AKIDPUT"
secret_access_key = "put-secret"
operations = ["PutRecord"]
"""


def test_controls_need_admin_enabled_and_an_allowed_signed_key_when_keys_are_configured(tmp_path):
    server = Server(tmp_path / "off", extra_config=AUTH).start()
    try:
        status, body = call(server, "POST", "/_sluice/flush", "AKIDADMIN", "admin-secret")
        assert status == 403 and body["__type"] == "AccessDeniedException", body
        status, body = call(server, "DELETE", "/_sluice/state", "AKIDADMIN", "admin-secret")
        assert status == 403
    finally:
        server.stop()
    server = Server(tmp_path / "on", extra_config="[admin]\nenabled = true\n" + AUTH).start()
    try:
        status, body = call(server, "POST", "/_sluice/flush")
        assert status in (400, 403) and "__type" in body, (status, body)
        status, body = call(server, "POST", "/_sluice/flush", "AKIDADMIN", "wrong-secret")
        assert status in (400, 403) and body["__type"] != "", body
        status, body = call(server, "POST", "/_sluice/flush", "AKIDPUT", "put-secret")
        assert status == 403 and body["__type"] == "AccessDeniedException", body
        status, body = call(server, "POST", "/_sluice/flush", "AKIDADMIN", "admin-secret")
        assert status == 200 and body["Delivered"] is True, body
        status, body = call(server, "DELETE", "/_sluice/state", "AKIDADMIN", "admin-secret")
        assert status == 200, body
    finally:
        server.stop()
