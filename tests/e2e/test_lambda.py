"""The Lambda processor against a function served through the Lambda Invoke API:
the event and response contract, SigV4 signing, Ok / Dropped / ProcessingFailed,
and the failures Firehose names (missing and duplicated record ids, unparsable
responses, function errors, timeouts), each going to processing-failed as
Firehose's error records."""

import base64
import json
import time
import urllib.parse

import pytest

from conftest import S3_CONFIG, Server, make_stream
from lambda_server import LambdaServer
from test_delivery import bucket, hints, objects

SECRET = "lambda-secret"
FUNCTION = "arn:aws:lambda:us-east-1:000000000000:function:upper"


def start(tmp_path, lambda_server, extra=""):
    config = (f'[lambda]\nendpoint = "{lambda_server.endpoint}"\naccess_key_id = "lambda-key"\n'
              f'secret_access_key = "{SECRET}"\n' + extra)
    return Server(tmp_path / "data", extra_config=config).start()


def lambda_stream(fh, name, retries=0):
    processing = {"Enabled": True, "Processors": [
        {"Type": "Lambda", "Parameters": [{"ParameterName": "LambdaArn", "ParameterValue": FUNCTION},
                                          {"ParameterName": "NumberOfRetries", "ParameterValue": str(retries)}]},
        {"Type": "AppendDelimiterToRecord", "Parameters": []}]}
    make_stream(fh, name, ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, BufferingHints=hints(1, 0), ProcessingConfiguration=processing,
        ErrorOutputPrefix="errors/!{firehose:error-output-type}/"))


def failed_records(out):
    keys = [k for k in objects(out) if k.startswith("errors/processing-failed/")]
    return [json.loads(line) for k in keys for line in (out / k).read_text().splitlines()]


def delivered(out):
    return b"".join((out / k).read_bytes() for k in objects(out) if not k.startswith("errors/"))


def wait_for(predicate, timeout=20):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_the_function_transforms_drops_and_fails_records(tmp_path):
    fn = LambdaServer(SECRET)
    try:
        server = start(tmp_path, fn)
        out = bucket(server)
        fh = server.client()
        lambda_stream(fh, "transformed")
        sent_at = time.time() * 1000
        fh.put_record_batch(DeliveryStreamName="transformed", Records=[
            {"Data": b"alpha"}, {"Data": b"drop me"}, {"Data": b"fail me"}, {"Data": b"omega"}])
        wait_for(lambda: delivered(out) and failed_records(out))
        assert delivered(out) == b"ALPHA\nOMEGA\n", "Ok records transformed, Dropped ones gone"
        [failed] = failed_records(out)
        assert base64.b64decode(failed["rawData"]) == b"fail me"
        assert failed["errorCode"] == "Lambda.ProcessingFailed" and failed["lambdaArn"] == FUNCTION
        [invocation] = fn.invocations
        headers = {k.lower(): v for k, v in invocation["headers"].items()}
        assert invocation["signature_valid"], headers.get("authorization")
        auth = headers["authorization"]
        assert "Credential=lambda-key/" in auth and "/us-east-1/lambda/aws4_request" in auth
        assert invocation["path"] == "/2015-03-31/functions/" + urllib.parse.quote(FUNCTION, safe="") + "/invocations"
        event = invocation["event"]
        assert set(event) == {"invocationId", "deliveryStreamArn", "region", "records"}
        assert event["deliveryStreamArn"] == "arn:aws:firehose:us-east-1:000000000000:deliverystream/transformed"
        assert event["region"] == "us-east-1"
        ids = [r["recordId"] for r in event["records"]]
        assert len(set(ids)) == 4
        assert [base64.b64decode(r["data"]) for r in event["records"]] == [b"alpha", b"drop me", b"fail me", b"omega"]
        assert all(abs(r["approximateArrivalTimestamp"] - sent_at) < 60_000 for r in event["records"])
        assert server.stop() == 0
    finally:
        fn.close()


@pytest.mark.parametrize("mode, code, retries, expect_delivered", [
    ("missing", "Lambda.MissingRecordId", 0, b"ALPHA\n"),
    ("duplicate", "Lambda.DuplicatedRecordId", 0, b""),
    ("garbage", "Lambda.JsonProcessingException", 0, b""),
    ("function-error", "Lambda.FunctionError", 1, b""),
    ("timeout", "Lambda.FunctionTimeout", 0, b""),
])
def test_function_failures_are_processing_failures(tmp_path, mode, code, retries, expect_delivered):
    fn = LambdaServer(SECRET, mode=mode)
    try:
        server = start(tmp_path, fn, extra="timeout_s = 1\n")
        out = bucket(server)
        fh = server.client()
        lambda_stream(fh, "failing", retries=retries)
        fh.put_record_batch(DeliveryStreamName="failing", Records=[{"Data": b"alpha"}, {"Data": b"beta"}])
        wait_for(lambda: failed_records(out))
        failed = failed_records(out)
        assert {f["errorCode"] for f in failed} == {code}, failed
        expected_failed = [b"beta"] if mode == "missing" else [b"alpha", b"beta"]
        assert sorted(base64.b64decode(f["rawData"]) for f in failed) == expected_failed
        assert delivered(out) == expect_delivered
        assert len(fn.invocations) == 1 + retries, "NumberOfRetries more invocations after a failed one"
        assert server.stop() == 0
    finally:
        fn.close()


def test_source_record_backup_keeps_the_untransformed_records(tmp_path):
    fn = LambdaServer(SECRET)
    try:
        server = start(tmp_path, fn)
        out, source = bucket(server), bucket(server, "source")
        fh = server.client()
        processing = {"Enabled": True, "Processors": [{"Type": "Lambda", "Parameters": [
            {"ParameterName": "LambdaArn", "ParameterValue": FUNCTION}]}]}
        make_stream(fh, "backed", ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, BufferingHints=hints(1, 0), ProcessingConfiguration=processing, S3BackupMode="Enabled",
            S3BackupConfiguration=dict(S3_CONFIG, BucketARN="arn:aws:s3:::source", BufferingHints=hints(1, 0))))
        fh.put_record_batch(DeliveryStreamName="backed", Records=[{"Data": b"one,"}, {"Data": b"two"}])
        wait_for(lambda: delivered(out) and objects(source))
        assert delivered(out) == b"ONE,TWO"
        assert b"".join((source / k).read_bytes() for k in objects(source)) == b"one,two"
        assert server.stop() == 0
    finally:
        fn.close()
