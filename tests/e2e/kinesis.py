"""kinesalite, the Kinesis API server the Kinesis-source tests read from (npm,
installed by `.ci/run` in tests/js), on a free loopback port with its data on disk.
On Node 20 it can crash when a client drops a connection mid-request (a kill -9 of
Sluice does that): a watchdog restarts it on the same port and data, and counts the
restarts, which are not Sluice failures."""

import subprocess
import threading
import time
import urllib.request

import boto3
from botocore.config import Config

from conftest import ROOT, free_port

KINESALITE = ROOT / "tests" / "js" / "node_modules" / ".bin" / "kinesalite"
REGION = "us-east-1"
ACCOUNT = "000000000000"


def arn(name):
    return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}"


class Kinesalite:
    def __init__(self, directory, create_stream_ms=0):
        self.directory = directory
        self.create_stream_ms = create_stream_ms
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = directory.parent / f"{directory.name}.log"
        self.proc = None
        self.restarts = 0
        self.paused = False
        self._stop = threading.Event()
        self._watchdog = None

    def start(self):
        self.proc = subprocess.Popen(
            [str(KINESALITE), "--port", str(self.port), "--path", str(self.directory),
             "--createStreamMs", str(self.create_stream_ms), "--deleteStreamMs", "0", "--updateStreamMs", "0", "--shardLimit", "100"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (400 for a bare GET)
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"kinesalite did not start: {self.log.read_text()}")
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, daemon=True)
            self._watchdog.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.2):
            if not self.paused and self.proc.poll() is not None:
                self.restarts += 1
                self.start()

    def down(self):
        """Stops it (the endpoint is unreachable) until `up`."""
        self.paused = True
        self.proc.terminate()
        self.proc.wait()

    def up(self):
        self.start()
        self.paused = False

    def stop(self):
        self._stop.set()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()

    def client(self):
        return boto3.client("kinesis", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="AKIDEXAMPLE",
                            aws_secret_access_key="secret", config=Config(retries={"max_attempts": 10, "mode": "standard"}))

    def create_stream(self, name, shards):
        client = self.client()
        client.create_stream(StreamName=name, ShardCount=shards)
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
        return client
