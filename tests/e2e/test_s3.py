"""Delivery to a real S3-compatible server (moto's, started here on loopback): keys,
gzip bodies and Content-Type as Firehose writes them, a missing bucket retried until
it exists, credentials and per-bucket overrides from the config file (checked by a
server that verifies SigV4 signatures), multipart uploads of large batches, and the
S3 backup of source records."""

import gzip
import hashlib
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager

import boto3
import pytest

from conftest import S3_CONFIG, Server, free_port, make_stream, start_backend

BACKENDS = ("embedded", "cluster")
from test_fatal import FAILPOINTS_BIN
from test_delivery import KEY, bucket, hints, objects


@contextmanager
def moto_server(env=None):
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], env=dict(os.environ, **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def retry_until_up(call, timeout=30):
    deadline = time.time() + timeout
    while True:
        try:
            return call()
        except Exception:
            assert time.time() < deadline, "moto_server did not start"
            time.sleep(0.2)


def keys(s3, bucket_name):
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_name).get("Contents", [])]


def wait_for_keys(s3, bucket_name, n=1, timeout=15):
    deadline = time.time() + timeout
    while len(found := keys(s3, bucket_name)) < n:
        assert time.time() < deadline, f"fewer than {n} objects in {bucket_name}: {found}"
        time.sleep(0.1)
    return found


