"""Every control-plane operation and its errors, through boto3 against the real binary."""

import json
import socket
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import S3_CONFIG, Server, make_stream, wait_active

BACKENDS = ("embedded", "cluster")


def error_of(excinfo):
    e = excinfo.value.response
    return e["Error"]["Code"], e["Error"]["Message"], e["ResponseMetadata"]["HTTPStatusCode"]


def test_create_describe_lifecycle(fh):
    arn = fh.create_delivery_stream(DeliveryStreamName="orders", ExtendedS3DestinationConfiguration=S3_CONFIG)[
        "DeliveryStreamARN"]
    assert arn == "arn:aws:firehose:us-east-1:000000000000:deliverystream/orders"
    first = fh.describe_delivery_stream(DeliveryStreamName="orders")["DeliveryStreamDescription"]
    assert first["DeliveryStreamStatus"] == "CREATING"
    d = wait_active(fh, "orders")
    assert d["DeliveryStreamARN"] == arn
    assert d["DeliveryStreamType"] == "DirectPut"
    assert d["VersionId"] == "1"
    assert d["HasMoreDestinations"] is False
    assert d["DeliveryStreamEncryptionConfiguration"] == {"Status": "DISABLED"}
    assert abs(d["CreateTimestamp"].timestamp() - time.time()) < 60
    assert "LastUpdateTimestamp" not in d
    dest = d["Destinations"][0]
    assert dest["DestinationId"] == "destinationId-000000000001"
    ext = dest["ExtendedS3DestinationDescription"]
    assert ext["BucketARN"] == "arn:aws:s3:::bucket"
    assert ext["BufferingHints"] == {"SizeInMBs": 5, "IntervalInSeconds": 300}
    assert ext["CompressionFormat"] == "UNCOMPRESSED"
    assert ext["EncryptionConfiguration"] == {"NoEncryptionConfig": "NoEncryption"}
    assert ext["CloudWatchLoggingOptions"] == {"Enabled": False}
    assert ext["S3BackupMode"] == "Disabled"
    assert dest["S3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::bucket"
    assert "S3BackupMode" not in dest["S3DestinationDescription"]

    fh.delete_delivery_stream(DeliveryStreamName="orders")
    with pytest.raises(ClientError) as e:
        fh.describe_delivery_stream(DeliveryStreamName="orders")
    assert error_of(e) == ("ResourceNotFoundException", "Firehose orders under account 000000000000 not found.", 400)


def test_create_keeps_every_member_and_describes_it(fh):
    config = dict(S3_CONFIG, Prefix="logs/", ErrorOutputPrefix="errors/", CompressionFormat="GZIP",
                  BufferingHints={"SizeInMBs": 1, "IntervalInSeconds": 0}, FileExtension=".log",
                  CustomTimeZone="Asia/Tokyo",
                  ProcessingConfiguration={"Enabled": True, "Processors": [
                      {"Type": "AppendDelimiterToRecord", "Parameters": [{"ParameterName": "Delimiter", "ParameterValue": "Cg=="}]}]},
                  S3BackupMode="Enabled", S3BackupConfiguration=dict(S3_CONFIG, Prefix="backup/"))
    fh.create_delivery_stream(DeliveryStreamName="full", ExtendedS3DestinationConfiguration=config,
                              DirectPutSourceConfiguration={"ThroughputHintInMBs": 5})
    d = wait_active(fh, "full")
    ext = d["Destinations"][0]["ExtendedS3DestinationDescription"]
    for key in ("Prefix", "ErrorOutputPrefix", "CompressionFormat", "BufferingHints", "FileExtension",
                "CustomTimeZone", "ProcessingConfiguration", "S3BackupMode"):
        assert ext[key] == config[key], key
    assert ext["S3BackupDescription"]["Prefix"] == "backup/"
    assert d["Source"] == {"DirectPutSourceDescription": {"ThroughputHintInMBs": 5}}


def test_http_endpoint_and_s3_destinations_are_stored(fh):
    fh.create_delivery_stream(
        DeliveryStreamName="http",
        HttpEndpointDestinationConfiguration={
            "EndpointConfiguration": {"Url": "https://collector.example.com/in", "Name": "c", "AccessKey": "secret-key"},
            "S3Configuration": S3_CONFIG,
            "RequestConfiguration": {"ContentEncoding": "GZIP"},
        })
    d = wait_active(fh, "http")["Destinations"][0]["HttpEndpointDestinationDescription"]
    assert d["EndpointConfiguration"] == {"Url": "https://collector.example.com/in", "Name": "c"}
    assert d["RequestConfiguration"] == {"ContentEncoding": "GZIP"}
    assert d["RetryOptions"] == {"DurationInSeconds": 300}
    assert d["S3BackupMode"] == "FailedDataOnly"
    assert d["S3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::bucket"
    fh.create_delivery_stream(DeliveryStreamName="legacy", S3DestinationConfiguration=S3_CONFIG)
    legacy = wait_active(fh, "legacy")["Destinations"][0]
    assert legacy["S3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::bucket"


@pytest.mark.parametrize("kwargs,needle", [
    ({"RedshiftDestinationConfiguration": {
        "RoleARN": "arn:aws:iam::000000000000:role/r", "ClusterJDBCURL": "jdbc:redshift://c.abc.us-east-1.redshift.amazonaws.com:5439/db",
        "CopyCommand": {"DataTableName": "t"}, "S3Configuration": S3_CONFIG}}, "Redshift"),
    ({"DeliveryStreamType": "KinesisStreamAsSource", "ExtendedS3DestinationConfiguration": S3_CONFIG}, "KinesisStreamAsSource"),
    ({}, "Exactly one destination configuration is supported for a Firehose"),
    ({"ExtendedS3DestinationConfiguration": S3_CONFIG, "HttpEndpointDestinationConfiguration": {
        "EndpointConfiguration": {"Url": "https://x.example.com"}, "S3Configuration": S3_CONFIG}},
     "Exactly one destination configuration is supported for a Firehose"),
    # Format conversion: an incomplete block by Firehose's rules (an absent Enabled is
    # true).
    ({"ExtendedS3DestinationConfiguration": dict(S3_CONFIG, DataFormatConversionConfiguration={"Enabled": True})},
     "InputFormatConfiguration must not be null"),
    ({"ExtendedS3DestinationConfiguration": dict(S3_CONFIG, DataFormatConversionConfiguration={
        "SchemaConfiguration": {"DatabaseName": "db", "TableName": "t"}})}, "InputFormatConfiguration must not be null"),
    # Accepted and ignored, this would change what is delivered: refused instead.
    ({"HttpEndpointDestinationConfiguration": {
        "EndpointConfiguration": {"Url": "https://x.example.com"}, "S3Configuration": S3_CONFIG,
        "SecretsManagerConfiguration": {"Enabled": True, "SecretARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:s"}}},
     "SecretsManagerConfiguration"),
])
def test_create_refuses_what_it_cannot_deliver(fh, kwargs, needle):
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="nope", **kwargs)
    code, message, status = error_of(e)
    assert (code, status) == ("InvalidArgumentException", 400)
    assert needle in message
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []


def test_a_creating_stream_cannot_be_deleted_or_updated_yet(tmp_path):
    # A long CREATING phase, so a slow machine cannot make this test pass by accident.
    server = Server(tmp_path / "slow", transition_ms=3000).start()
    fh = server.client()
    fh.create_delivery_stream(DeliveryStreamName="busy", ExtendedS3DestinationConfiguration=S3_CONFIG)
    with pytest.raises(ClientError) as e:
        fh.delete_delivery_stream(DeliveryStreamName="busy")
    assert error_of(e)[0] == "ResourceInUseException"
    with pytest.raises(ClientError) as e:
        fh.update_destination(DeliveryStreamName="busy", CurrentDeliveryStreamVersionId="1",
                              DestinationId="destinationId-000000000001", ExtendedS3DestinationUpdate={"Prefix": "x/"})
    assert error_of(e)[0] == "ResourceInUseException"
    wait_active(fh, "busy", timeout=10)
    fh.delete_delivery_stream(DeliveryStreamName="busy")
    assert server.stop() == 0


def test_create_duplicate_is_resource_in_use(fh):
    make_stream(fh, "dup")
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="dup", ExtendedS3DestinationConfiguration=S3_CONFIG)
    assert error_of(e)[0] == "ResourceInUseException"


def test_validation_messages_match_aws(fh):
    with pytest.raises(ClientError) as e:
        fh.describe_delivery_stream(DeliveryStreamName="x" * 65)
    assert error_of(e) == ("ValidationException",
                           "1 validation error detected: Value '" + "x" * 65 + "' at 'deliveryStreamName' failed to "
                           "satisfy constraint: Member must have length less than or equal to 64", 400)
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="bad name!", ExtendedS3DestinationConfiguration=S3_CONFIG)
    assert error_of(e)[1] == ("1 validation error detected: Value 'bad name!' at 'deliveryStreamName' failed to "
                              "satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+")
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="s", ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, BufferingHints={"SizeInMBs": 129, "IntervalInSeconds": 60}, CompressionFormat="LZ4"))
    code, message, _ = error_of(e)
    assert code == "ValidationException"
    assert message.startswith("2 validation errors detected: ")
    assert ("Value '129' at 'extendedS3DestinationConfiguration.bufferingHints.sizeInMBs' failed to satisfy "
            "constraint: Member must have value less than or equal to 128") in message
    assert ("Value 'LZ4' at 'extendedS3DestinationConfiguration.compressionFormat' failed to satisfy constraint: "
            "Member must satisfy enum value set: [UNCOMPRESSED, GZIP, ZIP, Snappy, HADOOP_SNAPPY]") in message


