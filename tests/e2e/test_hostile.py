"""Hostile input under concurrent load (issue 5): oversized bodies (refused with
413 before they are read; 8 MiB for puts, 1 MiB for other operations), malformed
and deeply nested JSON, JSON-tree bombs, and truncated requests, sent from many threads while real puts continue; the server
keeps answering, its resident memory stays bounded, and nothing refused reaches the
log."""

import base64
import json
import socket
import threading
import time
import urllib.request

from conftest import Server, make_stream

TARGET = "Firehose_20150804.PutRecordBatch"
CREATE = "Firehose_20150804.CreateDeliveryStream"
# Control-plane bodies become a JSON tree about ten times their size: a megabyte of
# empty arrays is the worst case within their 1 MiB limit.
TREE_BOMB = b'{"DeliveryStreamName":"victim","Tags":[' + b",".join([b"[]"] * 349_000) + b"]}"


def raw_request(port, body, declared=None, target=TARGET, close_early=False):
    """Sends one request over a raw socket; returns the status line (or '' if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
                f"X-Amz-Target: {target}\r\nContent-Length: {declared if declared is not None else len(body)}\r\n\r\n")
        try:
            s.sendall(head.encode() + body)
        except OSError:
            pass  # the server answered and closed before reading the body: read its answer
        if close_early:
            return ""
        try:
            return s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
        except OSError:
            return ""


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def run_for(seconds, server, workers):
    """Runs `workers` (functions looping until the event they get is set) for
    `seconds` while sampling the server's resident memory; the peak, in KiB."""
    stop, peak = threading.Event(), [0]

    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(server.proc.pid))
            time.sleep(0.02)

    threads = [threading.Thread(target=w, args=(stop,)) for w in workers] + [threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return peak[0]


def test_hostile_requests_under_load_leave_the_server_answering(tmp_path):
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "victim")
    statuses, acked = [], []
    huge = b"x" * (9 << 20)
    nested = b'{"DeliveryStreamName":"victim","Records":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    attacks = [
        lambda: raw_request(server.port, huge),                                   # over 8 MiB: 413 unread
        lambda: raw_request(server.port, b"", declared=1 << 30),                  # claims 1 GiB
        lambda: raw_request(server.port, b'{"DeliveryStreamName": "victim", "Records": [{"Data": '),
        lambda: raw_request(server.port, nested),                                 # 100,000 levels deep
        lambda: raw_request(server.port, b"{" * 10, declared=1000, close_early=True),  # truncated body
        lambda: raw_request(server.port, json.dumps(
            {"DeliveryStreamName": "victim", "Records": [{"Data": "!!not base64"}]}).encode()),
        lambda: raw_request(server.port, TREE_BOMB, target=CREATE),                # within 1 MiB: 400
        lambda: raw_request(server.port, b"[]" * (1 << 20), target=CREATE),       # 2 MiB control body: 413
    ]

    def attacker(i):
        def attack(stop):
            while not stop.is_set():
                statuses.append((i % len(attacks), attacks[i % len(attacks)]()))
        return attack

    def producer(stop):
        client = server.client()
        n = 0
        while not stop.is_set():
            data = f"good-{n}".encode()
            client.put_record(DeliveryStreamName="victim", Record={"Data": data})
            acked.append(data)
            n += 1

    peak = run_for(8, server, [attacker(i) for i in range(12)] + [producer])
    by_attack = {}
    for kind, status in statuses:
        by_attack.setdefault(kind, set()).add(status.split(" ")[1] if status.startswith("HTTP/1.1") else status)
    # Refused before being read: 413, or, when the server's close resets the
    # connection before the client reads the answer, no answer at all.
    assert "413" in by_attack[0] and by_attack[0] <= {"413", ""}, by_attack
    assert "413" in by_attack[1] and by_attack[1] <= {"413", ""}, by_attack
    assert by_attack[2] <= {"400"} and by_attack[3] <= {"400"} and by_attack[5] <= {"400"}, by_attack
    assert by_attack[6] == {"400"}, by_attack
    assert "413" in by_attack[7] and by_attack[7] <= {"413", ""}, by_attack
    with urllib.request.urlopen(server.endpoint + "/health", timeout=5) as r:
        assert r.status == 200, "still answering"
    print(f"\nhostile report: attacks={len(statuses)} good puts={len(acked)} peak_rss_mib={peak / 1024:.0f}")
    assert len(acked) > 0
    assert peak < 256 * 1024, f"resident memory bounded: peak {peak / 1024:.0f} MiB"
    assert server.stop() == 0
    stored = [base64.b64decode(r["data"]) for r in server.dump("victim")]
    assert stored == acked, "exactly the acknowledged records, nothing from the attacks"


def test_control_plane_bodies_are_charged_for_their_parsed_size(tmp_path):
    """Bodies of operations other than the puts are parsed into a JSON tree about ten
    times their size; they are charged sixteen times their size against the 64 MiB
    body budget, so 32 clients sending a megabyte of empty arrays each cannot take
    more than a few trees' worth of memory at once."""
    server = Server(tmp_path / "data").start()
    statuses = []

    def attacker(stop):
        while not stop.is_set():
            statuses.append(raw_request(server.port, TREE_BOMB, target=CREATE))

    peak = run_for(5, server, [attacker] * 32)
    print(f"\ntree bombs: {len(statuses)} answered, peak_rss_mib={peak / 1024:.0f}")
    assert len(statuses) > 32 and {s.split(" ")[1] for s in statuses if s} == {"400"}, set(statuses)
    assert peak < 160 * 1024, f"resident memory bounded: peak {peak / 1024:.0f} MiB"
    assert server.stop() == 0


def test_a_chunked_body_is_cut_off_at_the_limit(tmp_path):
    """Without a Content-Length the limit is enforced while the body streams in: a
    chunked PutRecordBatch body growing past 8 MiB gets 413 and stores nothing."""
    server = Server(tmp_path / "data").start()
    make_stream(server.client(), "chunked")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall((f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
                   f"X-Amz-Target: {TARGET}\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(9):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # answered and closed once the limit was passed
        answer = b""
        try:
            while b"exceeds" not in answer and (chunk := s.recv(4096)):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"exceeds the limit of 8388608 bytes" in answer
    assert server.stop() == 0
    assert server.dump("chunked") == []
