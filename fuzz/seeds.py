"""Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/seed-*): valid
requests for every operation, and records in every format the processors read.
Run from the repository root: python3 fuzz/seeds.py. Needs aws-kinesis-agg
(tests/requirements.txt). The fuzzers grow their own corpora from these."""

import base64
import gzip
import json
from pathlib import Path

from aws_kinesis_agg.aggregator import RecordAggregator

OPERATIONS = ["CreateDeliveryStream", "DeleteDeliveryStream", "DescribeDeliveryStream", "ListDeliveryStreams",
              "ListTagsForDeliveryStream", "PutRecord", "PutRecordBatch", "StartDeliveryStreamEncryption",
              "StopDeliveryStreamEncryption", "TagDeliveryStream", "UntagDeliveryStream", "UpdateDestination"]
S3 = {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b",
      "Prefix": "data/!{partitionKeyFromQuery:k}/!{timestamp:yyyy}/", "ErrorOutputPrefix": "err/!{firehose:error-output-type}/",
      "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 60}, "CompressionFormat": "GZIP",
      "DynamicPartitioningConfiguration": {"Enabled": True},
      "ProcessingConfiguration": {"Enabled": True, "Processors": [
          {"Type": "RecordDeAggregation", "Parameters": [{"ParameterName": "SubRecordType", "ParameterValue": "JSON"}]},
          {"Type": "MetadataExtraction", "Parameters": [
              {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{k: .a | tostring}"},
              {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]},
          {"Type": "AppendDelimiterToRecord", "Parameters": []}]}}
HTTP = {"EndpointConfiguration": {"Url": "https://127.0.0.1:9/x", "Name": "e", "AccessKey": "k"},
        "RequestConfiguration": {"ContentEncoding": "GZIP", "CommonAttributes": [
            {"AttributeName": "a", "AttributeValue": "b"}]},
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60}, "RetryOptions": {"DurationInSeconds": 60},
        "S3BackupMode": "FailedDataOnly",
        "S3Configuration": {"RoleARN": "arn:aws:iam::000000000000:role/r", "BucketARN": "arn:aws:s3:::b"}}
DATA = base64.b64encode(b'{"a":1}').decode()
REQUESTS = {
    "CreateDeliveryStream": [
        {"DeliveryStreamName": "s", "DeliveryStreamType": "DirectPut", "ExtendedS3DestinationConfiguration": S3,
         "DeliveryStreamEncryptionConfigurationInput": {"KeyType": "AWS_OWNED_CMK"}, "Tags": [{"Key": "k", "Value": "v"}]},
        {"DeliveryStreamName": "h", "HttpEndpointDestinationConfiguration": HTTP},
    ],
    "DeleteDeliveryStream": [{"DeliveryStreamName": "s", "AllowForceDelete": True}],
    "DescribeDeliveryStream": [{"DeliveryStreamName": "s", "Limit": 10, "ExclusiveStartDestinationId": "d"}],
    "ListDeliveryStreams": [{"Limit": 10, "DeliveryStreamType": "DirectPut", "ExclusiveStartDeliveryStreamName": "a"}],
    "ListTagsForDeliveryStream": [{"DeliveryStreamName": "s", "ExclusiveStartTagKey": "k", "Limit": 5}],
    "PutRecord": [{"DeliveryStreamName": "s", "Record": {"Data": DATA}}],
    "PutRecordBatch": [{"DeliveryStreamName": "s", "Records": [{"Data": DATA}, {"Data": ""}]}],
    "StartDeliveryStreamEncryption": [{"DeliveryStreamName": "s", "DeliveryStreamEncryptionConfigurationInput": {
        "KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": "arn:aws:kms:us-east-1:000000000000:key/k"}}],
    "StopDeliveryStreamEncryption": [{"DeliveryStreamName": "s"}],
    "TagDeliveryStream": [{"DeliveryStreamName": "s", "Tags": [{"Key": "k", "Value": "v"}]}],
    "UntagDeliveryStream": [{"DeliveryStreamName": "s", "TagKeys": ["k"]}],
    "UpdateDestination": [
        {"DeliveryStreamName": "s", "CurrentDeliveryStreamVersionId": "1", "DestinationId": "destinationId-000000000001",
         "ExtendedS3DestinationUpdate": {k: v for k, v in S3.items() if k != "DynamicPartitioningConfiguration"}},
        {"DeliveryStreamName": "h", "CurrentDeliveryStreamVersionId": "1", "DestinationId": "destinationId-000000000001",
         "HttpEndpointDestinationUpdate": {k: v for k, v in HTTP.items() if k != "S3Configuration"}},
    ],
}


def kpl(records):
    aggregator = RecordAggregator()
    for i, data in enumerate(records):
        aggregator.add_user_record(f"pk-{i}", data)
    return aggregator.clear_and_get().get_contents()[2]


def cloudwatch(message_type="DATA_MESSAGE"):
    envelope = {"messageType": message_type, "owner": "000000000000", "logGroup": "g", "logStream": "s",
                "subscriptionFilters": ["f"], "logEvents": [{"id": "1", "timestamp": 0, "message": "hello"},
                                                            {"id": "2", "timestamp": 1, "message": "{\"a\":1}"}]}
    return gzip.compress(json.dumps(envelope).encode())


# First byte: the chain (see fuzz_targets/records.rs).
KPL, JSON, LINES, PIPES, GUNZIP, CLOUDWATCH, DELIMIT = 0b100, 0b101, 0b110, 0b111, 0b1000, 0b1_1000, 0b10_0000
RECORDS = [
    (KPL, kpl([b"one", b"two", b"three"])),
    (JSON, kpl([b'{"a":1}{"a":2}', b'[1,2] "x"'])),
    (JSON | DELIMIT, b'{"a":1} {"b":{"c":[1,2,3]}}\n{"d":"e"}'),
    (LINES, b"first\nsecond\n\nthird"),
    (PIPES, b"a||b||||c"),
    (GUNZIP, gzip.compress(b"plain text")),
    (CLOUDWATCH, cloudwatch()),
    (CLOUDWATCH | DELIMIT, cloudwatch("CONTROL_MESSAGE")),
    (KPL | GUNZIP, kpl([gzip.compress(b"inner")])),
]


def main():
    root = Path(__file__).parent / "corpus"
    for target, seeds in [
        ("request", [bytes([OPERATIONS.index(op) | allow_http]) + json.dumps(body).encode()
                     for op, bodies in REQUESTS.items() for body in bodies for allow_http in (0, 0x80)]),
        ("records", [bytes([selector]) + data for selector, data in RECORDS]),
        # Edit scripts: none; cut a segment; flip a byte; zero a range; clear a file.
        ("wal_recovery", [b"", bytes([0, 1, 200, 0, 0]), bytes([1, 2, 100, 0, 7]), bytes([2, 0, 40, 0, 64]),
                          bytes([4, 3, 0, 0, 0])]),
    ]:
        (root / target).mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds):
            (root / target / f"seed-{i:02}").write_bytes(seed)


main()
