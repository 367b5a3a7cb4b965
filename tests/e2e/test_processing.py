"""The processing chain on delivery to S3 (local-directory buckets): KPL aggregates
made by AWS's own aws-kinesis-agg package, JSON and delimited de-aggregation,
AppendDelimiterToRecord, and CloudWatch Logs subscription envelopes decompressed
and reduced to their messages; failures go, unchanged, under the error prefix as
Firehose's error records; ProcessingConfiguration rules at creation."""

import base64
import gzip
import json

import botocore.exceptions
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from conftest import S3_CONFIG, Server, make_stream
from test_delivery import bucket, hints, objects, wait_for_objects


def processors(*items):
    return {"Enabled": True, "Processors": [
        {"Type": kind, "Parameters": [{"ParameterName": n, "ParameterValue": v} for n, v in params]}
        for kind, params in items]}


def error_records(out, output_type):
    found = [k for k in objects(out) if k.startswith(f"errors/{output_type}/")]
    return [json.loads(line) for key in found for line in (out / key).read_text().splitlines()]


def data_objects(out):
    return [k for k in objects(out) if not k.startswith("errors/")]


def config_with(processing, **extra):
    return dict(S3_CONFIG, BufferingHints=hints(1, 0), ProcessingConfiguration=processing,
                ErrorOutputPrefix="errors/!{firehose:error-output-type}/", **extra)


def kpl_aggregate(records):
    aggregator = RecordAggregator()
    for i, data in enumerate(records):
        assert aggregator.add_user_record(f"pk-{i}", data) is None, "one aggregate holds them all"
    partition_key, _, data = aggregator.clear_and_get().get_contents()
    return data


def test_kpl_aggregates_are_de_aggregated_record_for_record(server, fh):
    out = bucket(server)
    make_stream(fh, "kpl", ExtendedS3DestinationConfiguration=config_with(processors(
        ("RecordDeAggregation", [("SubRecordType", "JSON")]), ("AppendDelimiterToRecord", []))))
    users = [json.dumps({"n": i, "text": "x" * (i % 7)}).encode() for i in range(300)]
    aggregates = [kpl_aggregate(users[i:i + 100]) for i in range(0, 300, 100)]
    assert all(a[:4] == b"\xf3\x89\x9a\xc2" for a in aggregates)
    corrupt = bytearray(kpl_aggregate([b'{"lost": true}']))
    corrupt[-1] ^= 0xFF  # the MD5 no longer matches
    plain = b'{"plain": 1}{"plain": 2}'
    fh.put_record_batch(DeliveryStreamName="kpl", Records=[{"Data": a} for a in aggregates] +
                        [{"Data": bytes(corrupt)}, {"Data": plain}])
    wait_for_objects(out, n=2)
    [key] = data_objects(out)
    lines = (out / key).read_bytes().split(b"\n")
    assert lines[-1] == b"", "every record ends with the delimiter"
    assert lines[:-1] == users + [b'{"plain": 1}', b'{"plain": 2}'], "record for record, in order"
    [failed] = error_records(out, "processing-failed")
    assert base64.b64decode(failed["rawData"]) == bytes(corrupt), "the original record, unchanged"
    assert failed["errorCode"] and "MD5" in failed["errorMessage"]
    assert {"attemptsMade", "arrivalTimestamp", "attemptEndingTimestamp"} <= failed.keys()


def test_delimited_de_aggregation_with_a_custom_delimiter(server, fh):
    out = bucket(server)
    make_stream(fh, "delimited", ExtendedS3DestinationConfiguration=config_with(processors(
        ("RecordDeAggregation", [("SubRecordType", "DELIMITED"), ("Delimiter", base64.b64encode(b"####").decode())]),
        ("AppendDelimiterToRecord", [("Delimiter", base64.b64encode(b"\r\n").decode())]))))
    fh.put_record(DeliveryStreamName="delimited", Record={"Data": b"a####bb####ccc"})
    [key] = wait_for_objects(out)
    assert (out / key).read_bytes() == b"a\r\nbb\r\nccc\r\n"


def cwl_envelope(message_type, messages):
    envelope = {"messageType": message_type, "owner": "000000000000", "logGroup": "/app/web",
                "logStream": "i-0abc", "subscriptionFilters": ["to-firehose"],
                "logEvents": [{"id": str(i), "timestamp": 1_700_000_000_000 + i, "message": m}
                              for i, m in enumerate(messages)]}
    return gzip.compress(json.dumps(envelope).encode(), compresslevel=6)


def test_cloudwatch_logs_envelopes_are_decompressed_and_messages_extracted(tmp_path):
    server = Server(tmp_path / "data", extra_config='[sources]\ncloudwatch_logs_access_key_ids = ["cwl-forwarder"]\n')
    server.start()
    out = bucket(server)
    fh, cwl = server.client(), server.client(access_key_id="cwl-forwarder")
    make_stream(fh, "logs", ExtendedS3DestinationConfiguration=config_with(processors(
        ("Decompression", [("CompressionFormat", "GZIP")]),
        ("CloudWatchLogProcessing", [("DataMessageExtraction", "true")]))))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.put_record(DeliveryStreamName="logs", Record={"Data": cwl_envelope("DATA_MESSAGE", ["x"])})
    assert e.value.response["Error"]["Code"] == "InvalidSourceException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "not originating from allowed source types" in e.value.response["Error"]["Message"]
    broken = b"\x1f\x8b not really gzip"
    cwl.put_record_batch(DeliveryStreamName="logs", Records=[
        {"Data": cwl_envelope("CONTROL_MESSAGE", ["CWL CONTROL MESSAGE: Checking health of destination Firehose."])},
        {"Data": cwl_envelope("DATA_MESSAGE", ["GET / 200", "GET /health 200"])},
        {"Data": broken},
        {"Data": cwl_envelope("DATA_MESSAGE", ["POST /login 302"])},
    ])
    wait_for_objects(out, n=2)
    [key] = data_objects(out)
    assert (out / key).read_bytes() == b"GET / 200\nGET /health 200\nPOST /login 302\n"
    [failed] = error_records(out, "decompression-failed")
    assert base64.b64decode(failed["rawData"]) == broken, "the record as it arrived, still compressed"
    assert server.stop() == 0


@pytest.mark.parametrize("processing", [
    processors(("Lambda", [("LambdaArn", "arn:aws:lambda:us-east-1:000000000000:function:f"),
                           ("BufferIntervalInSeconds", "30")])),
    processors(("RecordDeAggregation", [("SubRecordType", "DELIMITED")])),
    processors(("CloudWatchLogProcessing", [("DataMessageExtraction", "true")])),
    processors(("AppendDelimiterToRecord", [("SubRecordType", "JSON")])),
    processors(("Decompression", [("CompressionFormat", "ZIP")])),
])
def test_processing_rules_are_enforced_at_creation(server, fh, processing):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="ruled", ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, ProcessingConfiguration=processing))
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException", e.value.response
