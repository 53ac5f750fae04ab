"""How each published file is served: its Content-Type (a .wasm served as anything but
application/wasm is refused by the browser's streaming compile) and its Cache-Control (a
version's files never change, so browsers keep them a year; the pointer must be revalidated
on every load, or a rollback would not reach the users who cached it)."""

from __future__ import annotations

from pathlib import PurePosixPath

CONTENT_TYPES = {
    ".json": "application/json",
    ".bin": "application/octet-stream",
    ".wasm": "application/wasm",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".sha256": "text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
VERSIONED_CACHE_CONTROL = "public, max-age=31536000, immutable"
POINTER_CACHE_CONTROL = "no-cache"


def content_type(name: str) -> str:
    """The Content-Type a published file is served with, by its suffix."""
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower(), DEFAULT_CONTENT_TYPE)
