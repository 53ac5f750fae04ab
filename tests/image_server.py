"""A local HTTP image server for tests and benchmarks (127.0.0.1, random port).

Routes: /img/<name> serves registered bytes; /404; /500once/<name> (500 then
200); /429once/<name> (429 Retry-After: 1, then 200); /429always; /slow (sleeps
past the client's timeout); /redirect/<name> (302 to /img/<name>);
/redirect-loopback (302 to http://127.0.0.1:1/); /html (text/html); /huge
(an oversize body). Requests per path are counted in `.hits`."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def jpeg_bytes(w: int = 200, h: int = 160, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


class ImageServer:
    def __init__(self, slow_seconds: float = 3.0, huge_bytes: int = 2_000_000):
        self.images: dict[str, bytes] = {}
        self.hits: Counter = Counter()
        self.slow_seconds, self.huge_bytes = slow_seconds, huge_bytes
        self._once: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                path = self.path
                server.hits[path] += 1
                parts = path.strip("/").split("/")
                if parts[0] == "img" and len(parts) == 2 and parts[1] in server.images:
                    return self._send(200, server.images[parts[1]])
                if parts[0] in ("500once", "429once") and len(parts) == 2:
                    if path not in server._once:
                        server._once.add(path)
                        if parts[0] == "500once":
                            return self._send(500, b"boom", "text/plain")
                        return self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                    return self._send(200, server.images[parts[1]])
                if parts[0] == "429always":
                    return self._send(429, b"", "text/plain", {"Retry-After": "0"})
                if parts[0] == "slow":
                    time.sleep(server.slow_seconds)
                    return self._send(200, jpeg_bytes())
                if parts[0] == "redirect" and len(parts) == 2:
                    return self._send(302, b"", "text/plain", {"Location": f"/img/{parts[1]}"})
                if parts[0] == "redirect-loopback":
                    return self._send(302, b"", "text/plain", {"Location": "http://127.0.0.1:1/x.jpg"})
                if parts[0] == "html":
                    return self._send(200, b"<html></html>", "text/html")
                if parts[0] == "huge":
                    return self._send(200, b"\xff" * server.huge_bytes)
                return self._send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, name: str, data: bytes) -> str:
        self.images[name] = data
        return f"{self.base}/img/{name}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
