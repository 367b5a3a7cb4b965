"""PutRecord and PutRecordBatch: limits, record ids, durability across restarts,
encryption at rest, and the aws CLI."""

import base64
import json
import os
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from conftest import CMK_DISABLED, CMK_ENABLED, S3_CONFIG, TRANSITION_MS, make_stream

BACKENDS = ("embedded", "cluster")


def error_of(excinfo):
    e = excinfo.value.response
    return e["Error"]["Code"], e["Error"]["Message"], e["ResponseMetadata"]["HTTPStatusCode"]


def test_put_record_and_batch_ids(server, fh):
    make_stream(fh, "ingest")
    one = fh.put_record(DeliveryStreamName="ingest", Record={"Data": b"first"})
    assert one["Encrypted"] is False
    empty = fh.put_record(DeliveryStreamName="ingest", Record={"Data": b""})
    batch = fh.put_record_batch(DeliveryStreamName="ingest", Records=[{"Data": f"r{i}".encode()} for i in range(500)])
    assert batch["FailedPutCount"] == 0
    assert batch["Encrypted"] is False
    ids = [one["RecordId"], empty["RecordId"]] + [r["RecordId"] for r in batch["RequestResponses"]]
    assert len(batch["RequestResponses"]) == 500
    assert len(set(ids)) == len(ids)
    assert all("ErrorCode" not in r for r in batch["RequestResponses"])
    # Ids name the stream's log and the sequence number: stable and ordered.
    assert ids == sorted(ids)
    assert server.stop() == 0
    records = server.dump("ingest")
    assert [base64.b64decode(r["data"]) for r in records] == [b"first", b""] + [f"r{i}".encode() for i in range(500)]
    assert [f"{int(ids[0][:16], 16):016x}{r['seq']:016x}" for r in records] == ids
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < r["arrival_ms"] <= now_ms for r in records)


def test_put_limits(server, fh):
    make_stream(fh, "limits")
    loose = server.client(validate=False)
    biggest = fh.put_record(DeliveryStreamName="limits", Record={"Data": b"x" * 1_024_000})
    assert biggest["RecordId"]
    with pytest.raises(ClientError) as e:
        fh.put_record(DeliveryStreamName="limits", Record={"Data": b"x" * 1_024_001})
    assert error_of(e) == ("ValidationException",
                           "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=1024001 cap=1024001]' "
                           "at 'record.data' failed to satisfy constraint: Member must have length less than or equal to 1024000", 400)
    with pytest.raises(ClientError) as e:
        loose.put_record_batch(DeliveryStreamName="limits", Records=[{"Data": b"x"}] * 501)
    code, message, _ = error_of(e)
    assert code == "ValidationException"
    assert "at 'records' failed to satisfy constraint: Member must have length less than or equal to 500" in message
    with pytest.raises(ClientError) as e:
        loose.put_record_batch(DeliveryStreamName="limits", Records=[])
    assert "Member must have length greater than or equal to 1" in error_of(e)[1]
    with pytest.raises(ClientError) as e:
        fh.put_record_batch(DeliveryStreamName="limits", Records=[{"Data": b"y" * 1_000_000}] * 5)
    assert error_of(e) == ("InvalidArgumentException", "Records size exceeds 4 MB limit", 400)
    with pytest.raises(ClientError) as e:
        fh.put_record_batch(DeliveryStreamName="nowhere", Records=[{"Data": b"x"}])
    assert error_of(e) == ("ResourceNotFoundException", "Firehose nowhere under account 000000000000 not found.", 400)
    assert server.stop() == 0
    # Only the accepted record reached the log.
    assert [len(base64.b64decode(r["data"])) for r in server.dump("limits")] == [1_024_000]


def test_put_to_a_creating_stream_is_refused(fh):
    fh.create_delivery_stream(DeliveryStreamName="young", ExtendedS3DestinationConfiguration=S3_CONFIG)
    with pytest.raises(ClientError) as e:
        fh.put_record(DeliveryStreamName="young", Record={"Data": b"x"})
    assert error_of(e)[0] == "ResourceInUseException"


def test_everything_survives_a_restart_and_a_kill(server, fh):
    make_stream(fh, "durable", Tags=[{"Key": "k", "Value": "v"}])
    fh.put_record_batch(DeliveryStreamName="durable", Records=[{"Data": b"before-kill"}])
    server.kill()
    server.start()
    fh = server.client()
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == ["durable"]
    assert fh.list_tags_for_delivery_stream(DeliveryStreamName="durable")["Tags"] == [{"Key": "k", "Value": "v"}]
    after = fh.put_record(DeliveryStreamName="durable", Record={"Data": b"after-kill"})
    assert after["RecordId"]
    assert server.stop() == 0
    server.start()
    assert server.stop() == 0
    assert [base64.b64decode(r["data"]) for r in server.dump("durable")] == [b"before-kill", b"after-kill"]


