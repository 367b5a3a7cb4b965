"""An Iceberg REST catalog for the tests: pyiceberg's SQL catalog (on SQLite) served over the
REST catalog protocol (the endpoints a writer uses: config, namespaces, load and commit).

No REST catalog server installs from the registries CI reaches (Iceberg's REST fixture,
Polaris, Lakekeeper and Gravitino ship as Java builds or container images), so the tests serve
a real catalog through the protocol instead: every commit's requirements are checked and its
updates applied by pyiceberg, as a REST server backed by a JDBC catalog does.

    python3 iceberg_rest.py PORT SQLITE_PATH WAREHOUSE [--token TOKEN]
"""

import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import CommitTableRequest


def error(code, kind, message):
    return code, {"error": {"message": message, "type": kind, "code": code}}


class Handler(BaseHTTPRequestHandler):
    catalog: SqlCatalog = None
    token: str = None
    commits = 0

    def log_message(self, *args):
        pass

    def reply(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def route(self):
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "NotAuthorizedException", "a bearer token is required")
        path = urllib.parse.urlparse(self.path).path.split("/")[1:]
        if path == ["v1", "config"] and self.command == "GET":
            return 200, {"defaults": {}, "overrides": {}}
        if path[:2] != ["v1", "namespaces"]:
            return error(404, "NotFoundException", f"no route {self.path}")
        if len(path) == 5 and path[3] == "tables":
            namespace = tuple(urllib.parse.unquote(path[2]).split("\x1f"))
            identifier = namespace + (urllib.parse.unquote(path[4]),)
            try:
                if self.command in ("GET", "HEAD"):
                    table = self.catalog.load_table(identifier)
                    return 200, {"metadata-location": table.metadata_location,
                                 "metadata": json.loads(table.metadata.model_dump_json(by_alias=True)),
                                 "config": {}}
                if self.command == "POST":
                    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    request = CommitTableRequest.model_validate_json(body)
                    table = self.catalog.load_table(identifier)
                    response = self.catalog.commit_table(table, request.requirements, request.updates)
                    Handler.commits += 1
                    return 200, json.loads(response.model_dump_json(by_alias=True))
            except (NoSuchTableError, NoSuchNamespaceError) as e:
                return error(404, "NoSuchTableException", str(e))
            except CommitFailedException as e:
                return error(409, "CommitFailedException", str(e))
        return error(404, "NotFoundException", f"no route {self.command} {self.path}")

    def handle_one(self):
        try:
            code, body = self.route()
        except Exception as e:  # the commit state is unknown: as a REST server says it
            code, body = error(500, type(e).__name__, str(e))
        self.reply(code, body)

    do_GET = do_HEAD = do_POST = handle_one


def main():
    port, sqlite_path, warehouse = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    Handler.token = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--token" else None
    Handler.catalog = SqlCatalog("sluice", uri=f"sqlite:///{sqlite_path}", warehouse=warehouse)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
