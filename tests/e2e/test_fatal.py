"""A failed fsync is fatal: the put that needed it is refused with 503, /health
fails, the process exits non-zero, and everything acknowledged before it survives.
Needs the binary built with `--features failpoints` (CI builds it)."""

import base64
import os
import time
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import ROOT, Server, make_stream

FAILPOINTS_BIN = Path(os.environ.get("SLUICE_FAILPOINTS_BIN", ROOT / "target" / "release" / "sluice-failpoints"))


@pytest.mark.skipif(not FAILPOINTS_BIN.exists() and not os.environ.get("CI"),
                    reason="build it with: cargo build --release -p sluice-server --features failpoints "
                           "&& cp target/release/sluice target/release/sluice-failpoints")
def test_a_failed_fsync_stops_the_server_and_loses_nothing_acknowledged(tmp_path):
    server = Server(tmp_path / "data", binary=FAILPOINTS_BIN, env={"SLUICE_FAIL_SYNCS_AFTER": "3"}).start()
    fh = server.client()
    make_stream(fh, "fragile")
    for i in range(3):
        fh.put_record(DeliveryStreamName="fragile", Record={"Data": f"acked-{i}".encode()})
    with pytest.raises(ClientError) as e:
        fh.put_record(DeliveryStreamName="fragile", Record={"Data": b"never-acked"})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["Error"]["Code"] == "ServiceUnavailableException"
    deadline = time.time() + 10
    while server.proc.poll() is None and time.time() < deadline:
        try:
            with urllib.request.urlopen(server.endpoint + "/health", timeout=1) as r:
                assert r.status != 200, "/health must not report healthy after a failed fsync"
        except urllib.error.HTTPError as failed:
            assert failed.code == 503
        except OSError:
            pass  # already gone
        time.sleep(0.05)
    assert server.proc.poll() not in (None, 0), "the process must exit non-zero"
    assert "fatal storage failure" in server.log.read_text()
    recovered = Server(tmp_path / "data").start()
    assert recovered.stop() == 0
    data = [base64.b64decode(r["data"]) for r in recovered.dump("fragile")]
    assert data[:3] == [b"acked-0", b"acked-1", b"acked-2"]
