"""The pip-installed Sluice (issue 12): run by `.ci/run` in a fresh virtual
environment that has only the sluice-firehose wheel, boto3 and pytest, through the
`sluice` fixture the wheel's pytest plugin provides."""

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROLE = "arn:aws:iam::000000000000:role/firehose"


def test_the_wheel_put_sluice_on_the_path():
    found = shutil.which("sluice")
    # The venv's own bin directory (not resolved: the venv's python links elsewhere).
    assert found and Path(os.path.normpath(found)).parent == Path(os.path.normpath(sys.executable)).parent, found
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sluice ")


def test_a_typical_firehose_test_runs_on_the_fixture(sluice):
    sluice.create_bucket("events-bucket")
    fh = sluice.firehose
    fh.create_delivery_stream(
        DeliveryStreamName="events",
        ExtendedS3DestinationConfiguration={"RoleARN": ROLE, "BucketARN": "arn:aws:s3:::events-bucket",
                                            "CompressionFormat": "GZIP"})
    records = [f'{{"n": {i}}}\n'.encode() for i in range(20)]
    out = fh.put_record_batch(DeliveryStreamName="events", Records=[{"Data": r} for r in records])
    assert out["FailedPutCount"] == 0
    # Buffering hints would hold these for five minutes; the flush delivers them now.
    result = sluice.flush()
    assert result["Delivered"] is True
    objects = sluice.objects("events-bucket")
    assert len(objects) == 1
    [(key, body)] = objects.items()
    assert key.endswith(".gz")
    assert gzip.decompress(body) == b"".join(records)


def test_a_left_over_stream(sluice):
    sluice.firehose.create_delivery_stream(
        DeliveryStreamName="left-over",
        ExtendedS3DestinationConfiguration={"RoleARN": ROLE, "BucketARN": "arn:aws:s3:::b"})


def test_each_test_starts_clean(sluice):
    """Runs after the test above: its stream (and the buckets) are gone."""
    assert sluice.firehose.list_delivery_streams()["DeliveryStreamNames"] == []
    assert not (sluice.data_dir / "buckets" / "events-bucket").exists()


def test_sluice_health_answers_for_the_fixture(sluice):
    assert subprocess.run(["sluice", "health", "--endpoint", sluice.endpoint]).returncode == 0


def test_objects_are_read_back_through_the_same_endpoint(sluice, sluice_s3):
    sluice_s3.create_bucket(Bucket="through-s3")
    sluice.firehose.create_delivery_stream(
        DeliveryStreamName="s3-api",
        ExtendedS3DestinationConfiguration={"RoleARN": ROLE, "BucketARN": "arn:aws:s3:::through-s3"})
    sluice.firehose.put_record(DeliveryStreamName="s3-api", Record={"Data": b"one record\n"})
    sluice.flush()
    [listed] = sluice_s3.list_objects_v2(Bucket="through-s3")["Contents"]
    assert sluice_s3.get_object(Bucket="through-s3", Key=listed["Key"])["Body"].read() == b"one record\n"
