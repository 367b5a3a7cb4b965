"""Sluice as a drop-in for tests (issue 12): `sluice health`, `serve --ephemeral`,
and the hint logged once when a stream's bucket is missing."""

import os
import signal
import subprocess
import time
import urllib.request

from conftest import free_port, make_stream, sluice_binary


def health(*args, env=None):
    return subprocess.run([str(sluice_binary()), "health", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=30)


def test_health_exits_0_for_a_healthy_server_and_1_otherwise(server):
    ok = health("--endpoint", server.endpoint)
    assert ok.returncode == 0, ok.stderr
    # The default is the address `serve` would listen on, from SLUICE_LISTEN.
    ok = health(env={"SLUICE_LISTEN": f"0.0.0.0:{server.port}"})
    assert ok.returncode == 0, ok.stderr
    down = health("--endpoint", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "unhealthy" in down.stderr
    # Something answering, but not 200.
    wrong = health("--endpoint", server.endpoint + "/nothing-here")
    assert wrong.returncode == 1
    assert "404" in wrong.stderr


def test_ephemeral_keeps_data_in_a_directory_removed_on_exit(tmp_path):
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    log = tmp_path / "sluice.log"
    proc = subprocess.Popen([str(sluice_binary()), "serve", "--ephemeral", "--listen", f"127.0.0.1:{port}"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.05)
        dirs = [p for p in tmp_path.iterdir() if p.name.startswith("sluice-ephemeral-")]
        assert len(dirs) == 1, list(tmp_path.iterdir())
        assert (dirs[0] / "catalog").exists() or any(dirs[0].iterdir()), "the server keeps its data there"
        assert not (tmp_path / "sluice-data").exists(), "not in the default data directory"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert not dirs[0].exists(), "removed on exit"
    # --ephemeral and --data-dir contradict each other.
    both = subprocess.run([str(sluice_binary()), "serve", "--ephemeral", "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=30)
    assert both.returncode != 0 and "cannot be used with" in both.stderr


def test_a_missing_bucket_is_logged_once_per_stream_with_the_command_that_creates_it(server, fh):
    from conftest import S3_CONFIG
    for name in ("a", "b"):
        make_stream(fh, name, ExtendedS3DestinationConfiguration=dict(
            S3_CONFIG, BucketARN="arn:aws:s3:::absent", BufferingHints={"SizeInMBs": 1, "IntervalInSeconds": 0}))
        fh.put_record(DeliveryStreamName=name, Record={"Data": b"x\n"})
    # Retries come every second or so at first: wait for several.
    deadline = time.time() + 30
    while server.logs().count("Delivery to S3 failed; retrying.") < 6 and time.time() < deadline:
        time.sleep(0.2)
    logs = server.logs()
    assert logs.count("Delivery to S3 failed; retrying.") >= 6, logs
    hints = [line for line in logs.splitlines() if "does not exist; delivery retries until it does" in line]
    assert len(hints) == 2, hints
    assert all(f"aws --endpoint-url {server.endpoint} s3 mb s3://absent" in line for line in hints), hints
    assert all(f"mkdir -p '{server.data_dir / 'buckets' / 'absent'}'" in line for line in hints), hints
