"""Atomic file writes (temp file + rename) with a sha256 checksum recorded beside
the file, so a crash never leaves a truncated artifact that a later step loads; and
path_safe_name, a name made safe as one path component."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

CHECKSUM_SUFFIX = ".sha256"
# mkstemp creates 0600 files; published artifacts (a TF.js bundle served over HTTP)
# need the usual permissions, so atomic files get 0666 minus the umask.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def path_safe_name(name: str) -> str:
    """A name made safe as one path component (checkpoint directories per run and teacher)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


class OutputWriteError(OSError):
    """An output could not be written (disk full, read-only directory, ...)."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", checksum: bool = False, **kwargs: Any) -> Iterator[IO]:
    """Open a temp file next to `path`; on success fsync and rename it over `path`.

    On any exception the temp file is removed and `path` is left untouched.
    With `checksum=True` a `<path>.sha256` file is written after the rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):
            raise OutputWriteError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    if checksum:
        write_checksum(path)


def write_checksum(path: str | os.PathLike) -> str:
    digest = sha256_file(path)
    side = Path(str(path) + CHECKSUM_SUFFIX)
    with atomic_open(side, "w") as f:
        f.write(digest + "\n")
    return digest


def verify_checksum(path: str | os.PathLike) -> bool:
    """True when `path` exists and matches its recorded checksum (or has none recorded)."""
    path = Path(path)
    if not path.exists():
        return False
    side = Path(str(path) + CHECKSUM_SUFFIX)
    if not side.exists():
        return True
    return side.read_text().strip() == sha256_file(path)


def write_bytes(path: str | os.PathLike, data: bytes, checksum: bool = False) -> None:
    with atomic_open(path, "wb", checksum=checksum) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, checksum: bool = False) -> None:
    with atomic_open(path, "w", checksum=checksum, encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, checksum: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", checksum)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """np.savez written atomically with a checksum beside it."""
    import numpy as np

    buf = __import__("io").BytesIO()
    np.savez(buf, **arrays)
    with atomic_open(path, "wb", checksum=True) as f:
        f.write(buf.getvalue())


def load_npz(path: str | os.PathLike, what: str) -> dict:
    """Load every array of an npz written by save_npz; clear errors for a missing,
    truncated (checksum) or unreadable file. `what` names the artifact in errors."""
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not verify_checksum(path):
        raise ValueError(f"{what} {path} does not match its checksum (truncated?); regenerate it")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # BadZipFile: truncated, no checksum
        raise ValueError(f"{what} {path} is not readable: {e}") from e
