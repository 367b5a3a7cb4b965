"""One `sluice serve --ephemeral` process on a free loopback port."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _binary():
    """The `sluice` this wheel installed beside the interpreter, else the PATH's."""
    scripts = Path(sys.executable).parent
    for candidate in (scripts / "sluice", scripts / "sluice.exe"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("sluice")
    if not found:
        raise RuntimeError("no `sluice` binary: install the sluice-firehose wheel")
    return found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SluiceServer:
    """A Sluice server for tests. Its data (and local buckets) live in a temporary
    directory that is removed when it stops."""

    def __init__(self, region="us-east-1", config="", binary=None):
        self.region = region
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="sluice-test-"))
        self.data_dir = self._dir / "data"
        self.log_path = self._dir / "sluice.log"
        # New streams are ACTIVE at once: tests need not wait for CREATING.
        (self._dir / "sluice.toml").write_text(f'transition_ms = 0\nregion = "{region}"\n' + config)
        self._binary = binary or _binary()
        self._proc = None

    def start(self, timeout=30):
        self._proc = subprocess.Popen(
            [self._binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
             "--config", str(self._dir / "sluice.toml")],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self._proc.returncode}: {self.logs()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"sluice did not answer /health within {timeout} s: {self.logs()}")
            time.sleep(0.02)

    def stop(self):
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(30)
        shutil.rmtree(self._dir, ignore_errors=True)

    def logs(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _call(self, method, path, timeout=120):
        request = urllib.request.Request(self.endpoint + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None

    def flush(self, stream=None, wait_s=60):
        """Delivers every buffered batch now (of one stream, or all) and returns what
        happened; raises if a delivery failed."""
        query = f"?wait_s={wait_s}" + (f"&stream={stream}" if stream else "")
        result = self._call("POST", "/_sluice/flush" + query, timeout=wait_s + 30)
        if not result.get("Delivered"):
            raise RuntimeError(f"flush did not deliver everything: {json.dumps(result)}")
        return result

    def reset(self, buckets=True):
        """Removes every stream (and, by default, every local bucket)."""
        return self._call("DELETE", "/_sluice/state" + ("?buckets=true" if buckets else ""))

    def create_bucket(self, name):
        """A local bucket `arn:aws:s3:::NAME` (a directory under the data directory)."""
        path = self.data_dir / "buckets" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def objects(self, bucket):
        """Every delivered object of a local bucket: {key: bytes}, keys sorted."""
        root = self.data_dir / "buckets" / bucket
        if not root.exists():
            return {}
        return {str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}

    def client(self, service="firehose", **kwargs):
        """A boto3 client for this server (needs boto3: `pip install sluice-firehose[testing]`)."""
        import boto3
        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id="test", aws_secret_access_key="test", **kwargs)

    @property
    def firehose(self):
        return self.client("firehose")

    @property
    def s3(self):
        """A boto3 S3 client for the server's own S3 API (its local buckets)."""
        from botocore.config import Config
        return self.client("s3", config=Config(s3={"addressing_style": "path"}))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