def wait_encryption(fh, name, status):
    deadline = time.time() + 5
    while time.time() < deadline:
        d = fh.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
        if d["DeliveryStreamEncryptionConfiguration"]["Status"] == status:
            return d["DeliveryStreamEncryptionConfiguration"]
        time.sleep(0.02)
    raise AssertionError(f"encryption of {name} never became {status}")


def test_encryption_at_rest(server, fh):
    make_stream(fh, "secret")
    plain = fh.put_record(DeliveryStreamName="secret", Record={"Data": b"PLAINTEXT-RECORD-0"})
    assert plain["Encrypted"] is False
    fh.start_delivery_stream_encryption(DeliveryStreamName="secret")
    d = fh.describe_delivery_stream(DeliveryStreamName="secret")["DeliveryStreamDescription"]
    assert d["DeliveryStreamEncryptionConfiguration"]["Status"] == "ENABLING"
    assert wait_encryption(fh, "secret", "ENABLED") == {"KeyType": "AWS_OWNED_CMK", "Status": "ENABLED"}
    secrets = [f"TOP-SECRET-RECORD-{i:04d}".encode() for i in range(50)]
    out = fh.put_record_batch(DeliveryStreamName="secret", Records=[{"Data": s} for s in secrets])
    assert out["Encrypted"] is True
    fh.start_delivery_stream_encryption(DeliveryStreamName="secret", DeliveryStreamEncryptionConfigurationInput={
        "KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": CMK_ENABLED})
    assert wait_encryption(fh, "secret", "ENABLED") == {"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": CMK_ENABLED, "Status": "ENABLED"}
    cmk = fh.put_record(DeliveryStreamName="secret", Record={"Data": b"TOP-SECRET-UNDER-CMK"})
    assert cmk["Encrypted"] is True
    fh.stop_delivery_stream_encryption(DeliveryStreamName="secret")
    assert wait_encryption(fh, "secret", "DISABLED")["Status"] == "DISABLED"
    assert fh.put_record(DeliveryStreamName="secret", Record={"Data": b"PLAINTEXT-AGAIN"})["Encrypted"] is False
    assert server.stop() == 0
    # Nothing of the encrypted records in the clear where records are kept (with
    # the cluster: NATS's store directories too).
    for root, _, files in (w for d in server.record_dirs for w in os.walk(d)):
        for name in files:
            content = open(os.path.join(root, name), "rb").read()
            assert b"TOP-SECRET" not in content, os.path.join(root, name)
    records = server.dump("secret")
    assert [base64.b64decode(r["data"]) for r in records] == [b"PLAINTEXT-RECORD-0"] + secrets + [
        b"TOP-SECRET-UNDER-CMK", b"PLAINTEXT-AGAIN"]
    assert [r["encrypted"] for r in records] == [False] + [True] * 51 + [False]


