"""A fake Hugging Face hub on 127.0.0.1 for tests: serves files the test puts in it at
`<endpoint>/<org>/<repo>/resolve/<revision>/<filename>` the way huggingface_hub expects
(HEAD then GET, ETag / X-Repo-Commit / Content-Length headers, X-Error-Code on 404),
so timm's and huggingface_hub's real download code runs against it (HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """files: {(repo, filename): bytes}; requests: every path asked for (to count downloads);
    token: when set, requests without `Authorization: Bearer <token>` get 401."""

    def __init__(self, token: str | None = None):
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.token = token
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self.send_response(401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                parts = unquote(self.path.split("?")[0]).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                data = hub.files.get((repo, filename))
                if data is None:
                    known_repo = any(r == repo for r, _ in hub.files)
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if known_repo else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802
                self._answer(body=False)

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def downloads(self, filename: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p.split("?")[0].endswith("/" + filename))

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