def test_delivery_to_a_real_s3_compatible_server(request, backend, tmp_path):
    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        retry_until_up(lambda: s3.create_bucket(Bucket="landing"))
        server = start_backend(request, tmp_path, extra_config=f'[s3]\nendpoint = "{endpoint}"\n',
                               env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
        request.addfinalizer(getattr(server, "close", lambda: None))
        fh = server.client()
        for name, bucket_name in (("tos3", "landing"), ("later", "not-yet")):
            make_stream(fh, name, ExtendedS3DestinationConfiguration=dict(
                S3_CONFIG, BucketARN=f"arn:aws:s3:::{bucket_name}", BufferingHints=hints(1, 0), CompressionFormat="GZIP"))
        records = [f"s3-record-{i}\n".encode() for i in range(100)]
        fh.put_record_batch(DeliveryStreamName="tos3", Records=[{"Data": r} for r in records])
        fh.put_record(DeliveryStreamName="later", Record={"Data": b"waited\n"})
        [key] = wait_for_keys(s3, "landing", timeout=10)
        m = KEY.match(key)
        assert m and m["stream"] == "tos3" and m["ext"] == ".gz", key
        obj = s3.get_object(Bucket="landing", Key=key)
        assert obj["ContentType"] == "application/octet-stream"
        assert gzip.decompress(obj["Body"].read()) == b"".join(records)
        # The same key layouts as on the local directory: static, expression and
        # time-zone prefixes.
        layouts = {
            "static": (dict(Prefix="legacy"), r"^legacy\d{4}/\d{2}/\d{2}/\d{2}/static-1-"),
            "expr": (dict(Prefix="year=!{timestamp:yyyy}/r=!{firehose:random-string}/",
                          ErrorOutputPrefix="!{firehose:error-output-type}/"), r"^year=\d{4}/r=[0-9a-f]{11}/expr-1-"),
            "tokyo": (dict(Prefix="tokyo/", CustomTimeZone="Asia/Tokyo"), r"^tokyo/\d{4}/\d{2}/\d{2}/\d{2}/tokyo-1-"),
        }
        s3.create_bucket(Bucket="layouts")
        for name, (extra, _) in layouts.items():
            make_stream(fh, name, ExtendedS3DestinationConfiguration=dict(
                S3_CONFIG, BucketARN="arn:aws:s3:::layouts", BufferingHints=hints(1, 0), **extra))
            fh.put_record(DeliveryStreamName=name, Record={"Data": name.encode()})
        by_stream = {KEY.match(k)["stream"]: k for k in wait_for_keys(s3, "layouts", n=len(layouts))}
        for name, (_, pattern) in layouts.items():
            assert re.match(pattern, by_stream[name]), (name, by_stream[name])
            assert s3.get_object(Bucket="layouts", Key=by_stream[name])["Body"].read() == name.encode()
        tokyo = KEY.match(by_stream["tokyo"])
        assert tokyo["prefix"] == "tokyo/" + tokyo["ts"][:13].replace("-", "/") + "/", "prefix and suffix in Tokyo time"
        time.sleep(1.5)
        s3.create_bucket(Bucket="not-yet")
        [late] = wait_for_keys(s3, "not-yet", timeout=15)
        assert gzip.decompress(s3.get_object(Bucket="not-yet", Key=late)["Body"].read()) == b"waited\n"
        assert server.stop() == 0


def test_config_credentials_bucket_overrides_multipart_and_backup(request, backend, tmp_path):
    """moto here verifies signatures against IAM users (after 4 unauthenticated setup
    calls), so the upload only succeeds with the credentials from Sluice's config
    file, not the wrong ones in its environment."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        retry_until_up(lambda: iam.create_user(UserName="sluice"))
        key = iam.create_access_key(UserName="sluice")["AccessKey"]
        iam.put_user_policy(UserName="sluice", PolicyName="s3", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="remote")
        secret_file = tmp_path / "secret"
        secret_file.write_text(key["SecretAccessKey"] + "\n")
        config = (f'[s3]\nmultipart_part_mib = 5\n'
                  f'[s3.buckets.remote]\nendpoint = "{endpoint}"\naccess_key_id = "{key["AccessKeyId"]}"\n'
                  f'secret_access_key_file = "{secret_file}"\n')
        server = start_backend(request, tmp_path, extra_config=config,
                               env={"AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong"})
        request.addfinalizer(getattr(server, "close", lambda: None))
        fh = server.client()
        local_copy = bucket(server, "local-copy")
        make_stream(fh, "big", ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, BucketARN="arn:aws:s3:::remote", BufferingHints=hints(16, 900), S3BackupMode="Enabled",
            S3BackupConfiguration=dict(S3_CONFIG, BucketARN="arn:aws:s3:::local-copy", Prefix="source/",
                                       BufferingHints=hints(128, 900))))
        desc = fh.describe_delivery_stream(DeliveryStreamName="big")["DeliveryStreamDescription"]
        backup = desc["Destinations"][0]["ExtendedS3DestinationDescription"]["S3BackupDescription"]
        assert backup["BucketARN"] == "arn:aws:s3:::local-copy" and backup["Prefix"] == "source/"
        sent = []
        for batch in range(4):
            records = [os.urandom(6_000) for _ in range(500)]
            fh.put_record_batch(DeliveryStreamName="big", Records=[{"Data": r} for r in records])
            sent.extend(records)
        expected = b"".join(sent)
        assert server.stop() == 0, "SIGTERM flushes both lanes"
        [remote_key] = keys(s3, "remote")
        head = s3.head_object(Bucket="remote", Key=remote_key)
        assert head["ContentLength"] == len(expected) == 12_000_000
        assert head["ETag"].strip('"').endswith("-3"), f"12 MB in 5 MiB parts is a 3-part upload: {head['ETag']}"
        body = s3.get_object(Bucket="remote", Key=remote_key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        [backup_key] = objects(local_copy)
        assert backup_key.startswith("source/") and KEY.match(backup_key)["stream"] == "big"
        assert (local_copy / backup_key).read_bytes() == expected, "the backup holds the source records"
        assert KEY.match(backup_key)["uuid"] != KEY.match(remote_key)["uuid"]
        assert server.dump("big") == [], "delivered by both lanes: nothing left in the log"
        assert "SignatureDoesNotMatch" not in server.logs() and "InvalidAccessKeyId" not in server.logs()


@pytest.mark.skipif(not FAILPOINTS_BIN.exists() and not os.environ.get("CI"), reason="needs the failpoints build")
def test_a_multipart_upload_cut_by_a_crash_is_aborted_when_the_batch_is_redone(tmp_path):
    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        retry_until_up(lambda: s3.create_bucket(Bucket="parts"))
        config = f'[s3]\nendpoint = "{endpoint}"\nmultipart_part_mib = 5\n'
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        crashing = Server(tmp_path / "data", extra_config=config, binary=FAILPOINTS_BIN,
                          env=dict(env, SLUICE_CRASH_AFTER_UPLOAD_PARTS="1")).start()
        fh = crashing.client()
        make_stream(fh, "large", ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, BucketARN="arn:aws:s3:::parts", BufferingHints=hints(16, 900)))
        sent = [os.urandom(6_000) for _ in range(2000)]
        for start in range(0, len(sent), 500):
            fh.put_record_batch(DeliveryStreamName="large", Records=[{"Data": r} for r in sent[start:start + 500]])
        # SIGTERM flushes the batch: its multipart upload crashes after one part.
        crashing.proc.send_signal(signal.SIGTERM)
        assert crashing.proc.wait(60) != 0
        stale = s3.list_multipart_uploads(Bucket="parts").get("Uploads", [])
        assert len(stale) == 1, "the crash left an upload with a part in it"
        server = Server(tmp_path / "data", extra_config=config, env=env).start()
        assert server.stop() == 0
        assert s3.list_multipart_uploads(Bucket="parts").get("Uploads", []) == [], "the stale upload was aborted"
        assert "Aborted the multipart upload of an interrupted attempt" in server.log.read_text()
        [key] = keys(s3, "parts")
        assert key == stale[0]["Key"], "the batch was redone under the same key"
        body = s3.get_object(Bucket="parts", Key=key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(sent)).digest()