def test_kms_errors(fh):
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="k1", ExtendedS3DestinationConfiguration=S3_CONFIG,
                                  DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": CMK_DISABLED})
    assert error_of(e)[0] == "InvalidKMSResourceException"
    assert e.value.response["Error"].get("Code") == "InvalidKMSResourceException"
    missing = "arn:aws:kms:us-east-1:000000000000:key/33333333-3333-3333-3333-333333333333"
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="k1", ExtendedS3DestinationConfiguration=S3_CONFIG,
                                  DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": missing})
    assert error_of(e)[0] == "InvalidKMSResourceException"
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="k1", ExtendedS3DestinationConfiguration=S3_CONFIG,
                                  DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK", "KeyARN": CMK_ENABLED})
    assert error_of(e)[0] == "InvalidArgumentException"
    make_stream(fh, "k2")
    with pytest.raises(ClientError) as e:
        fh.start_delivery_stream_encryption(DeliveryStreamName="k2", DeliveryStreamEncryptionConfigurationInput={
            "KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": CMK_DISABLED})
    assert error_of(e)[0] == "InvalidKMSResourceException"
    created = fh.create_delivery_stream(DeliveryStreamName="k3", ExtendedS3DestinationConfiguration=S3_CONFIG,
                                        DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": CMK_ENABLED})
    assert created["DeliveryStreamARN"]


def test_encryption_changes_are_limited_to_25_a_day(fh):
    make_stream(fh, "flappy")
    for i in range(25):
        if i % 2 == 0:
            fh.start_delivery_stream_encryption(DeliveryStreamName="flappy")
            wait_encryption(fh, "flappy", "ENABLED")
        else:
            fh.stop_delivery_stream_encryption(DeliveryStreamName="flappy")
            wait_encryption(fh, "flappy", "DISABLED")
    with pytest.raises(ClientError) as e:
        fh.stop_delivery_stream_encryption(DeliveryStreamName="flappy")
    assert error_of(e)[0] == "LimitExceededException"


def test_aws_cli(server, fh):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    base = ["aws", "firehose", "--endpoint-url", server.endpoint]

    def aws(*args):
        return json.loads(subprocess.run(base + list(args), check=True, capture_output=True, text=True, env=env).stdout or "{}")

    aws("create-delivery-stream", "--delivery-stream-name", "cli",
        "--extended-s3-destination-configuration", json.dumps(S3_CONFIG))
    time.sleep(TRANSITION_MS / 1000 + 0.05)
    assert aws("describe-delivery-stream", "--delivery-stream-name", "cli")["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
    # aws CLI v2 needs --cli-binary-format raw-in-base64-out to send raw text; v1 (the
    # one on PyPI) always treats blob arguments as raw text and has no such flag.
    version = subprocess.run(["aws", "--version"], capture_output=True, text=True).stdout
    binary_format = ["--cli-binary-format", "raw-in-base64-out"] if version.startswith("aws-cli/2") else []
    out = aws("put-record", "--delivery-stream-name", "cli", *binary_format, "--record", '{"Data": "hello from the cli"}')
    assert out["RecordId"] and out["Encrypted"] is False
    assert aws("list-delivery-streams")["DeliveryStreamNames"] == ["cli"]
    failed = subprocess.run(base + ["describe-delivery-stream", "--delivery-stream-name", "absent"],
                            capture_output=True, text=True, env=env)
    assert failed.returncode != 0
    assert "ResourceNotFoundException" in failed.stderr
    assert server.stop() == 0
    assert [base64.b64decode(r["data"]) for r in server.dump("cli")] == [b"hello from the cli"]


def test_a_disabled_key_refuses_puts_and_old_records_stay_readable(server, fh):
    make_stream(fh, "cmk", DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": CMK_ENABLED})
    assert fh.put_record(DeliveryStreamName="cmk", Record={"Data": b"TOP-SECRET-BEFORE"})["Encrypted"] is True
    assert server.stop() == 0
    enabled = f'arn = "{CMK_ENABLED}"\nkey_hex = "{"ab" * 32}"\n'
    for config in server.configs:
        config.write_text(config.read_text().replace(enabled, enabled + "enabled = false\n"))
    server.start()
    fh = server.client()
    with pytest.raises(ClientError) as e:
        fh.put_record(DeliveryStreamName="cmk", Record={"Data": b"refused"})
    assert error_of(e)[0] == "InvalidKMSResourceException"
    assert e.value.response["Error"]["Message"] == f"KMS key {CMK_ENABLED} is disabled."
    assert server.stop() == 0
    assert [base64.b64decode(r["data"]) for r in server.dump("cmk")] == [b"TOP-SECRET-BEFORE"]


def test_data_files_are_owner_only(server, fh):
    make_stream(fh, "private")
    fh.put_record(DeliveryStreamName="private", Record={"Data": b"x"})
    assert server.stop() == 0
    for root, dirs, files in (w for d in server.data_dirs for w in os.walk(d)):
        for name in dirs + files:
            mode = os.stat(os.path.join(root, name)).st_mode & 0o077
            assert mode == 0, f"{os.path.join(root, name)} is readable by others: {oct(mode)}"


def test_a_full_buffer_refuses_puts_with_503_and_keeps_everything_acknowledged(tmp_path):
    from conftest import Server
    server = Server(tmp_path / "data", extra_config="[limits]\nbuffer_mib_per_stream_max = 1\nbuffer_mib_max = 3\n").start()
    fh = server.client()

    def fill(stream):
        acked = []
        for i in range(100):
            records = [f"{stream}-{i}-{j}|".encode() + b"x" * 100_000 for j in range(2)]
            try:
                fh.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": r} for r in records])
            except ClientError as e:
                assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                assert e.response["Error"]["Code"] == "ServiceUnavailableException"
                assert "not yet delivered" in e.response["Error"]["Message"]
                return acked
            acked.extend(records)
        raise AssertionError(f"{stream} was never refused")

    for name in ("full", "second", "third", "fourth"):
        make_stream(fh, name)
    full = fill("full")
    assert 800_000 < sum(map(len, full)) <= 1 << 20
    # Per-stream limit: other streams still accept.
    assert fh.put_record(DeliveryStreamName="second", Record={"Data": b"fine"})["RecordId"]
    fill("second")
    fill("third")
    # Three streams hold about 3 MiB: the global limit now refuses a stream holding nothing.
    with pytest.raises(ClientError) as e:
        fh.put_record_batch(DeliveryStreamName="fourth", Records=[{"Data": b"y" * 200_000}])
    assert error_of(e)[:1] == ("ServiceUnavailableException",)
    assert server.stop() == 0
    assert [base64.b64decode(r["data"]) for r in server.dump("full")] == full
