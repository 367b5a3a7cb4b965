"""SigV4 verification (issue 5, first part) through real clients: boto3 and the aws
CLI with right and wrong keys, requests signed here with a chosen service, region
and clock, tampered bodies, unsigned requests, per-key policies, and the refusal to
serve a non-loopback address with no keys."""

import datetime
import hashlib
import hmac
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request

import boto3
import botocore
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import Server, free_port, make_stream, sluice_binary

AUTH = """
[auth]
regions = ["us-east-1", "eu-west-1"]
[[auth.keys]]
access_key_id = "AKIDGOOD"
secret_access_key = "good-secret"
[[auth.keys]]
access_key_id = "AKIDPUTONLY"
secret_access_key_env = "SLUICE_TEST_PUT_SECRET"
operations = ["PutRecord", "PutRecordBatch", "DescribeDeliveryStream"]
streams = ["events"]
"""


@pytest.fixture
def secured(tmp_path):
    server = Server(tmp_path / "data", extra_config=AUTH, env={"SLUICE_TEST_PUT_SECRET": "put-secret"}).start()
    yield server
    server.stop()


def client(server, key="AKIDGOOD", secret="good-secret", region="us-east-1", **config):
    return boto3.client("firehose", endpoint_url=server.endpoint, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config))


def error_of(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"], \
        e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def signature(secret, amz_date, canonical, region="us-east-1", service="firehose"):
    """SigV4's signature of a canonical request."""
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()


def send(request):
    """(status, parsed body) of a request, error or not."""
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sign(server, target, body, key, secret, service="firehose", region="us-east-1", when=None, send_body=None):
    """Signs a Firehose request by hand (SigV4, header form) and sends it; returns
    (status, parsed body)."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    host = server.endpoint.removeprefix("http://")
    headers = {"content-type": "application/x-amz-json-1.1", "host": host, "x-amz-date": amz_date,
               "x-amz-target": f"Firehose_20150804.{target}"}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["POST", "/", "", "".join(f"{h}:{headers[h]}\n" for h in sorted(headers)), signed,
                           hashlib.sha256(body).hexdigest()])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, "
                                f"Signature={signature(secret, amz_date, canonical, region, service)}")
    return send(urllib.request.Request(server.endpoint + "/", data=send_body or body, headers=headers, method="POST"))


def test_signed_requests_from_boto3_pass_and_bad_ones_get_aws_errors(secured):
    good = client(secured)
    make_stream(good, "events")
    good.put_record(DeliveryStreamName="events", Record={"Data": b"signed"})
    assert client(secured, region="eu-west-1").list_delivery_streams()["DeliveryStreamNames"] == []
    code, message, status = error_of(lambda: client(secured, secret="wrong").put_record(
        DeliveryStreamName="events", Record={"Data": b"x"}))
    assert (code, status) == ("InvalidSignatureException", 400)
    assert message.startswith("The request signature we calculated does not match the signature you provided.")
    assert error_of(lambda: client(secured, key="AKIDNOBODY").list_delivery_streams())[:2] == (
        "UnrecognizedClientException", "The security token included in the request is invalid.")
    code, message, _ = error_of(lambda: client(secured, region="ap-south-1").list_delivery_streams())
    assert code == "InvalidSignatureException" and "valid region" in message
    unsigned = client(secured, signature_version=botocore.UNSIGNED)
    assert error_of(lambda: unsigned.list_delivery_streams())[0] == "MissingAuthenticationTokenException"
    with urllib.request.urlopen(secured.endpoint + "/metrics") as r:
        metrics = r.read().decode()
    assert 'IncomingRecords{DeliveryStreamName="events"} 1' in metrics, "a refused put appends nothing"


def test_hand_signed_requests_service_clock_and_tampering(secured):
    body = json.dumps({"DeliveryStreamName": "x"}).encode()
    status, answer = sign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret", service="kinesis")
    assert (status, answer["__type"]) == (400, "InvalidSignatureException") and "'firehose'" in answer["message"]
    late = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=6)
    status, answer = sign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret", when=late)
    assert answer["__type"] == "InvalidSignatureException" and answer["message"].startswith("Signature expired: ")
    early = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=6)
    status, answer = sign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret", when=early)
    assert answer["message"].startswith("Signature not yet current: ")
    tampered = json.dumps({"DeliveryStreamName": "y"}).encode()
    status, answer = sign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret", send_body=tampered)
    assert answer["__type"] == "InvalidSignatureException"
    status, answer = sign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret")
    assert answer["__type"] == "ResourceNotFoundException", "a correct signature reaches the operation"


def test_key_policies_limit_operations_and_streams(secured):
    make_stream(client(secured), "events")
    make_stream(client(secured), "other")
    put_only = client(secured, key="AKIDPUTONLY", secret="put-secret")
    put_only.put_record(DeliveryStreamName="events", Record={"Data": b"allowed"})
    code, message, status = error_of(lambda: put_only.put_record(DeliveryStreamName="other", Record={"Data": b"x"}))
    assert (code, status) == ("AccessDeniedException", 400)
    assert message == ("User: AKIDPUTONLY is not authorized to perform: firehose:PutRecord on resource: "
                       "arn:aws:firehose:us-east-1:000000000000:deliverystream/other")
    assert error_of(lambda: put_only.delete_delivery_stream(DeliveryStreamName="events"))[0] == "AccessDeniedException"
    assert error_of(lambda: put_only.list_delivery_streams())[0] == "AccessDeniedException"


def test_the_aws_cli_with_right_and_wrong_keys(secured):
    def cli(key, secret):
        env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                   AWS_MAX_ATTEMPTS="1")
        return subprocess.run(["aws", "firehose", "list-delivery-streams", "--endpoint-url", secured.endpoint],
                              env=env, capture_output=True, text=True)
    ok = cli("AKIDGOOD", "good-secret")
    assert ok.returncode == 0 and json.loads(ok.stdout)["DeliveryStreamNames"] == [], ok.stderr
    wrong = cli("AKIDGOOD", "bad-secret")
    assert wrong.returncode != 0 and "InvalidSignatureException" in wrong.stderr, wrong.stderr


def test_no_keys_and_a_non_loopback_address_refuses_to_start(tmp_path):
    out = subprocess.run([str(sluice_binary()), "serve", "--listen", f"0.0.0.0:{free_port()}", "--data-dir",
                          str(tmp_path / "data")], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--allow-anonymous" in out.stderr, out.stderr


def test_keys_on_a_non_loopback_address_admit_only_signed_requests(tmp_path):
    server = Server(tmp_path / "data", extra_config=AUTH, env={"SLUICE_TEST_PUT_SECRET": "put-secret"},
                    listen_host="0.0.0.0").start()
    try:
        good = client(server)
        make_stream(good, "events")
        assert good.put_record(DeliveryStreamName="events", Record={"Data": b"ok"})["RecordId"]
        unsigned = client(server, signature_version=botocore.UNSIGNED)
        assert error_of(lambda: unsigned.put_record(DeliveryStreamName="events", Record={"Data": b"x"}))[0] == \
            "MissingAuthenticationTokenException"
        assert error_of(lambda: client(server, key="AKIDNOBODY").list_delivery_streams())[0] == \
            "UnrecognizedClientException"
        assert error_of(lambda: client(server, secret="wrong").put_record(
            DeliveryStreamName="events", Record={"Data": b"x"}))[0] == "InvalidSignatureException"
    finally:
        assert server.stop() == 0
    assert [r["data"] for r in server.dump("events")] == ["b2s="], "only the signed put was stored"


def presign(server, target, body, key, secret, expires=60, when=None):
    """Sends a request signed in SigV4's presigned (query-string) form."""
    from urllib.parse import quote
    when = when or datetime.datetime.now(datetime.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    host = server.endpoint.removeprefix("http://")
    target_header = f"Firehose_20150804.{target}"
    params = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{key}/{amz_date[:8]}/us-east-1/firehose/aws4_request",
              "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host;x-amz-target"}
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
    canonical = "\n".join(["POST", "/", query, f"host:{host}\nx-amz-target:{target_header}\n", "host;x-amz-target",
                           hashlib.sha256(body).hexdigest()])
    url = f"{server.endpoint}/?{query}&X-Amz-Signature={signature(secret, amz_date, canonical)}"
    return send(urllib.request.Request(url, data=body, method="POST", headers={
        "x-amz-target": target_header, "content-type": "application/x-amz-json-1.1"}))


def test_presigned_requests(secured):
    body = json.dumps({"DeliveryStreamName": "nope"}).encode()
    status, answer = presign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret")
    assert answer["__type"] == "ResourceNotFoundException", answer
    status, answer = presign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "bad-secret")
    assert answer["__type"] == "InvalidSignatureException", answer
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    status, answer = presign(secured, "DescribeDeliveryStream", body, "AKIDGOOD", "good-secret", expires=10, when=old)
    assert answer["__type"] == "InvalidSignatureException" and answer["message"].startswith("Signature expired: ")


def test_unsigned_and_unknown_key_requests_are_refused_before_their_body(secured):
    """A request the signature checks can refuse from its headers alone is answered
    at once: its body (here never sent) is not waited for nor held."""
    port = int(secured.endpoint.rsplit(":", 1)[1])
    amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    unknown = (f"Authorization: AWS4-HMAC-SHA256 Credential=AKIDNOBODY/{amz_date[:8]}/us-east-1/firehose/aws4_request, "
               f"SignedHeaders=host;x-amz-date, Signature=00\r\nX-Amz-Date: {amz_date}\r\n")
    for extra, expected in [("", "MissingAuthenticationTokenException"), (unknown, "UnrecognizedClientException")]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall((f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: Firehose_20150804.PutRecord\r\n"
                       f"Content-Type: application/x-amz-json-1.1\r\n{extra}Content-Length: 1000000\r\n\r\n").encode())
            answer = s.recv(65536)  # the body is never sent; a server waiting for it would time out here
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer[:200]
        assert json.loads(payload)["__type"] == expected
