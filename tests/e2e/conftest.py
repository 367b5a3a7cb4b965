"""Fixtures that run the real `sluice` binary on a free loopback port with a
temporary data directory, and clients pointed at it."""

import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
CMK_ENABLED = "arn:aws:kms:us-east-1:000000000000:key/11111111-1111-1111-1111-111111111111"
CMK_DISABLED = "arn:aws:kms:us-east-1:000000000000:key/22222222-2222-2222-2222-222222222222"
TRANSITION_MS = 100


def sluice_binary() -> Path:
    if os.environ.get("SLUICE_BIN"):
        return Path(os.environ["SLUICE_BIN"])
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "sluice"
        if candidate.exists():
            return candidate
    raise RuntimeError("build sluice first: cargo build --release")


def free_port() -> int:
    """A loopback port free now, below Linux's ephemeral range (32768 and up): the
    OS hands ports from that range to outgoing connections too, so a server killed
    and restarted on its port could otherwise find it taken."""
    start = random.randrange(12_000)
    for step in range(12_000):
        port = 20_000 + (start + step) % 12_000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000..32000")


class Server:
    """One sluice process; can be killed and restarted on the same data dir."""

    def __init__(self, data_dir: Path, extra_config: str = "", binary: Path = None, env: dict = None,
                 transition_ms: int = TRANSITION_MS, throttle: bool = False, listen_host: str = "127.0.0.1",
                 segment_mib: int = 4, fd_limit: tuple = None):
        self.binary = binary or sluice_binary()
        self.env = dict(os.environ, **(env or {}))
        self.data_dir = data_dir
        self.port = free_port()
        self.listen_host = listen_host
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # Every node's endpoint (one here; a cluster has several).
        self.endpoints = [self.endpoint]
        self.data_dirs = [data_dir]
        self.record_dirs = [data_dir]
        self.config = data_dir.parent / f"{data_dir.name}.toml"
        self.config.write_text(
            f"transition_ms = {transition_ms}\n"
            f"[wal]\nsegment_mib_max = {segment_mib}\n"
            "[[encryption.keys]]\n"
            f'arn = "{CMK_ENABLED}"\nkey_hex = "{"ab" * 32}"\n'
            "[[encryption.keys]]\n"
            f'arn = "{CMK_DISABLED}"\nkey_hex = "{"cd" * 32}"\nenabled = false\n'
            # Firehose's throughput limits are on by default; the load and crash
            # tests put far more than 5 MiB/s, so only the throttling tests keep them.
            + ("" if throttle else "[throttle]\nenabled = false\n")
            + extra_config
        )
        self.configs = [self.config]
        self.proc = None
        self.log = data_dir.parent / f"{data_dir.name}.log"
        # (soft, hard) open-file limits the process starts with.
        self.fd_limit = fd_limit

    def start(self):
        limit = self.fd_limit

        def limit_fds():
            if limit:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, limit)

        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--listen", f"{self.listen_host}:{self.port}",
             "--data-dir", str(self.data_dir), "--config", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env, preexec_fn=limit_fds,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sluice did not become healthy")

    def logs(self) -> str:
        return self.log.read_text()

    def stop(self, timeout=30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def client(self, region="us-east-1", validate=True, access_key_id="AKIDEXAMPLE"):
        return boto3.client(
            "firehose", endpoint_url=self.endpoint, region_name=region,
            aws_access_key_id=access_key_id, aws_secret_access_key="secret",
            config=Config(parameter_validation=validate, retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    def dump(self, stream=None, region="us-east-1", log=None):
        which = ["--log", str(log)] if log else ["--region", region, stream]
        out = subprocess.run(
            [str(sluice_binary()), "dump", "--data-dir", str(self.data_dir), "--config", str(self.config), *which],
            check=True, capture_output=True, text=True, env=self.env,
        ).stdout
        import json
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def backend():
    """Which log the test's server uses; modules with `BACKENDS` parametrise it."""
    return "embedded"


@pytest.fixture
def server(request, backend, tmp_path):
    s = start_backend(request, tmp_path)
    yield s
    try:
        if s.proc.poll() is None:
            assert s.stop() == 0, s.log.read_text()
    finally:
        if hasattr(s, "close"):
            s.close()


@pytest.fixture
def fh(server):
    return server.client()


S3_CONFIG = {"RoleARN": "arn:aws:iam::000000000000:role/firehose", "BucketARN": "arn:aws:s3:::bucket"}


def wait_active(client, name, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        d = client.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
        if d["DeliveryStreamStatus"] == "ACTIVE":
            return d
        time.sleep(0.02)
    raise AssertionError(f"{name} never became ACTIVE")


def make_stream(client, name, **kwargs):
    kwargs.setdefault("ExtendedS3DestinationConfiguration", S3_CONFIG)
    client.create_delivery_stream(DeliveryStreamName=name, **kwargs)
    return wait_active(client, name)


# Cluster mode (issue 11): modules that set `BACKENDS = ("embedded", "cluster")` run
# their `server` tests against three Sluice nodes on a three-node NATS cluster too;
# a test marked `embedded_only` (with its reason) stays on one node.
def pytest_configure(config):
    config.addinivalue_line("markers", "embedded_only(reason): a test of what only the embedded log does")


def pytest_generate_tests(metafunc):
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("embedded_only"):
        metafunc.parametrize("backend", backends)


@pytest.fixture(scope="session")
def nats(tmp_path_factory):
    from cluster import NatsCluster
    cluster = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    yield cluster
    cluster.stop()


def start_backend(request, tmp_path, **server_args):
    """One server for the test's backend: a single node, or a cluster of three."""
    backend = request.getfixturevalue("backend")
    if backend == "embedded":
        return Server(tmp_path / "data", **server_args).start()
    from cluster import SluiceCluster
    return SluiceCluster(tmp_path / "cluster", request.getfixturevalue("nats"), **server_args).start()
