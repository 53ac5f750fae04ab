"""Where releases live: a local directory or gs://bucket/prefix, behind one small interface with
the two guarantees publishing needs: an object is created only if it does not exist yet
(versions are immutable), and the pointer is replaced only if nobody replaced it since it was
read (two runs publishing at once cannot both win). On GCS both are generation preconditions
(if_generation_match); locally an exclusive create and a lock plus a compare of the content."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.io.atomic import FILE_MODE
from shared.io.gcs import client, is_gs_uri, parse_gs_uri


class ReleaseStoreError(RuntimeError):
    """A release store operation failed (named in the message)."""


class AlreadyExists(ReleaseStoreError):
    """The object exists already: a version is written once and never replaced."""


class ConcurrentUpdate(ReleaseStoreError):
    """The pointer changed between reading and replacing it: another publish (or rollback) won."""


@dataclass(frozen=True)
class Stored:
    """An object's content and its generation token (GCS generation; locally the content's sha256)."""

    data: bytes
    generation: str


class LocalStore:
    """Releases under a local directory (what `make run` publishes into). Files carry no HTTP
    headers here; release.json lists each file's content type for whoever serves them."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def locate(self, name: str) -> str:
        return str(self.root / name)

    def read(self, name: str) -> Stored | None:
        path = self.root / name
        if not path.is_file():
            return None
        data = path.read_bytes()
        return Stored(data, hashlib.sha256(data).hexdigest())

    def create(self, name: str, data: bytes, content_type: str, cache_control: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: exactly one writer creates it, like if_generation_match=0
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            raise AlreadyExists(f"{path} exists already; a release version is never overwritten") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def replace(self, name: str, data: bytes, content_type: str, cache_control: str, expected: str | None) -> None:
        """Write `name` only if its generation is still `expected` (None: it must not exist)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".pointer.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # compare and replace as one step between processes
            now = self.read(name)
            if (now.generation if now else None) != expected:
                raise ConcurrentUpdate(
                    f"{path} changed since it was read (another publish or rollback won); nothing was repointed"
                )
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                os.fchmod(fd, FILE_MODE)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())


class GcsStore:
    """Releases under gs://bucket/prefix, each object with its Content-Type and Cache-Control."""

    def __init__(self, uri: str) -> None:
        self.bucket_name, prefix = parse_gs_uri(uri.rstrip("/"), object_required=False)
        self.prefix = prefix.strip("/")
        self.uri = f"gs://{self.bucket_name}/{self.prefix}".rstrip("/")

    def _name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def locate(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{self._name(name)}"

    def _bucket(self):
        return client().bucket(self.bucket_name)

    def read(self, name: str) -> Stored | None:
        blob = self._bucket().get_blob(self._name(name))
        if blob is None:
            return None
        generation = str(blob.generation)  # before the download, which rewrites it from the headers
        # a blob fetched with its generation downloads exactly that generation's bytes
        return Stored(blob.download_as_bytes(), generation)

    def _upload(self, name: str, data: bytes, content_type: str, cache_control: str, generation: int) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket().blob(self._name(name))
        blob.cache_control = cache_control
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=generation)
        except PreconditionFailed:
            if generation == 0:
                raise AlreadyExists(
                    f"{self.locate(name)} exists already; a release version is never overwritten"
                ) from None
            raise ConcurrentUpdate(
                f"{self.locate(name)} changed since it was read (generation {generation} expected; another "
                "publish or rollback won); nothing was repointed"
            ) from None

    def create(self, name: str, data: bytes, content_type: str, cache_control: str) -> None:
        self._upload(name, data, content_type, cache_control, 0)

    def replace(self, name: str, data: bytes, content_type: str, cache_control: str, expected: str | None) -> None:
        """Write `name` only if its generation is still `expected` (None: it must not exist)."""
        self._upload(name, data, content_type, cache_control, int(expected) if expected else 0)

    def list(self, prefix: str) -> list[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        return sorted(b.name[start:] for b in client().list_blobs(self.bucket_name, prefix=self._name(prefix)))


ReleaseStore = LocalStore | GcsStore


def open_store(uri: str) -> ReleaseStore:
    """The store for release.uri: gs://bucket/prefix or a local directory."""
    if not uri:
        raise ReleaseStoreError("release.uri is empty: there is nowhere to publish to")
    if is_gs_uri(uri):
        return GcsStore(uri)
    if "://" in uri:
        raise ReleaseStoreError(f"release.uri {uri!r}: expected gs://bucket/prefix or a local path")
    return LocalStore(uri)


def fetch_to(uri: str, dest: str | os.PathLike) -> bool:
    """Copy the file at `uri` (gs:// or a path) to `dest`; False when it does not exist."""
    dest = Path(dest)
    if is_gs_uri(uri):
        bucket, name = parse_gs_uri(uri)
        blob = client().bucket(bucket).get_blob(name)
        if blob is None:
            return False
        blob.download_to_filename(str(dest))
        return True
    if not Path(uri).is_file():
        return False
    dest.write_bytes(Path(uri).read_bytes())
    return True
