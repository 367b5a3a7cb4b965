"""The HTTP endpoint destination against a receiver over HTTPS with a test CA:
Firehose's protocol 1.0 headers and JSON body, gzip, the response rules (200 with the
same requestId; 413 permanent), retries for RetryOptions.DurationInSeconds with the
same request id, then the records under http-endpoint-failed in the S3
configuration's bucket; S3BackupMode AllData; plain http only when configured; and
kill -9 while the receiver flaps loses nothing."""

import base64
import json
import random
import time
import urllib.request

import botocore.exceptions
import pytest

from conftest import S3_CONFIG, Server, wait_active
from receiver import Receiver, make_ca_and_cert
from test_crash import kill_under_load
from test_delivery import KEY, bucket, hints, objects, wait_for_objects
from test_lambda import wait_for


@pytest.fixture
def tls(tmp_path):
    (tmp_path / "tls").mkdir()
    ca = make_ca_and_cert(tmp_path / "tls")
    return tmp_path / "tls", ca


@pytest.fixture
def receiver(tls):
    """Makes receivers (HTTPS with the test CA unless `secure=False`), closed after the test."""
    made = []

    def make(mode="ok", secure=True):
        made.append(Receiver(tls[0] if secure else None, mode=mode))
        return made[-1]
    yield make
    for r in made:
        r.close()


def http_config(url, **extra):
    config = {
        "EndpointConfiguration": {"Url": url, "Name": "receiver", "AccessKey": "the-access-key"},
        "BufferingHints": hints(1, 0),
        "S3Configuration": dict(S3_CONFIG, ErrorOutputPrefix="failed/!{firehose:error-output-type}/"),
    }
    config.update(extra)
    return config


def make_stream(client, name, HttpEndpointDestinationConfiguration):
    client.create_delivery_stream(DeliveryStreamName=name,
                                  HttpEndpointDestinationConfiguration=HttpEndpointDestinationConfiguration)
    return wait_active(client, name)


def start(tmp_path, ca=None, extra=""):
    config = (f'[http]\nca_file = "{ca}"\n' if ca else "") + extra
    return Server(tmp_path / "data", extra_config=config).start()


def failed_records(out):
    keys = [k for k in objects(out) if k.startswith("failed/http-endpoint-failed/")]
    return [json.loads(line) for k in keys for line in (out / k).read_text().splitlines()]


def test_requests_follow_the_protocol_over_https(tmp_path, tls, receiver):
    ca = tls[1]
    receiver = receiver()
    server = start(tmp_path, ca)
    fh = server.client()
    make_stream(fh, "tohttp", HttpEndpointDestinationConfiguration=http_config(
        receiver.url + "/ingest?token=abc&x=1",
        RequestConfiguration={"ContentEncoding": "GZIP", "CommonAttributes": [
            {"AttributeName": "env", "AttributeValue": "test"}, {"AttributeName": "team", "AttributeValue": "data"}]}))
    records = [f"record-{i}\n".encode() for i in range(50)] + [b""]
    fh.put_record_batch(DeliveryStreamName="tohttp", Records=[{"Data": r} for r in records])
    [request] = receiver.wait_for(1)
    assert request["path"] == "/ingest?token=abc&x=1", "the URL is used unchanged"
    h = {k.lower(): v for k, v in request["headers"].items()}
    assert h["x-amz-firehose-protocol-version"] == "1.0"
    assert h["x-amz-firehose-source-arn"] == "arn:aws:firehose:us-east-1:000000000000:deliverystream/tohttp"
    assert h["x-amz-firehose-access-key"] == "the-access-key"
    assert json.loads(h["x-amz-firehose-common-attributes"]) == {
        "commonAttributes": {"env": "test", "team": "data"}}
    assert h["content-type"] == "application/json" and h["content-encoding"] == "gzip"
    body = request["body"]
    assert set(body) == {"requestId", "timestamp", "records"}
    assert body["requestId"] == h["x-amz-firehose-request-id"]
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    assert [base64.b64decode(r["data"]) for r in body["records"]] == records
    assert all(set(r) == {"data"} for r in body["records"])
    time.sleep(0.5)
    assert len(receiver.requests) == 1, "a 200 with the requestId is delivered: no retry"
    with urllib.request.urlopen(server.endpoint + "/metrics") as r:
        metrics = r.read().decode()
    assert 'DeliveryToHttpEndpoint_Records{DeliveryStreamName="tohttp"} 51' in metrics
    assert server.stop() == 0
    assert server.dump("tohttp") == []


