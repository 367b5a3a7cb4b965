"""Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/seed-*): valid
requests for every operation, and records in every format the processors read.
Run from the repository root: python3 fuzz/seeds.py. Needs aws-kinesis-agg
(tests/requirements.txt). The fuzzers grow their own corpora from these."""

import base64
import gzip
import hashlib
import hmac
import json
import urllib.parse
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
    return gzip.compress(json.dumps(envelope).encode(), mtime=0)


# First byte: the chain (see fuzz_targets/records.rs).
KPL, JSON, LINES, PIPES, GUNZIP, CLOUDWATCH, DELIMIT = 0b100, 0b101, 0b110, 0b111, 0b1000, 0b1_1000, 0b10_0000
RECORDS = [
    (KPL, kpl([b"one", b"two", b"three"])),
    (JSON, kpl([b'{"a":1}{"a":2}', b'[1,2] "x"'])),
    (JSON | DELIMIT, b'{"a":1} {"b":{"c":[1,2,3]}}\n{"d":"e"}'),
    (LINES, b"first\nsecond\n\nthird"),
    (PIPES, b"a||b||||c"),
    (GUNZIP, gzip.compress(b"plain text", mtime=0)),
    (CLOUDWATCH, cloudwatch()),
    (CLOUDWATCH | DELIMIT, cloudwatch("CONTROL_MESSAGE")),
    (KPL | GUNZIP, kpl([gzip.compress(b"inner", mtime=0)])),
]


SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # the SigV4 test suite's
AMZ_DATE = "20150830T123600Z"


def signature(canonical, region="us-east-1"):
    scope = f"{AMZ_DATE[:8]}/{region}/firehose/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", AMZ_DATE, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET).encode()
    for part in (AMZ_DATE[:8], region, "firehose", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def firehose_request(body, region="us-east-1"):
    """A PutRecord signed in the header form, as the suite writes requests."""
    headers = {"content-type": "application/x-amz-json-1.1", "host": "firehose.us-east-1.amazonaws.com",
               "x-amz-date": AMZ_DATE, "x-amz-target": "Firehose_20150804.PutRecord"}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["POST", "/", "", "".join(f"{h}:{headers[h]}\n" for h in sorted(headers)), signed,
                           hashlib.sha256(body).hexdigest()])
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{AMZ_DATE[:8]}/{region}/firehose/aws4_request, "
                                f"SignedHeaders={signed}, Signature={signature(canonical, region)}")
    return ("POST / HTTP/1.1\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n").encode() + body


def presigned_request():
    """A GET signed in the query form."""
    params = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"AKIDEXAMPLE/{AMZ_DATE[:8]}/us-east-1/firehose/aws4_request",
              "X-Amz-Date": AMZ_DATE, "X-Amz-Expires": "300", "X-Amz-SignedHeaders": "host"}
    query = "&".join(f"{k}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
    canonical = "\n".join(["GET", "/", query, "host:firehose.us-east-1.amazonaws.com\n", "host",
                           hashlib.sha256(b"").hexdigest()])
    return f"GET /?{query}&X-Amz-Signature={signature(canonical)} HTTP/1.1\nhost:firehose.us-east-1.amazonaws.com\n\n".encode()


def auth_seeds():
    vectors = sorted((Path(__file__).parent.parent / "crates/auth/src/vectors").glob("*.txt"))
    return ([firehose_request(b'{"DeliveryStreamName":"s","Record":{"Data":"eA=="}}'),
             firehose_request(b"\x01odd body", region="eu-west-1"), presigned_request()]
            + [v.read_bytes() for v in vectors])


def main():
    root = Path(__file__).parent / "corpus"
    for target, seeds in [
        ("request", [bytes([OPERATIONS.index(op) | allow_http]) + json.dumps(body).encode()
                     for op, bodies in REQUESTS.items() for body in bodies for allow_http in (0, 0x80)]),
        ("records", [bytes([selector]) + data for selector, data in RECORDS]),
        ("auth", auth_seeds()),
        # Edit scripts: none; cut a segment; flip a byte; zero a range; clear a file.
        ("wal_recovery", [b"", bytes([0, 1, 200, 0, 0]), bytes([1, 2, 100, 0, 7]), bytes([2, 0, 40, 0, 64]),
                          bytes([4, 3, 0, 0, 0])]),
    ]:
        (root / target).mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds):
            (root / target / f"seed-{i:02}").write_bytes(seed)


main()
