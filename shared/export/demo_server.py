"""`pipeline.py serve-demo` / `make demo`: the TF.js bundle served as its page needs it.

Cross-origin isolation (Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy:
require-corp) lets TF.js WASM run on several threads (SharedArrayBuffer), where `python -m
http.server` gives one; .wasm as application/wasm (streaming compilation); no-cache on the page,
sw.js and model.json so a new model is seen, long-lived caching for the weight shards. A bucket
or CDN serving the bundle needs the same headers (README: "The demo page")."""

from __future__ import annotations

import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
NO_CACHE = ("", "/", "/index.html", "/sw.js", "/model.json")


class IsolatedBundleHandler(SimpleHTTPRequestHandler):
    """A bundle directory, read-only and quiet, cross-origin isolated, with the TF.js files'
    content types (the export's latency page is served through it too)."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".json": "application/json",
        ".bin": "application/octet-stream",
    }

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args) -> None:  # the console stays for the address line
        pass


class DemoHandler(IsolatedBundleHandler):
    """The bundle as `make demo` serves it: plus caching headers (a new model is seen)."""

    def end_headers(self) -> None:
        path = urlsplit(self.path).path
        self.send_header("Cache-Control", "no-cache" if path in NO_CACHE else "public, max-age=86400")
        super().end_headers()


def demo_server(bundle_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server for the bundle (not started: serve_forever() it). FileNotFoundError naming the
    directory when it holds no model.json / index.html."""
    d = Path(bundle_dir).resolve()
    missing = [n for n in ("model.json", "index.html") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a TF.js bundle: {', '.join(missing)} missing (run `make run` first)")
    return ThreadingHTTPServer((host, port), partial(DemoHandler, directory=str(d)))
