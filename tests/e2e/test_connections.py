"""Connection limits ([limits] connections_max, header_kib_max, header_timeout_s,
body_timeout_s): idle, slow-header (slowloris) and slow-body clients are cut off,
oversized headers get 431, connections beyond the limit are closed at once, and
none of it stops a well-behaved client or stores anything."""

import json
import socket
import time
import urllib.request

from conftest import Server, make_stream

HEAD = ("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
        "X-Amz-Target: Firehose_20150804.PutRecord\r\n")
WAIT_S = 15  # far longer than the 1-2 s limits below: a limit that does not act fails the test


def closed_by_server(sock, deadline_s=WAIT_S):
    """Reads until the server closes the connection; everything it sent first."""
    sock.settimeout(deadline_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def put_body(stream, data="c2xvdw=="):
    return json.dumps({"DeliveryStreamName": stream, "Record": {"Data": data}}).encode()


def metric(server, name):
    text = urllib.request.urlopen(server.endpoint + "/metrics", timeout=5).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def test_idle_slow_header_and_slow_body_clients_are_cut_off(tmp_path):
    server = Server(tmp_path / "data", "[limits]\nheader_timeout_s = 1\nbody_timeout_s = 2\n").start()
    fh = server.client()
    make_stream(fh, "s")

    # A connection that never sends a byte.
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        assert closed_by_server(idle) == b""

    # Slowloris: a header line every 200 ms never completes the head. Each line
    # arriving does not restart the clock; the server closes mid-trickle.
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(HEAD.encode())
        cut_off = False
        for i in range(WAIT_S * 5):
            try:
                slow.sendall(f"X-Trickle-{i}: a\r\n".encode())
            except OSError:
                cut_off = True
                break
            time.sleep(0.2)
            slow.setblocking(False)
            try:
                if slow.recv(65536) == b"":
                    cut_off = True
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                cut_off = True
                break
            finally:
                slow.setblocking(True)
        assert cut_off, "a slow head was never cut off"

    # Keep-alive: after a complete exchange, an idle connection is closed too.
    with socket.create_connection(("127.0.0.1", server.port)) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = closed_by_server(kept)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]

    # A body that stops halfway: 408 RequestTimeoutException, connection closed.
    body = put_body("s")
    with socket.create_connection(("127.0.0.1", server.port)) as stalled:
        stalled.sendall(f"{HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        answer = closed_by_server(stalled)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"x-amzn-errortype: requesttimeoutexception" in head.lower()
    assert json.loads(payload) == {"__type": "RequestTimeoutException",
                                   "message": "The request body did not arrive within 2 seconds."}

    # A well-behaved client was never affected, and nothing cut off was stored.
    fh.put_record(DeliveryStreamName="s", Record={"Data": b"good"})
    assert [r["data"] for r in server.dump("s")] == ["Z29vZA=="]
    assert server.stop() == 0


def test_request_heads_over_the_limit_get_431(tmp_path):
    server = Server(tmp_path / "data", "[limits]\nheader_kib_max = 8\n").start()
    fh = server.client()
    make_stream(fh, "h")
    body = put_body("h")
    for padding, status in [(6 << 10, b"HTTP/1.1 200"), (9 << 10, b"HTTP/1.1 431")]:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(f"{HEAD}X-Padding: {'p' * padding}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                      .encode() + body)
            answer = closed_by_server(s)
            assert answer.startswith(status), (padding, answer[:200])
    assert [r["data"] for r in server.dump("h")] == ["c2xvdw=="], "only the request within the limit was stored"
    assert server.stop() == 0


def test_connections_beyond_the_limit_are_closed_at_once(tmp_path):
    server = Server(tmp_path / "data", "[limits]\nconnections_max = 4\n").start()
    fh = server.client()
    make_stream(fh, "c")
    fh.close()  # its pooled connection would take one of the four slots
    time.sleep(0.2)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    try:
        body = put_body("c")
        refused = 0
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port)) as extra:
                try:
                    extra.sendall(f"{HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                except OSError:
                    pass
                if closed_by_server(extra) == b"":
                    refused += 1
        assert refused == 3, "every connection beyond the limit is closed without an answer"

        # One slot frees: a client gets in again.
        held.pop().close()
        deadline = time.time() + WAIT_S
        while True:
            try:
                server.client().put_record(DeliveryStreamName="c", Record={"Data": b"after"})
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        for s in held:
            s.close()
    assert [r["data"] for r in server.dump("c")] == ["YWZ0ZXI="], "refused requests stored nothing"
    assert metric(server, "sluice_connections_refused") >= 3
    assert server.stop() == 0
