"""Google Cloud Storage for gs:// URIs: parsing, and one client per process
(DataLoader workers fork, and a client's HTTP session must not cross a fork).
With STORAGE_EMULATOR_HOST set (a local emulator, as in the tests) the client is
anonymous; otherwise it uses the pod's credentials (Workload Identity or the
mounted key named by GOOGLE_APPLICATION_CREDENTIALS)."""

from __future__ import annotations

import os
import threading
from typing import Any

_clients: dict[int, Any] = {}
_lock = threading.Lock()


def is_gs_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith("gs://")


def parse_gs_uri(uri: str, *, object_required: bool = True) -> tuple[str, str]:
    """gs://bucket/name -> (bucket, name); ValueError naming the URI when malformed."""
    if not is_gs_uri(uri):
        raise ValueError(f"{uri!r}: not a gs:// URI")
    bucket, _, name = uri[5:].partition("/")
    if not bucket or (object_required and not name):
        raise ValueError(f"{uri!r}: expected gs://bucket/{'object' if object_required else 'prefix'}")
    return bucket, name


def client() -> Any:
    """This process's google.cloud.storage.Client."""
    pid = os.getpid()
    with _lock:
        c = _clients.get(pid)
        if c is None:
            from google.cloud import storage  # lazy: only gs:// locations need it

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                c = storage.Client(project="local", credentials=AnonymousCredentials())
            else:
                c = storage.Client()
            _clients.clear()  # a forked child drops its parent's client
            _clients[pid] = c
        return c