def put_until_failed(tmp_path, ca, receiver, name, data, retry_s):
    """Puts one record to an HTTP endpoint stream that `receiver` does not accept
    and waits until it is under http-endpoint-failed; the server and the bucket."""
    server = start(tmp_path, ca)
    out = bucket(server)
    fh = server.client()
    make_stream(fh, name, HttpEndpointDestinationConfiguration=http_config(
        receiver.url, RetryOptions={"DurationInSeconds": retry_s}))
    fh.put_record(DeliveryStreamName=name, Record={"Data": data})
    wait_for(lambda: failed_records(out))
    return server, out


def test_failures_retry_with_the_same_request_id_then_go_to_s3(tmp_path, tls, receiver):
    receiver = receiver(mode="error")
    server, out = put_until_failed(tmp_path, tls[1], receiver, "flaky", b"never taken", retry_s=4)
    requests = receiver.requests
    # Waits of 1 s and 2 s (±15%), then what is left of the 4 s: four attempts.
    assert len(requests) == 4, [r["at"] - requests[0]["at"] for r in requests]
    assert len({r["body"]["requestId"] for r in requests}) == 1, "the same request id on every retry"
    [failed] = failed_records(out)
    assert base64.b64decode(failed["rawData"]) == b"never taken"
    assert failed["errorCode"] == "HttpEndpoint.DestinationException"
    assert failed["errorMessage"] == "the receiver says no", "the endpoint's own errorMessage"
    assert failed["attemptsMade"] == 4
    assert server.stop() == 0
    assert server.dump("flaky") == []


@pytest.mark.parametrize("mode, code", [
    ("413", "HttpEndpoint.PayloadTooLarge"),
    ("wrong-id", "HttpEndpoint.InvalidResponseFromDestination"),
    ("not-json", "HttpEndpoint.InvalidResponseFromDestination"),
])
def test_answers_that_are_not_success(tmp_path, tls, receiver, mode, code):
    receiver = receiver(mode=mode)
    server, out = put_until_failed(tmp_path, tls[1], receiver, "answers", b"x", retry_s=1)
    # 413 is permanent: one request. The others are retried within the second
    # (two or three requests, as the jitter falls).
    n_requests = len(receiver.requests)
    if mode == "413":
        assert n_requests == 1, n_requests
    else:
        assert n_requests >= 2, n_requests
    assert failed_records(out)[0]["errorCode"] == code
    assert server.stop() == 0


def test_all_data_backup_and_plain_http_only_when_allowed(tmp_path, receiver):
    receiver = receiver(secure=False)
    server = start(tmp_path)
    fh = server.client()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="plain", HttpEndpointDestinationConfiguration=http_config(
            receiver.url))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert server.stop() == 0
    server = Server(tmp_path / "data", extra_config="[http]\nallow_http = true\n").start()
    out = bucket(server)
    fh = server.client()
    s3 = dict(S3_CONFIG, Prefix="all/", BufferingHints=hints(1, 0))
    make_stream(fh, "plain", HttpEndpointDestinationConfiguration=http_config(
        receiver.url, S3BackupMode="AllData", S3Configuration=s3))
    fh.put_record(DeliveryStreamName="plain", Record={"Data": b"both places"})
    [request] = receiver.wait_for(1)
    assert base64.b64decode(request["body"]["records"][0]["data"]) == b"both places"
    [copy] = wait_for_objects(out)
    assert copy.startswith("all/") and KEY.match(copy)["stream"] == "plain"
    assert (out / copy).read_bytes() == b"both places"
    assert server.stop() == 0


def test_kill_9_while_the_receiver_flaps_loses_nothing(tmp_path, tls, receiver):
    ca = tls[1]
    receiver = receiver(mode="flap")
    server = start(tmp_path, ca)
    fh = server.client()
    make_stream(fh, "flapping", HttpEndpointDestinationConfiguration=http_config(
        receiver.url, RetryOptions={"DurationInSeconds": 600}))
    acked, unknown = [], []
    for iteration in range(5):
        kill_under_load(server, [("flapping", "p", acked)], random.uniform(0.3, 1.0), iteration, unknown,
                        make_payload=str.encode)
    receiver.mode = "ok"
    deadline = time.time() + 60
    while True:
        received = {base64.b64decode(r["data"]).decode()
                    for q in list(receiver.requests) for r in q["body"]["records"]}
        if set(acked) <= received or time.time() > deadline:
            break
        time.sleep(0.2)
    lost = set(acked) - received
    print(f"\nhttp crash report: acked={len(acked)} unknown={len(unknown)} requests={len(receiver.requests)} "
          f"lost={len(lost)}")
    assert not lost, sorted(lost)[:10]
    assert server.stop() == 0
