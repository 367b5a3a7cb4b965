"""The S3 API on Sluice's port (issue 12), over the local-directory buckets
delivery writes: boto3 and the aws CLI create buckets, put, list, read and delete
objects on the same endpoint as Firehose, and read back what Sluice delivered."""

import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import S3_CONFIG, Server, make_stream

pytestmark = pytest.mark.embedded_only


def s3_client(server, key="test", secret="test", **config):
    return boto3.client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config),
    )


def error_of(call):
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_buckets_are_made_listed_and_removed_through_the_s3_api(server):
    s3 = s3_client(server)
    s3.create_bucket(Bucket="first-bucket")
    assert (server.data_dir / "buckets" / "first-bucket").is_dir(), "a bucket is a directory delivery writes into"
    s3.head_bucket(Bucket="first-bucket")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["first-bucket"]
    assert s3.get_bucket_location(Bucket="first-bucket").get("LocationConstraint") in (None, "")
    assert error_of(lambda: s3.create_bucket(Bucket="first-bucket")) == ("BucketAlreadyOwnedByYou", 409)
    assert error_of(lambda: s3.create_bucket(Bucket="No_Such_Name")) == ("InvalidBucketName", 400)
    s3.put_object(Bucket="first-bucket", Key="k", Body=b"x")
    assert error_of(lambda: s3.delete_bucket(Bucket="first-bucket")) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket="first-bucket", Key="k")
    s3.delete_bucket(Bucket="first-bucket")
    assert error_of(lambda: s3.head_bucket(Bucket="first-bucket"))[1] == 404
    assert error_of(lambda: s3.list_objects_v2(Bucket="first-bucket")) == ("NoSuchBucket", 404)
    assert s3.list_buckets()["Buckets"] == []