def test_list_is_alphabetical_paginated_and_filtered(fh):
    names = [f"s{i:02d}" for i in range(12)]
    for n in reversed(names):
        fh.create_delivery_stream(DeliveryStreamName=n, ExtendedS3DestinationConfiguration=S3_CONFIG)
    page = fh.list_delivery_streams()
    assert page["DeliveryStreamNames"] == names[:10]
    assert page["HasMoreDeliveryStreams"] is True
    rest = fh.list_delivery_streams(ExclusiveStartDeliveryStreamName="s09")
    assert rest == {**rest, "DeliveryStreamNames": ["s10", "s11"], "HasMoreDeliveryStreams": False}
    assert fh.list_delivery_streams(Limit=3)["DeliveryStreamNames"] == names[:3]
    assert fh.list_delivery_streams(DeliveryStreamType="KinesisStreamAsSource")["DeliveryStreamNames"] == []
    assert len(fh.list_delivery_streams(DeliveryStreamType="DirectPut", Limit=100)["DeliveryStreamNames"]) == 12


def test_streams_are_namespaced_by_region(server):
    east, west = server.client("us-east-1"), server.client("us-west-2")
    arn = west.create_delivery_stream(DeliveryStreamName="regional", ExtendedS3DestinationConfiguration=S3_CONFIG)[
        "DeliveryStreamARN"]
    assert arn == "arn:aws:firehose:us-west-2:000000000000:deliverystream/regional"
    assert east.list_delivery_streams()["DeliveryStreamNames"] == []
    assert west.list_delivery_streams()["DeliveryStreamNames"] == ["regional"]
    with pytest.raises(ClientError) as e:
        east.put_record(DeliveryStreamName="regional", Record={"Data": b"x"})
    assert error_of(e)[0] == "ResourceNotFoundException"
    make_stream(east, "regional")  # the same name in another region is another stream


