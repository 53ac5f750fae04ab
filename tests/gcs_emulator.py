"""A local GCS server for tests (gcp-storage-emulator, in memory, over HTTP):
google-cloud-storage reaches it through STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shared.io import gcs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gcs_emulator(bucket: str = "plants") -> Iterator[str]:
    """Runs the emulator with one bucket; yields its http:// address."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        host = f"http://127.0.0.1:{port}"
        mp.setenv("STORAGE_EMULATOR_HOST", host)
        gcs._clients.clear()  # the next client() talks to this emulator
        try:
            yield host
        finally:
            gcs._clients.clear()
            server.stop()