def test_objects_keep_their_bytes_etag_type_and_metadata(server):
    s3 = s3_client(server)
    s3.create_bucket(Bucket="objects")
    body = b"hello, sluice\n" * 100
    put = s3.put_object(Bucket="objects", Key="dir/a.txt", Body=body, ContentType="text/plain",
                        Metadata={"owner": "tests"}, ContentMD5=__import__("base64").b64encode(
                            hashlib.md5(body).digest()).decode())
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="objects", Key="dir/a.txt")
    assert got["Body"].read() == body
    assert (got["ContentType"], got["Metadata"], got["ETag"], got["ContentLength"]) == (
        "text/plain", {"owner": "tests"}, put["ETag"], len(body))
    head = s3.head_object(Bucket="objects", Key="dir/a.txt")
    assert (head["ContentLength"], head["ETag"]) == (len(body), put["ETag"])
    # Ranges, as S3 answers them.
    part = s3.get_object(Bucket="objects", Key="dir/a.txt", Range="bytes=7-12")
    assert (part["Body"].read(), part["ContentRange"]) == (b"sluice", f"bytes 7-12/{len(body)}")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert s3.get_object(Bucket="objects", Key="dir/a.txt", Range="bytes=-3")["Body"].read() == b"ce\n"
    assert error_of(lambda: s3.get_object(Bucket="objects", Key="dir/a.txt", Range="bytes=99999-"))[0] == "InvalidRange"
    # Conditional reads.
    assert error_of(lambda: s3.get_object(Bucket="objects", Key="dir/a.txt", IfNoneMatch=put["ETag"]))[1] == 304
    assert error_of(lambda: s3.get_object(Bucket="objects", Key="dir/a.txt", IfMatch='"0000"')) == (
        "PreconditionFailed", 412)
    assert s3.get_object(Bucket="objects", Key="dir/a.txt", IfMatch=put["ETag"])["Body"].read() == body
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert error_of(lambda: s3.get_object(Bucket="objects", Key="dir/a.txt", IfModifiedSince=future))[1] == 304
    assert error_of(lambda: s3.head_object(Bucket="objects", Key="dir/a.txt",
                                           IfUnmodifiedSince=datetime(2001, 1, 1, tzinfo=timezone.utc)))[1] == 412
    # A wrong Content-MD5 stores nothing.
    assert error_of(lambda: s3.put_object(Bucket="objects", Key="bad", Body=b"abc",
                                          ContentMD5="AAAAAAAAAAAAAAAAAAAAAA=="))[0] == "BadDigest"
    assert error_of(lambda: s3.head_object(Bucket="objects", Key="bad"))[1] == 404
    assert error_of(lambda: s3.get_object(Bucket="objects", Key="missing")) == ("NoSuchKey", 404)
    assert error_of(lambda: s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")) == ("NoSuchBucket", 404)
    # Copy (metadata kept, or replaced) and delete.
    s3.copy_object(Bucket="objects", Key="copy.txt", CopySource={"Bucket": "objects", "Key": "dir/a.txt"})
    copy = s3.get_object(Bucket="objects", Key="copy.txt")
    assert (copy["Body"].read(), copy["ContentType"], copy["Metadata"]) == (body, "text/plain", {"owner": "tests"})
    s3.copy_object(Bucket="objects", Key="copy.txt", CopySource={"Bucket": "objects", "Key": "copy.txt"},
                   MetadataDirective="REPLACE", ContentType="application/json", Metadata={"v": "2"})
    copy = s3.head_object(Bucket="objects", Key="copy.txt")
    assert (copy["ContentType"], copy["Metadata"]) == ("application/json", {"v": "2"})
    s3.delete_object(Bucket="objects", Key="copy.txt")
    s3.delete_object(Bucket="objects", Key="copy.txt")  # absent: still 204, as on S3
    deleted = s3.delete_objects(Bucket="objects", Delete={"Objects": [{"Key": "dir/a.txt"}, {"Key": "never"}]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["dir/a.txt", "never"]
    assert s3.list_objects_v2(Bucket="objects")["KeyCount"] == 0
    assert not any((server.data_dir / "buckets" / "objects").iterdir()), "empty directories go with their objects"


def test_listings_page_by_prefix_delimiter_and_token(server):
    s3 = s3_client(server)
    s3.create_bucket(Bucket="listing")
    keys = sorted([f"logs/2026/{d:02}/part-{i}" for d in range(1, 4) for i in range(5)] + ["top-a", "top-b", "logs/x"])
    for key in keys:
        s3.put_object(Bucket="listing", Key=key, Body=key.encode())
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="listing", PaginationConfig={"PageSize": 4}))
    assert len(pages) == 5
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == keys
    assert all(o["Size"] == len(o["Key"]) for p in pages for o in p["Contents"])
    # A delimiter rolls keys up into common prefixes, counted against max-keys.
    top = s3.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["logs/"]
    assert [o["Key"] for o in top["Contents"]] == ["top-a", "top-b"]
    days = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket="listing", Prefix="logs/2026/", Delimiter="/", PaginationConfig={"PageSize": 2}))
    assert [p["Prefix"] for page in days for p in page.get("CommonPrefixes", [])] == [
        "logs/2026/01/", "logs/2026/02/", "logs/2026/03/"]
    after = s3.list_objects_v2(Bucket="listing", StartAfter="logs/x")
    assert [o["Key"] for o in after["Contents"]] == ["top-a", "top-b"]
    assert s3.list_objects_v2(Bucket="listing", Prefix="logs/2026/02/part-")["KeyCount"] == 5
    # Version 1, paged by marker.
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket="listing", PaginationConfig={"PageSize": 6}))
    assert [o["Key"] for p in v1 for o in p.get("Contents", [])] == keys
    assert error_of(lambda: s3.list_objects_v2(Bucket="listing", ContinuationToken="not-a-token"))[0] == (
        "InvalidArgument")