def test_tags(fh):
    make_stream(fh, "tagged", Tags=[{"Key": "team", "Value": "data"}])
    fh.tag_delivery_stream(DeliveryStreamName="tagged", Tags=[{"Key": "env", "Value": "ci"}, {"Key": "team", "Value": "ops"}])
    tags = fh.list_tags_for_delivery_stream(DeliveryStreamName="tagged")
    assert tags["Tags"] == [{"Key": "env", "Value": "ci"}, {"Key": "team", "Value": "ops"}]
    assert tags["HasMoreTags"] is False
    fh.untag_delivery_stream(DeliveryStreamName="tagged", TagKeys=["env", "not-there"])
    assert fh.list_tags_for_delivery_stream(DeliveryStreamName="tagged")["Tags"] == [{"Key": "team", "Value": "ops"}]
    fh.tag_delivery_stream(DeliveryStreamName="tagged", Tags=[{"Key": f"k{i:02d}", "Value": "v"} for i in range(49)])
    page = fh.list_tags_for_delivery_stream(DeliveryStreamName="tagged", Limit=10)
    assert len(page["Tags"]) == 10 and page["HasMoreTags"] is True
    after = fh.list_tags_for_delivery_stream(DeliveryStreamName="tagged", ExclusiveStartTagKey="k45")
    assert [t["Key"] for t in after["Tags"]] == ["k46", "k47", "k48", "team"]
    with pytest.raises(ClientError) as e:
        fh.tag_delivery_stream(DeliveryStreamName="tagged", Tags=[{"Key": "one-too-many", "Value": "v"}])
    assert error_of(e)[0] == "LimitExceededException"
    with pytest.raises(ClientError) as e:
        fh.tag_delivery_stream(DeliveryStreamName="tagged", Tags=[{"Key": "aws:reserved", "Value": "v"}])
    code, message, _ = error_of(e)
    assert code == "ValidationException" and "at 'tags.1.member.key'" in message
    with pytest.raises(ClientError) as e:
        fh.list_tags_for_delivery_stream(DeliveryStreamName="missing")
    assert error_of(e)[0] == "ResourceNotFoundException"


