"""Per-stream throughput limits as Firehose enforces them: a PutRecordBatch keeps
what fits and answers the rest individually (ServiceUnavailableException, "Slow
down.", FailedPutCount, HTTP 200), storing only the accepted records; a throttled
PutRecord gets 503; boto3's automatic retries then behave as against Firehose; and
ThrottledRecords counts what IncomingRecords does not."""

import base64
import urllib.request

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import Server, make_stream

LIMITS = """
[throttle]
requests_per_s = 100
records_per_s = 10
mib_per_s = 1
[throttle.streams.roomy]
records_per_s = 1000
[throttle.streams.retried]
records_per_s = 50
"""


@pytest.fixture
def limited(tmp_path):
    server = Server(tmp_path / "data", extra_config=LIMITS, throttle=True).start()
    yield server
    server.stop()


def test_batches_keep_what_fits_and_report_the_rest(limited):
    fh = limited.client()
    make_stream(fh, "tight")
    out = fh.put_record_batch(DeliveryStreamName="tight", Records=[{"Data": f"r{i}".encode()} for i in range(25)])
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert out["FailedPutCount"] == 15
    answers = out["RequestResponses"]
    assert all("RecordId" in a and "ErrorCode" not in a for a in answers[:10])
    assert all(a["ErrorCode"] == "ServiceUnavailableException" and a["ErrorMessage"] == "Slow down."
               and "RecordId" not in a for a in answers[10:])
    # The bucket refills at 10 records/s: on a slow machine a put may find a new
    # token, so put until one is refused (the first almost always is).
    extra = []
    for i in range(50):
        try:
            fh.put_record(DeliveryStreamName="tight", Record={"Data": f"extra{i}".encode()})
            extra.append(f"extra{i}".encode())
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"] == {"Code": "ServiceUnavailableException", "Message": "Slow down."}
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            break
    else:
        pytest.fail("50 single puts in a row were never throttled at 10 records/s")
    with urllib.request.urlopen(limited.endpoint + "/metrics") as r:
        metrics = r.read().decode()
    assert 'ThrottledRecords{DeliveryStreamName="tight"} 16' in metrics
    assert f'IncomingRecords{{DeliveryStreamName="tight"}} {10 + len(extra)}' in metrics
    roomy = fh.put_record_batch(DeliveryStreamName=make_stream(fh, "roomy")["DeliveryStreamName"],
                                Records=[{"Data": b"x"}] * 100)
    assert roomy["FailedPutCount"] == 0, "a stream's own limits"
    limited.stop()
    assert [base64.b64decode(r["data"]) for r in limited.dump("tight")] == [f"r{i}".encode() for i in range(10)] + extra
    limited.start()


def test_boto3_retries_a_throttled_put_as_against_firehose(limited):
    make_stream(limited.client(), "retried")
    fh = boto3.client("firehose", endpoint_url=limited.endpoint, region_name="us-east-1",
                      aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                      config=Config(retries={"mode": "standard"}))  # 3 attempts, as SDKs default to
    drained = fh.put_record_batch(DeliveryStreamName="retried", Records=[{"Data": b"d"}] * 60)
    assert drained["FailedPutCount"] == 10, "50 records per second"
    # The bucket refills at 50 records/s: on a slow machine a put may find a new
    # token, so put until one had to be retried (the first almost always does).
    for _ in range(50):
        out = fh.put_record(DeliveryStreamName="retried", Record={"Data": b"patient"})
        assert out["RecordId"]
        if out["ResponseMetadata"]["RetryAttempts"] >= 1:
            break
    assert out["ResponseMetadata"]["RetryAttempts"] >= 1, "throttled first, then retried by the SDK"
