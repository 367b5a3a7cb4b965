"""Dynamic partitioning: partition keys from a JQ MetadataExtraction query (compared
with the jq command-line tool on the same queries and records) and from a Lambda
function, one object per partition under the evaluated prefix, the active-partition
limit, and records whose keys cannot be extracted going to the error prefix."""

import base64
import json
import subprocess

import pytest

from conftest import S3_CONFIG, Server, make_stream
from lambda_server import LambdaServer
from test_delivery import bucket, hints, objects
from test_lambda import FUNCTION, SECRET, wait_for

RECORDS = [
    {"customer": "c-1", "device": {"kind": "phone"}, "ts": 1700000000, "n": 1, "tags": ["a", "b"], "name": "Ann"},
    {"customer": "c-2", "device": {"kind": "laptop"}, "ts": 1600000000, "n": 2.5, "tags": ["c"], "name": "bob"},
    {"customer": "c-1", "device": {"kind": "laptop"}, "ts": 1700000001, "n": -3, "tags": [], "name": "Cy"},
    {"customer": "c-3", "device": {"kind": "phone"}, "ts": 0, "n": 10, "tags": ["x", "y", "z"], "name": "dee"},
]

QUERIES = [
    "{customer: .customer}",
    "{customer: .customer, kind: .device.kind}",
    '{year: (.ts | strftime("%Y")), month: (.ts | strftime("%m"))}',
    "{n: (.n + 1 | tostring)}",
    '{tags: (.tags | join("-")), size: (.tags | length)}',
    "{name: (.name | ascii_upcase)}",
]


def partitioned(query, prefix, **extra):
    processors = [{"Type": "MetadataExtraction", "Parameters": [
        {"ParameterName": "MetadataExtractionQuery", "ParameterValue": query},
        {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]},
        {"Type": "AppendDelimiterToRecord", "Parameters": []}]
    return dict(S3_CONFIG, Prefix=prefix, ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
                BufferingHints=hints(1, 0), DynamicPartitioningConfiguration={"Enabled": True},
                ProcessingConfiguration={"Enabled": True, "Processors": processors}, **extra)


def jq(query, record):
    out = subprocess.run(["jq", "-c", query], input=json.dumps(record), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def expected_prefix(keys):
    text = lambda v: v if isinstance(v, str) else json.dumps(v)
    return "/".join(f"{k}={text(v)}" for k, v in keys.items()) + "/"


def data_objects(out):
    return {k: (out / k).read_bytes() for k in objects(out) if not k.startswith("errors/")}


def error_records(out, output_type):
    keys = [k for k in objects(out) if k.startswith(f"errors/{output_type}/")]
    return [json.loads(line) for k in keys for line in (out / k).read_text().splitlines()]


def test_jq_partition_keys_match_the_jq_tool(tmp_path):
    server = Server(tmp_path / "data").start()
    out = bucket(server)
    fh = server.client()
    for i, query in enumerate(QUERIES):
        names = list(jq(query, RECORDS[0]))
        prefix = f"q{i}/" + "/".join(f"{k}=!{{partitionKeyFromQuery:{k}}}" for k in names) + "/"
        make_stream(fh, f"jq-{i}", ExtendedS3DestinationConfiguration=partitioned(query, prefix))
        fh.put_record_batch(DeliveryStreamName=f"jq-{i}",
                            Records=[{"Data": json.dumps(r).encode()} for r in RECORDS])
    expected = {}
    for i, query in enumerate(QUERIES):
        for record in RECORDS:
            prefix = f"q{i}/" + expected_prefix(jq(query, record))
            expected.setdefault(prefix, b"")
            expected[prefix] += json.dumps(record).encode() + b"\n"
    wait_for(lambda: len(data_objects(out)) >= len(expected))
    found = {}
    for key, body in data_objects(out).items():
        prefix = key.rsplit("/", 1)[0] + "/"
        assert prefix not in found, f"one object per partition and batch: {key}"
        found[prefix] = body
    assert found == expected
    assert server.stop() == 0


def test_records_without_keys_and_past_the_partition_limit_go_to_the_error_prefix(tmp_path):
    server = Server(tmp_path / "data", extra_config="[limits]\nactive_partitions_max = 2\n").start()
    out = bucket(server)
    fh = server.client()
    make_stream(fh, "limited", ExtendedS3DestinationConfiguration=partitioned(
        "{customer: .customer}", "customer=!{partitionKeyFromQuery:customer}/"))
    fh.put_record_batch(DeliveryStreamName="limited", Records=[{"Data": json.dumps(r).encode()} for r in RECORDS]
                        + [{"Data": b"not json at all"}])
    wait_for(lambda: len(error_records(out, "partitioning-failed")) == 2)
    assert sorted(k.split("/")[0] for k in data_objects(out)) == ["customer=c-1", "customer=c-2"]
    failed = error_records(out, "partitioning-failed")
    by_code = {f["errorCode"]: base64.b64decode(f["rawData"]) for f in failed}
    assert by_code["DynamicPartitioning.MetadataExtractionFailed"] == b"not json at all"
    assert json.loads(by_code["DynamicPartitioning.ActivePartitionsLimitExceeded"])["customer"] == "c-3"
    assert server.stop() == 0


def test_partition_keys_from_lambda(tmp_path):
    fn = LambdaServer(SECRET)
    try:
        server = Server(tmp_path / "data", extra_config=(
            f'[lambda]\nendpoint = "{fn.endpoint}"\naccess_key_id = "k"\nsecret_access_key = "{SECRET}"\n')).start()
        out = bucket(server)
        fh = server.client()
        processors = [{"Type": "Lambda", "Parameters": [{"ParameterName": "LambdaArn", "ParameterValue": FUNCTION}]},
                      {"Type": "AppendDelimiterToRecord", "Parameters": []}]
        make_stream(fh, "by-lambda", ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, Prefix="first=!{partitionKeyFromLambda:first}/", BufferingHints=hints(1, 0),
            ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
            DynamicPartitioningConfiguration={"Enabled": True},
            ProcessingConfiguration={"Enabled": True, "Processors": processors}))
        fh.put_record_batch(DeliveryStreamName="by-lambda", Records=[
            {"Data": b"apple"}, {"Data": b"banana"}, {"Data": b"avocado"}])
        wait_for(lambda: len(data_objects(out)) == 2)
        found = {k.split("/")[0]: v for k, v in data_objects(out).items()}
        assert found == {"first=a": b"APPLE\nAVOCADO\n", "first=b": b"BANANA\n"}
        assert server.stop() == 0
    finally:
        fn.close()


def test_dynamic_partitioning_is_fixed_at_creation(tmp_path):
    import botocore.exceptions
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "fixed", ExtendedS3DestinationConfiguration=partitioned(
        "{customer: .customer}", "customer=!{partitionKeyFromQuery:customer}/"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.update_destination(DeliveryStreamName="fixed", CurrentDeliveryStreamVersionId="1",
                              DestinationId="destinationId-000000000001",
                              ExtendedS3DestinationUpdate={"DynamicPartitioningConfiguration": {"Enabled": False}})
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        make_stream(fh, "badquery", ExtendedS3DestinationConfiguration=partitioned(
            "{customer: .customer", "customer=!{partitionKeyFromQuery:customer}/"))
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert server.stop() == 0