def test_update_destination_merges_and_locks(fh):
    make_stream(fh, "upd")
    fh.update_destination(DeliveryStreamName="upd", CurrentDeliveryStreamVersionId="1",
                          DestinationId="destinationId-000000000001",
                          ExtendedS3DestinationUpdate={"Prefix": "new/", "BufferingHints": {"SizeInMBs": 2, "IntervalInSeconds": 60}})
    d = fh.describe_delivery_stream(DeliveryStreamName="upd")["DeliveryStreamDescription"]
    ext = d["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert d["VersionId"] == "2"
    assert "LastUpdateTimestamp" in d
    assert ext["Prefix"] == "new/" and ext["BucketARN"] == "arn:aws:s3:::bucket"
    assert ext["BufferingHints"] == {"SizeInMBs": 2, "IntervalInSeconds": 60}
    with pytest.raises(ClientError) as e:
        fh.update_destination(DeliveryStreamName="upd", CurrentDeliveryStreamVersionId="1",
                              DestinationId="destinationId-000000000001", ExtendedS3DestinationUpdate={"Prefix": "x/"})
    assert error_of(e) == ("ConcurrentModificationException",
                           "Cannot update firehose: upd since the current version id: 2 and specified version id: 1 do not match", 400)
    with pytest.raises(ClientError) as e:
        fh.update_destination(DeliveryStreamName="upd", CurrentDeliveryStreamVersionId="2",
                              DestinationId="destinationId-000000000009", ExtendedS3DestinationUpdate={"Prefix": "x/"})
    assert error_of(e)[0] == "InvalidArgumentException"
    fh.update_destination(DeliveryStreamName="upd", CurrentDeliveryStreamVersionId="2",
                          DestinationId="destinationId-000000000001",
                          HttpEndpointDestinationUpdate={"EndpointConfiguration": {"Url": "https://h.example.com"},
                                                         "S3Update": S3_CONFIG})
    d = fh.describe_delivery_stream(DeliveryStreamName="upd")["DeliveryStreamDescription"]
    assert d["VersionId"] == "3"
    assert d["Destinations"][0]["HttpEndpointDestinationDescription"]["EndpointConfiguration"]["Url"] == "https://h.example.com"


def raw_call(endpoint, target, body: bytes, headers=None):
    request = urllib.request.Request(endpoint + "/", data=body, method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", **({"X-Amz-Target": target} if target else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def test_protocol_errors_over_raw_http(server):
    status, headers, body = raw_call(server.endpoint, None, b"{}")
    assert (status, body["__type"]) == (400, "UnknownOperationException")
    assert headers["x-amzn-requestid"]
    status, _, body = raw_call(server.endpoint, "Firehose_20150804.Explode", b"{}")
    assert (status, body["__type"]) == (400, "UnknownOperationException")
    status, _, body = raw_call(server.endpoint, "Firehose_20150804.ListDeliveryStreams", b"{not json")
    assert (status, body["__type"]) == (400, "SerializationException")
    status, _, body = raw_call(server.endpoint, "Firehose_20150804.ListDeliveryStreams", b'{"Limit": "ten"}')
    assert (status, body["__type"]) == (400, "SerializationException")
    status, _, body = raw_call(server.endpoint, "Firehose_20150804.PutRecord",
                               b'{"DeliveryStreamName": "s", "Record": {"Data": "not base64!"}}')
    assert (status, body["__type"]) == (400, "SerializationException")
    status, headers, body = raw_call(server.endpoint, "Firehose_20150804.ListDeliveryStreams", b"")
    assert (status, body) == (200, {"DeliveryStreamNames": [], "HasMoreDeliveryStreams": False})
    assert headers["content-type"] == "application/x-amz-json-1.1"


def test_oversized_body_is_refused_before_reading(server):
    # Only the headers are sent: the answer must come without the body being read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.PutRecordBatch\r\n"
                     b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 9437184\r\n\r\n")
        response = conn.recv(65536).decode()
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    assert json.loads(body)["__type"] == "SerializationException"


def test_health_and_metrics(server, fh):
    make_stream(fh, "metered")
    fh.put_record_batch(DeliveryStreamName="metered", Records=[{"Data": b"abc"}] * 3)
    fh.put_record(DeliveryStreamName="metered", Record={"Data": b"abcd"})
    # Each node counts what it served (a cluster's calls were spread over its
    # nodes): the stream's figures are the sum, as a metrics system adds them up.
    totals, texts = {}, []
    for endpoint in server.endpoints:
        with urllib.request.urlopen(endpoint + "/health") as r:
            assert r.status == 200
        with urllib.request.urlopen(endpoint + "/metrics") as r:
            text = r.read().decode()
        texts.append(text)
        for line in text.splitlines():
            if line.endswith(tuple("0123456789")) and '{DeliveryStreamName="metered"}' in line:
                name, value = line.rsplit(" ", 1)
                totals[name] = totals.get(name, 0) + float(value)
    assert totals['IncomingRecords{DeliveryStreamName="metered"}'] == 4
    assert totals['IncomingBytes{DeliveryStreamName="metered"}'] == 13
    assert totals['IncomingPutRequests{DeliveryStreamName="metered"}'] == 2
    assert totals['PutRecordBatch_Records{DeliveryStreamName="metered"}'] == 3
    assert any("PutRecord_Latency" in text for text in texts)


@pytest.mark.parametrize("config,needle", [
    ({"Prefix": "data/!{timestamp:yyyy}/"}, "ErrorOutputPrefix cannot be null or empty"),
    ({"Prefix": "data/!{timestamp:yyyy}/", "ErrorOutputPrefix": "errors/!{timestamp:yyyy}/"}, "!{firehose:error-output-type}"),
    ({"Prefix": "data/!{firehose:error-output-type}/", "ErrorOutputPrefix": "e/"}, "only allowed in ErrorOutputPrefix"),
    ({"Prefix": "data/!{partitionKeyFromQuery:k}/", "ErrorOutputPrefix": "e/"}, "requires dynamic partitioning"),
    ({"Prefix": "data/!{nope:x}/", "ErrorOutputPrefix": "e/"}, "Invalid expression"),
    ({"CustomTimeZone": "Mars/Olympus"}, "Unknown CustomTimeZone"),
])
def test_prefix_rules_are_enforced_at_create_and_update(fh, config, needle):
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="prefixed", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, **config))
    code, message, _ = error_of(e)
    assert code == "InvalidArgumentException" and needle in message, message
    make_stream(fh, "prefixed")
    with pytest.raises(ClientError) as e:
        fh.update_destination(DeliveryStreamName="prefixed", CurrentDeliveryStreamVersionId="1",
                              DestinationId="destinationId-000000000001", ExtendedS3DestinationUpdate=config)
    assert error_of(e)[0] == "InvalidArgumentException"
    ok = {"Prefix": "y=!{timestamp:yyyy}/", "ErrorOutputPrefix": "!{firehose:error-output-type}/", "CustomTimeZone": "Asia/Tokyo"}
    fh.update_destination(DeliveryStreamName="prefixed", CurrentDeliveryStreamVersionId="1",
                          DestinationId="destinationId-000000000001", ExtendedS3DestinationUpdate=ok)


