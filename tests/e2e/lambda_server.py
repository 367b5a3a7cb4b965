"""A Lambda function behind the Lambda Invoke API, for the tests: it checks each
invocation's SigV4 signature (service lambda), records the event, and answers as
the test's mode says. The function itself upper-cases records, drops those starting
with "drop" and fails those starting with "fail"."""

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _hmac(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signature_is_valid(method, path, headers, body, secret):
    """Recomputes the SigV4 signature over the headers the request says it signed."""
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    auth = lower.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    _, date, region, service, _ = fields["Credential"].split("/")
    signed = fields["SignedHeaders"].split(";")
    raw_path, _, query = path.partition("?")
    # Non-S3 services sign the path encoded once more.
    canonical_path = "/".join(urllib.parse.quote(s, safe="-_.~") for s in raw_path.split("/"))
    canonical = "\n".join([method, canonical_path, query,
                           "".join(f"{h}:{lower[h]}\n" for h in signed), ";".join(signed),
                           hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", lower["x-amz-date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), service), "aws4_request")
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), fields["Signature"])


def transform(record):
    data = base64.b64decode(record["data"])
    if data.startswith(b"drop"):
        return {"recordId": record["recordId"], "result": "Dropped"}
    if data.startswith(b"fail"):
        return {"recordId": record["recordId"], "result": "ProcessingFailed", "data": record["data"]}
    return {"recordId": record["recordId"], "result": "Ok", "data": base64.b64encode(data.upper()).decode(),
            "metadata": {"partitionKeys": {"first": data[:1].decode(errors="replace")}}}


class LambdaServer:
    """`mode`: "normal", "missing" (leaves the last record out), "duplicate" (repeats
    the first), "garbage" (200, not JSON), "function-error" (200 with
    X-Amz-Function-Error), "timeout" (answers after 3 s)."""

    def __init__(self, secret, mode="normal"):
        self.mode = mode
        self.invocations = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                valid = signature_is_valid("POST", self.path, headers, body, secret)
                event = json.loads(body)
                server.invocations.append({"path": self.path, "headers": headers, "event": event,
                                           "signature_valid": valid})
                mode = server.mode
                status, extra = 200, {}
                if not valid:
                    status, answer = 403, {"message": "The request signature we calculated does not match."}
                elif mode == "timeout":
                    time.sleep(3)
                    answer = {"records": [transform(r) for r in event["records"]]}
                elif mode == "garbage":
                    answer = None
                elif mode == "function-error":
                    extra = {"X-Amz-Function-Error": "Unhandled"}
                    answer = {"errorMessage": "boom", "errorType": "Error"}
                else:
                    records = [transform(r) for r in event["records"]]
                    if mode == "missing":
                        records = records[:-1]
                    if mode == "duplicate":
                        records = records + records[:1]
                    answer = {"records": records}
                data = b"<html>oops</html>" if answer is None else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller timed out first

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
