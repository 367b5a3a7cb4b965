"""kill -9 under concurrent PutRecordBatch load, again and again; afterwards every
record whose put was acknowledged must be in the log, intact and in order per
producer. Prints the reliability report block."""

import base64
import os
import random
import threading
import time

from conftest import Server, make_stream

ITERATIONS = int(os.environ.get("SLUICE_CRASH_ITERATIONS", "20"))
STREAMS = ["crash-a", "crash-b", "crash-c"]
PRODUCERS_PER_STREAM = 2


def payload(record_id: str) -> bytes:
    # Derived from the id, so damage to any byte is caught.
    return (record_id + "|" + record_id[::-1] * (1 + hash(record_id) % 7)).encode()


def produce(server, stream, producer, iteration, acked, unknown, stop, make_payload=payload):
    client = server.client()
    n = 0
    while not stop.is_set():
        ids = [f"{iteration}:{producer}:{n + i}" for i in range(random.randint(1, 100))]
        n += len(ids)
        try:
            out = client.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": make_payload(i)} for i in ids])
        except Exception:  # the server was killed mid-request: outcome unknown
            unknown.extend(ids)
            return
        assert out["FailedPutCount"] == 0
        acked.extend(ids)


def kill_under_load(server, producers, pause_s, iteration, unknown, make_payload=payload):
    """Runs one producer thread per `(stream, name, acked list)`, kills the server with
    SIGKILL after `pause_s`, restarts it, and returns the restart time in ms."""
    stop = threading.Event()
    threads = [threading.Thread(target=produce, args=(server, s, name, iteration, acked, unknown, stop, make_payload))
               for s, name, acked in producers]
    for t in threads:
        t.start()
    time.sleep(pause_s)
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    started = time.time()
    server.start()
    return (time.time() - started) * 1000


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(int(os.environ.get("SLUICE_CRASH_SEED", "1")))
    server = Server(tmp_path / "data").start()
    client = server.client()
    for s in STREAMS:
        make_stream(client, s)
    acked = {(s, p): [] for s in STREAMS for p in range(PRODUCERS_PER_STREAM)}
    unknown = []
    restart_ms = []
    for iteration in range(ITERATIONS):
        producers = [(s, f"{s}/{p}", acked[(s, p)]) for (s, p) in acked]
        restart_ms.append(kill_under_load(server, producers, rng.uniform(0.2, 1.2), iteration, unknown))
    assert server.stop() == 0

    n_acked = sum(len(v) for v in acked.values())
    n_delivered = n_lost = n_phantom = 0
    for stream in STREAMS:
        records = server.dump(stream)
        seqs = [r["seq"] for r in records]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        position = {}
        for index, r in enumerate(records):
            data = base64.b64decode(r["data"]).decode()
            record_id = data.split("|", 1)[0]
            assert payload(record_id).decode() == data, f"record {record_id} is damaged"
            position[record_id] = index
        n_delivered += len(records)
        unknown_here = set(unknown)
        for (s, _), ids in acked.items():
            if s != stream:
                continue
            missing = [i for i in ids if i not in position]
            n_lost += len(missing)
            assert not missing, f"{len(missing)} acknowledged records lost from {stream}, e.g. {missing[:5]}"
            order = [position[i] for i in ids]
            assert order == sorted(order), f"acknowledged records of a producer out of order in {stream}"
        acked_here = {i for (s, _), ids in acked.items() if s == stream for i in ids}
        phantoms = [i for i in position if i not in acked_here and i not in unknown_here]
        n_phantom += len(phantoms)
        assert not phantoms, f"records in the log that were never sent: {phantoms[:5]}"
    assert n_acked > ITERATIONS * 10, "the load generator acknowledged too little to prove anything"
    restart_ms.sort()
    print(f"\ncrash report: iterations={ITERATIONS} acked={n_acked} unknown={len(unknown)} "
          f"in_log={n_delivered} lost={n_lost} phantom={n_phantom} "
          f"restart_to_healthy_ms p50={restart_ms[len(restart_ms) // 2]:.0f} max={restart_ms[-1]:.0f}")


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(tmp_path):
    server = Server(tmp_path / "data").start()
    client = server.client()
    make_stream(client, "graceful")
    acked, unknown = [], []
    stop = threading.Event()
    threads = [threading.Thread(target=produce, args=(server, "graceful", f"p{p}", 0, acked, unknown, stop))
               for p in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert server.stop() == 0, server.log.read_text()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 0
    records = server.dump("graceful")
    in_log = {base64.b64decode(r["data"]).decode().split("|", 1)[0] for r in records}
    missing = [i for i in acked if i not in in_log]
    assert not missing, f"{len(missing)} acknowledged records lost in a graceful shutdown"
