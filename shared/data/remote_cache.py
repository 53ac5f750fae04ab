"""The image cache kept in a GCS bucket (`cache.dir: gs://bucket/prefix`) instead
of on a shared volume: for clusters without a ReadWriteMany PVC, or to keep one
cache across clusters. Each pod works on a local copy (PLANTID_LOCAL_CACHE, else
the temp dir): cache_images uploads every new file and the index, and readers
download a cached file the first time they open it. Objects are named by content
hash, so an upload is idempotent and a local copy never goes stale."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

from shared.io import gcs


class RemoteCacheError(RuntimeError):
    """The bucket could not be read or written (not a record's fault)."""


def local_cache_root() -> Path:
    return Path(os.environ.get("PLANTID_LOCAL_CACHE") or Path(tempfile.gettempdir()) / "plantid-cache")


class RemoteCache:
    """One gs:// cache location and this pod's local copy of it."""

    def __init__(self, uri: str, local_root: str | os.PathLike | None = None):
        self.uri = uri.rstrip("/")
        self.bucket_name, prefix = gcs.parse_gs_uri(self.uri, object_required=False)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.local = Path(local_root or local_cache_root()) / self.bucket_name / self.prefix
        self._last_upload: dict[str, float] = {}
        self._upload_lock = threading.Lock()

    def _blob(self, rel: str):
        return gcs.client().bucket(self.bucket_name).blob(self.prefix + rel)

    def _fail(self, what: str, rel: str, e: Exception) -> RemoteCacheError:
        return RemoteCacheError(f"cannot {what} {self.uri}/{rel}: {type(e).__name__}: {str(e)[:200]}")

    def objects(self) -> dict[str, tuple[int, str | None]]:
        """Every object under the prefix: relative name -> (bytes, base64 md5), one listing
        (the md5 tells a same-size replacement apart)."""
        try:
            return {
                b.name[len(self.prefix) :]: (int(b.size or 0), b.md5_hash)
                for b in gcs.client().list_blobs(self.bucket_name, prefix=self.prefix)
            }
        except Exception as e:  # noqa: BLE001 - auth, network or API errors: all the bucket's fault
            raise self._fail("list", "", e) from None

    def fetch(self, rel: str) -> Path:
        """The local copy of `rel`, downloaded (temp file + rename) when absent."""
        from google.api_core import exceptions as gexc

        dest = self.local / rel
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        try:  # the client checks the download against the object's checksum
            self._blob(rel).download_to_filename(tmp)
            os.replace(tmp, dest)
        except gexc.NotFound:
            raise FileNotFoundError(
                f"{self.uri}/{rel} is not in the cache bucket (was cache_images run against this cache.dir?)"
            ) from None
        except Exception as e:  # noqa: BLE001
            raise self._fail("download", rel, e) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    def upload(self, rel: str, *, at_most_every: float = 0.0) -> None:
        """Upload the local copy of `rel`; with at_most_every, skipped when the last upload
        of it is more recent (for the index, rewritten after every image)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        with self._upload_lock:
            now, last = time.monotonic(), self._last_upload.get(rel)
            if at_most_every and last is not None and now - last < at_most_every:
                return
            self._last_upload[rel] = now
        try:  # content-addressed files and a whole-file index: retrying a write is safe
            self._blob(rel).upload_from_filename(str(self.local / rel), retry=DEFAULT_RETRY)
        except Exception as e:  # noqa: BLE001
            raise self._fail("upload", rel, e) from None

    def refresh(self, rel: str) -> None:
        """Replace the local copy of `rel` with the bucket's (the bucket is the truth);
        no local copy when the bucket has none."""
        local = self.local / rel
        if local.exists():
            local.unlink()
        try:
            self.fetch(rel)
        except FileNotFoundError:
            pass


def remote_cache(uri: str) -> RemoteCache:
    """The RemoteCache of a cache.dir, shared by every reader in a process."""
    return _remote_cache(uri.rstrip("/"), str(local_cache_root()))


@lru_cache(maxsize=16)
def _remote_cache(uri: str, local_root: str) -> RemoteCache:
    return RemoteCache(uri, local_root)
