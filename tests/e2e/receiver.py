"""A Firehose HTTP endpoint receiver for the tests, over HTTPS with a test CA made
here (or plain HTTP): it records every request (path, headers, decoded body) and
answers as the test says: Firehose's success response, an error status, a wrong
requestId, or a body that is not JSON."""

import datetime
import gzip
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca_and_cert(directory):
    """Writes ca.pem, and cert.pem/key.pem for 127.0.0.1 signed by that CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sluice test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / "ca.pem"


class Receiver:
    """`mode` decides the answers: "ok", "error" (500 with an errorMessage), "413",
    "wrong-id" (200 echoing another requestId), "not-json" (200, text), or "flap"
    (alternately error and ok)."""

    def __init__(self, tls_dir=None, mode="ok"):
        self.mode = mode
        self.requests = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                parsed = json.loads(body)
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": parsed,
                                              "raw": raw, "at": time.time()})
                    n = len(receiver.requests)
                mode = receiver.mode
                if mode == "flap":
                    mode = "ok" if n % 2 == 0 else "error"
                status, answer = {
                    "ok": (200, {"requestId": parsed["requestId"], "timestamp": int(time.time() * 1000)}),
                    "error": (500, {"requestId": parsed["requestId"], "timestamp": int(time.time() * 1000),
                                    "errorMessage": "the receiver says no"}),
                    "413": (413, {"requestId": parsed["requestId"], "timestamp": int(time.time() * 1000)}),
                    "wrong-id": (200, {"requestId": "someone-else", "timestamp": int(time.time() * 1000)}),
                    "not-json": (200, None),
                }[mode]
                data = b"accepted" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client killed mid-request (kill -9 tests) is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls_dir is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls_dir is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"fewer than {n} requests after {timeout}s: {len(self.requests)}")

    def close(self):
        self.server.shutdown()