def test_format_conversion_is_checked_by_update_too_and_accepted_disabled(fh):
    disabled = {"Enabled": False, "SchemaConfiguration": {"DatabaseName": "db", "TableName": "t"}}
    make_stream(fh, "plain", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, DataFormatConversionConfiguration=disabled))
    d = fh.describe_delivery_stream(DeliveryStreamName="plain")["DeliveryStreamDescription"]
    assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["DataFormatConversionConfiguration"] == disabled
    with pytest.raises(ClientError) as e:
        fh.update_destination(DeliveryStreamName="plain", CurrentDeliveryStreamVersionId="1",
                              DestinationId="destinationId-000000000001",
                              ExtendedS3DestinationUpdate={"DataFormatConversionConfiguration": {"Enabled": True}})
    code, message, status = error_of(e)
    # Merged field by field, as on Firehose: the stored block, now enabled, lacks its parts.
    assert (code, status) == ("InvalidArgumentException", 400) and "InputFormatConfiguration must not be null" in message
    assert fh.describe_delivery_stream(DeliveryStreamName="plain")["DeliveryStreamDescription"]["VersionId"] == "1"


def test_dynamic_partitioning_without_retry_options_is_described_with_300_seconds(fh):
    processors = [{"Type": "MetadataExtraction", "Parameters": [
        {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{c: .c}"},
        {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]
    make_stream(fh, "parts", ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, Prefix="c=!{partitionKeyFromQuery:c}/", ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
        DynamicPartitioningConfiguration={"Enabled": True},
        ProcessingConfiguration={"Enabled": True, "Processors": processors}))
    d = fh.describe_delivery_stream(DeliveryStreamName="parts")["DeliveryStreamDescription"]
    described = d["Destinations"][0]["ExtendedS3DestinationDescription"]["DynamicPartitioningConfiguration"]
    assert described == {"Enabled": True, "RetryOptions": {"DurationInSeconds": 300}}
