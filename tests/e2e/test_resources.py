"""What operators run out of (issue 10): the back-pressure limit (it counts only
undelivered data, so a stream never wedges), a full data disk (503 "disk full",
/health 503, resuming without a restart), file descriptors (700 streams under a
soft limit of 1,024), and half-written objects (temporary files never inside a
bucket, after kill -9 or failed writes). And batch uuids differ between
installations."""

import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from botocore.exceptions import ClientError

from conftest import S3_CONFIG, Server, make_stream, wait_active
from test_crash import produce
from test_delivery import KEY, bucket, hints, objects, wait_for_objects
from test_fatal import FAILPOINTS_BIN
from test_restore import delivered, put_numbered, wait_delivered

LATER = dict(S3_CONFIG, BucketARN="arn:aws:s3:::later", BufferingHints=hints(1, 0))


def health(server):
    try:
        with urllib.request.urlopen(server.endpoint + "/health", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_until(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def no_temporary_files(server):
    tmp = server.data_dir / "buckets" / ".sluice-tmp"
    return not tmp.exists() or not os.listdir(tmp)


def test_a_stream_at_its_limit_takes_as_much_again_once_delivered(tmp_path):
    # One 64 MiB segment holds everything: before the fix its delivered bytes kept
    # counting against the 16 MiB limit, and the stream refused every put for good.
    server = Server(tmp_path / "data", segment_mib=64,
                    extra_config="[limits]\nbuffer_mib_per_stream_max = 16\n").start()
    fh = server.client()
    make_stream(fh, "bounded", ExtendedS3DestinationConfiguration=LATER)
    record = b"b" * 65536

    def put_calls(tag, n_calls, until_refused=False):
        """Puts `n_calls` 1 MiB calls (or until the limit refuses one); returns the
        ids acknowledged."""
        ids = []
        for call in range(n_calls):
            names = [f"{tag}-{call}-{i}" for i in range(16)]
            try:
                fh.put_record_batch(DeliveryStreamName="bounded",
                                    Records=[{"Data": name.encode() + b"|" + record + b"\n"} for name in names])
            except ClientError as e:
                assert until_refused, f"call {call} of {n_calls} refused: {e.response['Error']}"
                assert e.response["Error"]["Code"] == "ServiceUnavailableException"
                assert "holding" in e.response["Error"]["Message"]
                return ids
            ids += names
        assert not until_refused, "the 16 MiB limit never refused a put"
        return ids

    # The bucket is missing: the stream fills up to its limit.
    first = put_calls("first", 64, until_refused=True)
    n_calls = len(first) // 16
    assert 12 <= n_calls <= 16, n_calls
    wait_delivered(bucket(server, "later"), first)
    again = put_calls("again", n_calls)
    wait_delivered(bucket(server, "later"), first + again)
    assert server.stop() == 0
    server.start()
    third = put_calls("third", n_calls)
    wait_delivered(bucket(server, "later"), first + again + third)
    assert server.stop() == 0


@contextmanager
def tmpfs(path, size_mib):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def put_until_disk_full(fh, stream, acked, size=60_000, timeout=60):
    """Puts until one is refused for lack of space; returns the refusal's message."""
    deadline = time.time() + timeout
    n = len(acked)
    while time.time() < deadline:
        names = [f"{stream}:{n + i}" for i in range(10)]
        n += len(names)
        try:
            fh.put_record_batch(DeliveryStreamName=stream,
                                Records=[{"Data": f"{name}|{'d' * size}\n".encode()} for name in names])
            acked.extend(names)
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert e.response["Error"]["Code"] == "ServiceUnavailableException"
            return e.response["Error"]["Message"]
    raise AssertionError("the disk never filled")


def test_a_log_that_fills_its_disk_frees_it_by_delivering_and_resumes(tmp_path):
    """The log alone fills the data disk (its bucket is on another filesystem and
    missing); once the bucket exists delivery records its progress in place,
    frees the segments, and puts resume, without a restart."""
    elsewhere = tmp_path / "buckets-elsewhere"
    elsewhere.mkdir()
    with tmpfs(tmp_path / "data", 24) as data:
        (data / "buckets").symlink_to(elsewhere)
        server = Server(data).start()
        fh = server.client()
        make_stream(fh, "filling", ExtendedS3DestinationConfiguration=LATER)
        acked = []
        message = put_until_disk_full(fh, "filling", acked)
        assert "disk full" in message, message
        status, body = health(server)
        assert status == 503 and "disk full" in body, (status, body)
        (elsewhere / "later").mkdir()
        wait_until(lambda: health(server)[0] == 200, 90, "/health to report ok again")
        more = put_numbered(fh, "filling", 20, tag="after")[0]
        wait_delivered(elsewhere / "later", acked + more, timeout=90)
        assert server.stop() == 0
        assert no_temporary_files(server)


def test_a_disk_filled_by_something_else_refuses_puts_until_space_returns(tmp_path):
    with tmpfs(tmp_path / "data", 48) as data:
        server = Server(data).start()
        fh = server.client()
        out = bucket(server)
        make_stream(fh, "squeezed", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
        acked = put_numbered(fh, "squeezed", 200)[0]
        filler = data / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        message = put_until_disk_full(fh, "squeezed", acked)
        assert "disk full" in message
        assert health(server)[0] == 503
        filler.unlink()
        wait_until(lambda: health(server)[0] == 200, 60, "/health to report ok again")
        more = put_numbered(fh, "squeezed", 50, tag="after")[0]
        wait_delivered(out, acked + more, timeout=120)
        assert server.stop() == 0
        assert no_temporary_files(server)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_700_streams_under_a_soft_limit_of_1024(tmp_path):
    # Hard limit 1,024 too: raising the soft limit cannot help, only not holding
    # descriptors for idle streams does.
    server = Server(tmp_path / "data", fd_limit=(1024, 1024)).start()
    fh = server.client()
    out = bucket(server)
    names = [f"s{i:03}" for i in range(700)]
    for name in names:
        fh.create_delivery_stream(DeliveryStreamName=name,
                                  ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    wait_active(fh, names[-1])
    local = threading.local()
    failures, peak = [], [0]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], fds(server.proc.pid))
            time.sleep(0.01)

    def put(name):
        if not hasattr(local, "client"):
            local.client = server.client()
        try:
            local.client.put_record(DeliveryStreamName=name, Record={"Data": f"{name}|first\n".encode()})
        except ClientError as e:
            failures.append((name, e.response["Error"]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    wait_until(lambda: len(objects(out)) >= 700, 120, "700 objects")
    sampling.set()
    sampler.join()
    assert not failures, failures[:5]
    assert sorted(delivered(out)) == names
    assert peak[0] < 400, f"{peak[0]} descriptors open at the peak"
    log = server.log.read_text()
    assert "Accepting a connection failed" not in log and "Too many open files" not in log
    assert server.stop() == 0

    # With room under the hard limit, the soft limit is raised to it at start.
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if hard > 1024:
        raised = Server(tmp_path / "raised", fd_limit=(1024, hard)).start()
        with open(f"/proc/{raised.proc.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
        assert raised.stop() == 0


def test_kill_9_during_local_delivery_leaves_nothing_but_objects_in_the_bucket(tmp_path):
    server = Server(tmp_path / "data").start()
    out = bucket(server)
    tmp = server.data_dir / "buckets" / ".sluice-tmp"
    client = server.client()
    # Objects of several MiB: a kill often lands while one is being written.
    make_stream(client, "big", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(4, 1)))
    acked, unknown = [], []
    rng = random.Random(11)
    n_interrupted = 0

    def large(record_id):
        return f"{record_id}|{'L' * 20_000}\n".encode()

    for iteration in range(int(os.environ.get("SLUICE_TMP_CRASH_ITERATIONS", "8"))):
        stop = threading.Event()
        threads = [threading.Thread(target=produce, args=(server, "big", str(p), iteration, acked, unknown, stop, large))
                   for p in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        server.kill()
        stop.set()
        for t in threads:
            t.join()
        # Whatever the kill interrupted is outside the bucket, and gone after start-up.
        assert all(KEY.match(k) for k in objects(out)), [k for k in objects(out) if not KEY.match(k)]
        interrupted = set(os.listdir(tmp)) if tmp.exists() else set()
        n_interrupted += len(interrupted)
        server.start()
        assert not interrupted & set(os.listdir(tmp)), "start-up removes interrupted writes"
    assert server.stop() == 0
    assert no_temporary_files(server)
    assert all(KEY.match(k) for k in objects(out))
    seen = delivered(out)
    assert not [i for i, n in seen.items() if n > 1], "no record in two objects"
    left = {r["seq"] for r in server.dump("big")}
    assert len(seen) + len(left) >= len(acked)
    print(f"\ntemporary files of interrupted writes: {n_interrupted}, all outside the bucket and removed at start")


@pytest.mark.skipif(not FAILPOINTS_BIN.exists() and not os.environ.get("CI"), reason="needs the failpoints build")
def test_failing_object_writes_leave_no_temporary_files(tmp_path):
    server = Server(tmp_path / "data", binary=FAILPOINTS_BIN, env={"SLUICE_FAIL_OBJECT_WRITES_EVERY": "3"}).start()
    out = bucket(server)
    fh = server.client()
    make_stream(fh, "flaky", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
    acked = []
    for call in range(12):
        names = [f"flaky-{call}-{i}" for i in range(20)]
        fh.put_record_batch(DeliveryStreamName="flaky", Records=[{"Data": f"{n}|\n".encode()} for n in names])
        acked += names
        time.sleep(0.3)
    wait_delivered(out, acked, timeout=120)
    assert all(KEY.match(k) for k in objects(out)), objects(out)
    assert no_temporary_files(server)
    assert "Delivery to S3 failed; retrying" in server.log.read_text(), "writes did fail"
    assert server.stop() == 0


def test_two_fresh_installations_name_the_same_batch_differently(tmp_path):
    uuids = []
    for name in ("one", "two"):
        server = Server(tmp_path / name).start()
        out = bucket(server)
        make_stream(server.client(), "same", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)))
        server.client().put_record(DeliveryStreamName="same", Record={"Data": b"the same first record\n"})
        [key] = wait_for_objects(out)
        uuids.append(KEY.match(key)["uuid"])
        assert (server.data_dir / "installation").read_text().startswith("sluice-installation v1\n")
        assert server.stop() == 0
    assert uuids[0] != uuids[1], uuids
