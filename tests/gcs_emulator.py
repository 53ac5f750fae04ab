"""A local GCS server for tests (gcp-storage-emulator, in memory, over HTTP):
google-cloud-storage reaches it through STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

import pytest

from shared.io import gcs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _insert_with_preconditions(insert):
    """The emulator's upload handler, honouring ifGenerationMatch as GCS does (412 on a mismatch;
    0: the object must not exist): the emulator itself ignores it, and publishing relies on it."""
    from gcp_storage_emulator.exceptions import NotFound

    def handler(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        if want:
            name = (request.query.get("name") or [None])[0]
            if name is None and isinstance(request.data, dict):
                name = (request.data.get("meta") or {}).get("name")
            try:
                now = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                now = "0"
            if now != want[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet", "errors": []}})
                return None
        return insert(request, response, storage, *args, **kwargs)

    return handler


@contextmanager
def gcs_emulator(bucket: str = "plants", preconditions: bool = False) -> Iterator[str]:
    """Runs the emulator with one bucket; yields its http:// address. preconditions: uploads
    honour ifGenerationMatch (the emulator's handler wrapped while it runs)."""
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        if preconditions:
            for _, methods in emulator.HANDLERS:
                for method, handler in list(methods.items()):
                    if handler is objects.insert:
                        mp.setitem(methods, method, _insert_with_preconditions(objects.insert))
        host = f"http://127.0.0.1:{port}"
        mp.setenv("STORAGE_EMULATOR_HOST", host)
        gcs._clients.clear()  # the next client() talks to this emulator
        try:
            yield host
        finally:
            gcs._clients.clear()
            server.stop()