def test_multipart_uploads_complete_abort_and_list_parts(server):
    s3 = s3_client(server)
    s3.create_bucket(Bucket="multipart")
    data = os.urandom(20 << 20)
    s3.upload_fileobj(io.BytesIO(data), "multipart", "big.bin",
                      Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    head = s3.head_object(Bucket="multipart", Key="big.bin")
    digests = b"".join(hashlib.md5(data[i:i + (5 << 20)]).digest() for i in range(0, len(data), 5 << 20))
    assert head["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-4"'
    assert head["ContentLength"] == len(data)
    out = io.BytesIO()
    s3.download_fileobj("multipart", "big.bin", out)
    assert out.getvalue() == data
    # By hand: parts listed, a too-small part refused at completion, then aborted.
    upload = s3.create_multipart_upload(Bucket="multipart", Key="manual", ContentType="text/csv")["UploadId"]
    e1 = s3.upload_part(Bucket="multipart", Key="manual", UploadId=upload, PartNumber=1, Body=b"a" * 10)["ETag"]
    e2 = s3.upload_part(Bucket="multipart", Key="manual", UploadId=upload, PartNumber=2, Body=b"b" * 10)["ETag"]
    parts = s3.list_parts(Bucket="multipart", Key="manual", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, e1, 10), (2, e2, 10)]
    complete = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
    assert error_of(lambda: s3.complete_multipart_upload(
        Bucket="multipart", Key="manual", UploadId=upload, MultipartUpload=complete))[0] == "EntityTooSmall"
    assert error_of(lambda: s3.complete_multipart_upload(
        Bucket="multipart", Key="manual", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0000"'}]}))[0] == "InvalidPart"
    one = s3.complete_multipart_upload(Bucket="multipart", Key="manual", UploadId=upload,
                                       MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}]})
    got = s3.get_object(Bucket="multipart", Key="manual")
    assert (got["Body"].read(), got["ContentType"], got["ETag"]) == (b"b" * 10, "text/csv", one["ETag"])
    assert error_of(lambda: s3.list_parts(Bucket="multipart", Key="manual", UploadId=upload))[0] == "NoSuchUpload"
    upload = s3.create_multipart_upload(Bucket="multipart", Key="aborted")["UploadId"]
    s3.upload_part(Bucket="multipart", Key="aborted", UploadId=upload, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket="multipart", Key="aborted", UploadId=upload)
    assert error_of(lambda: s3.head_object(Bucket="multipart", Key="aborted"))[1] == 404
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="multipart")["Contents"]) == ["big.bin", "manual"]


def test_streaming_uploads_with_trailing_checksums_are_stored_as_sent(server):
    # Current SDKs send PutObject bodies aws-chunked, with a trailing CRC32.
    s3 = s3_client(server, request_checksum_calculation="when_supported")
    s3.create_bucket(Bucket="chunked")
    body = os.urandom(300_000)
    s3.put_object(Bucket="chunked", Key="crc", Body=io.BytesIO(body), ChecksumAlgorithm="CRC32")
    assert s3.get_object(Bucket="chunked", Key="crc")["Body"].read() == body
    # The same framing by hand, chunk signatures and all, split oddly.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    framed = (b"5;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n" + b"6;chunk-signature=" + b"1" * 64
              + b"\r\n world\r\n0;chunk-signature=" + b"2" * 64 + b"\r\n\r\n")
    conn.request("PUT", "/chunked/by-hand", body=framed, headers={
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "11", "Content-Length": str(len(framed))})
    response = conn.getresponse()
    assert response.status == 200
    response.read()
    assert s3.get_object(Bucket="chunked", Key="by-hand")["Body"].read() == b"hello world"
    # A trailing checksum is checked: the right CRC32 of "hello world" is DUoRhQ==.
    for crc, status in (("DUoRhQ==", 200), ("AAAAAA==", 400)):
        framed = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:" + crc.encode() + b"\r\n\r\n"
        conn.request("PUT", f"/chunked/trailer-{status}", body=framed, headers={
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": "11", "x-amz-trailer": "x-amz-checksum-crc32",
            "Content-Length": str(len(framed))})
        response = conn.getresponse()
        answer = response.read()
        assert response.status == status and (status == 200 or b"<Code>BadDigest</Code>" in answer), answer
    assert error_of(lambda: s3.head_object(Bucket="chunked", Key="trailer-400"))[1] == 404, "refused: not stored"
    assert error_of(lambda: s3.put_object(Bucket="chunked", Key="bad-header", Body=b"abc",
                                          ChecksumCRC32="AAAAAA=="))[0] == "BadDigest"
    assert s3.put_object(Bucket="chunked", Key="good-header", Body=b"hello world", ChecksumCRC32="DUoRhQ==")


