"""HTTPS for the API (--tls-cert / --tls-key): boto3 verifying the server against a
test CA, and clients that do not trust it, or speak plain HTTP, turned away."""

import http.client
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import S3_CONFIG, free_port, sluice_binary, wait_active
from receiver import make_ca_and_cert


def test_boto3_over_https_with_a_test_ca(tmp_path):
    ca = make_ca_and_cert(tmp_path)
    port = free_port()
    config = tmp_path / "sluice.toml"
    config.write_text("transition_ms = 50\n[throttle]\nenabled = false\n[limits]\nheader_timeout_s = 2\n")
    log = open(tmp_path / "sluice.log", "ab")
    proc = subprocess.Popen([str(sluice_binary()), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                             str(tmp_path / "data"), "--config", str(config), "--tls-cert", str(tmp_path / "cert.pem"),
                             "--tls-key", str(tmp_path / "key.pem")], stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = f"https://127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=str(ca))
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/health", context=trusted, timeout=1) as r:
                    assert r.status == 200
                    break
            except (OSError, urllib.error.URLError):
                assert time.time() < deadline and proc.poll() is None, (tmp_path / "sluice.log").read_text()
                time.sleep(0.05)
        fh = boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1", verify=str(ca),
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                          config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        fh.create_delivery_stream(DeliveryStreamName="secure", ExtendedS3DestinationConfiguration=S3_CONFIG)
        wait_active(fh, "secure")
        assert fh.put_record(DeliveryStreamName="secure", Record={"Data": b"over tls"})["RecordId"]
        # `sluice health` with the server's options asks it over HTTPS.
        health = subprocess.run([str(sluice_binary()), "health", "--listen", f"127.0.0.1:{port}", "--tls-cert",
                                 str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")],
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
        untrusting = boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                                  config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        with pytest.raises(botocore.exceptions.SSLError):
            untrusting.list_delivery_streams()
        # Plain HTTP to the TLS port gets a TLS alert, not an HTTP answer.
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        # A handshake that never starts, and a TLS session that never sends a
        # request, are both closed by the header timeout.
        with socket.create_connection(("127.0.0.1", port)) as silent:
            silent.settimeout(15)
            assert silent.recv(1) == b""
        with trusted.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as idle:
            idle.settimeout(15)
            assert idle.recv(1) == b""
        assert fh.put_record(DeliveryStreamName="secure", Record={"Data": b"still"})["RecordId"]
        proc.terminate()
        assert proc.wait(30) == 0, "SIGTERM still stops cleanly"
    finally:
        if proc.poll() is None:
            proc.kill()