def test_presigned_urls_work_without_keys(server):
    import urllib.request
    s3 = s3_client(server)
    s3.create_bucket(Bucket="presigned")
    put = s3.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "p"}, ExpiresIn=60)
    with urllib.request.urlopen(urllib.request.Request(put, data=b"by url", method="PUT"), timeout=30) as r:
        assert r.status == 200
    get = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "p"}, ExpiresIn=60)
    with urllib.request.urlopen(get, timeout=30) as r:
        assert r.read() == b"by url"
    # SigV4 presigning too.
    v4 = s3_client(server, signature_version="s3v4")
    get = v4.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "p"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in get
    with urllib.request.urlopen(get, timeout=30) as r:
        assert r.read() == b"by url"


def test_virtual_hosted_requests_name_the_bucket_in_the_host(server):
    s3 = s3_client(server)
    s3.create_bucket(Bucket="vhost")
    s3.put_object(Bucket="vhost", Key="k/v", Body=b"virtual")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/k/v", headers={"Host": f"vhost.localhost:{server.port}"})
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"virtual")
    conn.request("GET", "/?list-type=2", headers={"Host": f"vhost.localhost:{server.port}"})
    response = conn.getresponse()
    assert response.status == 200 and b"<Key>k/v</Key>" in response.read()


def test_probes_and_firehose_keep_their_paths_beside_buckets_named_like_them(server, fh):
    s3 = s3_client(server)
    s3.create_bucket(Bucket="health")
    s3.put_object(Bucket="health", Key="k", Body=b"x")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="health")["Contents"]] == ["k"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200 and b"<" not in response.read(), "an unsigned probe is still the health check"
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []


def test_the_aws_cli_makes_a_bucket_copies_and_lists(server, tmp_path):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    aws = ["aws", "--endpoint-url", server.endpoint, "s3"]
    run = lambda *args: subprocess.run([*aws, *args], env=env, capture_output=True, text=True, timeout=120)
    made = run("mb", "s3://cli-bucket")
    assert made.returncode == 0, made.stderr
    source = tmp_path / "file.txt"
    source.write_bytes(b"from the cli\n" * 1000)
    copied = run("cp", str(source), "s3://cli-bucket/in/file.txt")
    assert copied.returncode == 0, copied.stderr
    listed = run("ls", "--recursive", "s3://cli-bucket")
    assert listed.returncode == 0 and "in/file.txt" in listed.stdout, listed.stderr
    back = tmp_path / "back.txt"
    assert run("cp", "s3://cli-bucket/in/file.txt", str(back)).returncode == 0
    assert back.read_bytes() == source.read_bytes()
    assert run("cp", str(source), "s3://cli-bucket/second.txt").returncode == 0
    rm = run("rm", "s3://cli-bucket/second.txt")
    assert rm.returncode == 0 and "delete: s3://cli-bucket/second.txt" in rm.stdout, rm.stderr
    assert "second.txt" not in run("ls", "--recursive", "s3://cli-bucket").stdout
    removed = run("rb", "--force", "s3://cli-bucket")
    assert removed.returncode == 0, removed.stderr
    assert not (server.data_dir / "buckets" / "cli-bucket").exists()


def test_a_whole_firehose_test_needs_one_endpoint(server, fh):
    """Create the bucket, create the stream (GZIP, dynamic partitioning), put,
    flush, and read the objects back: all through the same endpoint."""
    s3 = s3_client(server)
    s3.create_bucket(Bucket="lake")
    make_stream(fh, "events", ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, BucketARN="arn:aws:s3:::lake", CompressionFormat="GZIP",
        Prefix="kind=!{partitionKeyFromQuery:kind}/", ErrorOutputPrefix="errors/",
        BufferingHints={"SizeInMBs": 64, "IntervalInSeconds": 900},
        DynamicPartitioningConfiguration={"Enabled": True},
        ProcessingConfiguration={"Enabled": True, "Processors": [{"Type": "MetadataExtraction", "Parameters": [
            {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{kind: .kind}"},
            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]}))
    records = [{"Data": json.dumps({"kind": k, "n": i}).encode() + b"\n"} for i in range(30) for k in ("a", "b")]
    assert fh.put_record_batch(DeliveryStreamName="events", Records=records)["FailedPutCount"] == 0
    with urllib_open(server, "POST", "/_sluice/flush") as r:
        assert r.status == 200
    listed = s3.list_objects_v2(Bucket="lake", Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["kind=a/", "kind=b/"]
    for kind in ("a", "b"):
        objects = s3.list_objects_v2(Bucket="lake", Prefix=f"kind={kind}/")["Contents"]
        assert len(objects) == 1 and objects[0]["Key"].endswith(".gz")
        lines = gzip.decompress(s3.get_object(Bucket="lake", Key=objects[0]["Key"])["Body"].read()).splitlines()
        assert [json.loads(line)["n"] for line in lines] == list(range(30))
        assert all(json.loads(line)["kind"] == kind for line in lines)


def urllib_open(server, method, path):
    import urllib.request
    return urllib.request.urlopen(urllib.request.Request(server.endpoint + path, method=method), timeout=120)


def test_with_keys_s3_requests_are_verified(tmp_path):
    keys = '[auth]\n[[auth.keys]]\naccess_key_id = "AKIDS3"\nsecret_access_key = "s3-secret"\n'
    server = Server(tmp_path / "data", extra_config=keys).start()
    try:
        good = s3_client(server, key="AKIDS3", secret="s3-secret", request_checksum_calculation="when_supported")
        good.create_bucket(Bucket="signed")
        body = os.urandom(100_000)
        good.put_object(Bucket="signed", Key="k", Body=io.BytesIO(body), ChecksumAlgorithm="CRC32")
        assert good.get_object(Bucket="signed", Key="k")["Body"].read() == body
        wrong = s3_client(server, key="AKIDS3", secret="not-it")
        assert error_of(lambda: wrong.list_objects_v2(Bucket="signed")) == ("SignatureDoesNotMatch", 403)
        unknown = s3_client(server, key="AKIDNOBODY", secret="s3-secret")
        assert error_of(lambda: unknown.list_buckets())[0] == "InvalidAccessKeyId"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/signed/k")
        assert conn.getresponse().status == 403, "unsigned requests are refused when keys are configured"
    finally:
        server.stop()


def test_listing_while_delivering_and_after_kill_shows_only_whole_objects(tmp_path):
    server = Server(tmp_path / "data").start()
    s3 = s3_client(server)
    s3.create_bucket(Bucket="whole")
    fh = server.client()
    make_stream(fh, "busy", ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, BucketARN="arn:aws:s3:::whole", CompressionFormat="GZIP",
        BufferingHints={"SizeInMBs": 1, "IntervalInSeconds": 60}))
    stop = threading.Event()
    seen, broken = set(), []

    def reader():
        client = s3_client(server)
        while not stop.is_set():
            try:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket="whole"):
                    for o in page.get("Contents", []):
                        if o["Key"] in seen:
                            continue
                        body = client.get_object(Bucket="whole", Key=o["Key"])["Body"].read()
                        try:
                            lines = gzip.decompress(body).splitlines()
                        except Exception as e:  # noqa: BLE001 - any failure is a partial object
                            broken.append((o["Key"], repr(e)))
                            continue
                        if len(body) != o["Size"] or not all(line.startswith(b"r") for line in lines):
                            broken.append((o["Key"], "size or content"))
                        seen.add(o["Key"])
            except Exception:  # noqa: BLE001 - the server is being killed; try again
                time.sleep(0.05)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    payload = [{"Data": b"r" + os.urandom(600).hex().encode() + b"\n"} for _ in range(400)]
    for round_ in range(3):
        for _ in range(10):
            fh.put_record_batch(DeliveryStreamName="busy", Records=payload)
        time.sleep(0.3)
        server.kill()
        server.start()
        fh = server.client()
    for _ in range(10):
        fh.put_record_batch(DeliveryStreamName="busy", Records=payload)
    with urllib_open(server, "POST", "/_sluice/flush") as r:
        assert r.status == 200
    time.sleep(1)
    stop.set()
    thread.join(30)
    server.stop()
    assert not broken, broken[:5]
    assert len(seen) >= 5, "objects were listed and read while delivery ran"


def test_the_javascript_s3_client_stores_lists_and_reads_objects(tmp_path):
    """@aws-sdk/client-s3 (installed by .ci/run into tests/js), without keys and with."""
    script = Path(__file__).resolve().parent.parent / "js" / "s3.mjs"
    assert (script.parent / "node_modules" / "@aws-sdk" / "client-s3").is_dir(), "run: cd tests/js && npm ci"
    keys = '[auth]\n[[auth.keys]]\naccess_key_id = "AKIDJS"\nsecret_access_key = "js-secret"\n'
    for extra, credentials in (("", []), (keys, ["AKIDJS", "js-secret"])):
        server = Server(tmp_path / f"data{len(credentials)}", extra_config=extra).start()
        try:
            run = subprocess.run(["node", str(script), server.endpoint, *credentials],
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
        finally:
            server.stop()


def test_a_test_written_for_an_emulator_runs_with_only_the_endpoint_changed(tmp_path):
    """Such tests create the bucket, put with the default buffering hints (300 s)
    and poll the bucket for a few seconds. `--buffer-interval-max 1` (or
    SLUICE_BUFFER_INTERVAL_MAX) delivers within a second without changing what the
    stream is described with."""
    server = Server(tmp_path / "data", env={"SLUICE_BUFFER_INTERVAL_MAX": "1"}).start()
    try:
        s3, fh = s3_client(server), server.client()
        s3.create_bucket(Bucket="ported")
        fh.create_delivery_stream(DeliveryStreamName="ported", ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/firehose", "BucketARN": "arn:aws:s3:::ported"})
        deadline = time.time() + 10
        while fh.describe_delivery_stream(DeliveryStreamName="ported")["DeliveryStreamDescription"][
                "DeliveryStreamStatus"] != "ACTIVE":
            assert time.time() < deadline
            time.sleep(0.05)
        fh.put_record(DeliveryStreamName="ported", Record={"Data": b"ported\n"})
        keys, deadline = [], time.time() + 10
        while not keys and time.time() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ported").get("Contents", [])]
            time.sleep(0.2)
        assert len(keys) == 1, "delivered within the capped interval"
        assert s3.get_object(Bucket="ported", Key=keys[0])["Body"].read() == b"ported\n"
        hints = fh.describe_delivery_stream(DeliveryStreamName="ported")["DeliveryStreamDescription"][
            "Destinations"][0]["ExtendedS3DestinationDescription"]["BufferingHints"]
        assert hints == {"SizeInMBs": 5, "IntervalInSeconds": 300}, "described as created"
    finally:
        server.stop()
