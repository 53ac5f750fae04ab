"""Where the image cache writes, and its index: every file written inside the cache (a
cached JPEG, a student rendition, the index) is checked below the cache root first, and a
symbolic link on the way is refused, so a volume shared with other jobs cannot turn
`ab/` into a door out of the cache (our temp file + rename would land where it points);
and the append-only index, which a process killed mid-line cannot corrupt (the partial
line is ignored and reported, and the next append starts on a fresh line)."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path, PurePosixPath

from shared.io.atomic import write_bytes


class UnsafeCachePath(OSError):
    """A write inside the cache would follow a symbolic link or leave the cache root. An
    OSError (ELOOP), so the cache step stops on it as on any other storage failure: the
    cache volume itself is not as cache_images left it, which is no record's fault."""

    def __init__(self, path: str | os.PathLike, why: str):
        super().__init__(errno.ELOOP, f"refusing to write {os.fspath(path)}: {why}")


def checked_path(root: Path, rel: str) -> Path:
    """root/rel for writing, after checking that `rel` is relative and plain, that no
    existing component below `root` is a symbolic link (lstat, never followed) and that
    the resolved path stays inside the resolved root. `root` itself may be a link (a
    volume mounted through one); only what lies below it is the cache's to guard."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise UnsafeCachePath(root / rel, "not a plain path relative to the cache")
    current = root
    for part in parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break  # from here on we create it ourselves
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeCachePath(current, "it is a symbolic link (cache writes never follow links)")
    real_root = os.path.realpath(root)
    real = os.path.realpath(root / rel)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeCachePath(root / rel, f"it resolves to {real}, outside the cache {real_root}")
    return root / rel


def write_cache_file(root: Path, rel: str, data: bytes) -> os.stat_result:
    """Write `data` at root/rel atomically (temp file + rename), refusing links on the way,
    unless the file already holds exactly it (a duplicate image): rewriting would change its
    inode and send other index entries to a rehash."""
    path = checked_path(root, rel)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return path.stat()
    except FileNotFoundError:
        pass
    write_bytes(path, data)
    return checked_path(root, rel).stat()


class CacheIndex:
    """Append-only JSONL in the cache dir: URL -> entry; the last line for a URL wins.

    An entry (INDEX_VERSION 2): url, sha256 (of the source bytes), cache_path, bytes,
    cached_width, cached_height, resize (also kept at the top level for older readers),
    settings (cache_settings() it was made under), source_width, source_height,
    source_mode, value_range (high-bit-depth sources), colour (an ICC conversion made),
    phash and phash_version (perceptual_hash of the cached file), file_sha256 and file_md5
    (base64, as GCS lists it) of the cached file, and for a local cache stat = [size,
    mtime_ns, ctime_ns, inode] of that file when last verified; with a student rendition,
    student = {resize, version, from_file_sha256 (the main file it was made from),
    cache_path, width, height, bytes, file_sha256, file_md5, stat}. Entries of version 1
    (no settings) are re-rendered once.

    A line that is not a JSON object with a url (a process killed mid-write leaves the
    last line without its newline) is skipped and listed in `ignored`; before the first
    append the writer ends the file with a newline, so the partial line never swallows
    the next entry."""

    def __init__(self, cache_dir: Path, name: str = "index.jsonl"):
        self.root, self.name = cache_dir, name
        self.path = cache_dir / name
        self.entries: dict[str, dict] = {}
        self.ignored: list[dict] = []
        self.lock = threading.Lock()
        self._fd: int | None = None
        if self.path.exists():
            self._read(checked_path(cache_dir, name).read_bytes())

    def _read(self, data: bytes) -> None:
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line.decode("utf-8", errors="replace"))
                self.entries[e["url"]] = e
            except (json.JSONDecodeError, KeyError, TypeError):
                self.ignored.append({"line": number, "why": "not a JSON entry with a url", "bytes": len(line)})
        if tail.strip():
            self.ignored.append(
                {"line": len(lines) + 1, "why": "partial last line (no newline: a write cut short)", "bytes": len(tail)}
            )

    def get(self, url: str) -> dict | None:
        return self.entries.get(url)

    def _open(self) -> int:
        path = checked_path(self.root, self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a link swapped in after the check is still not followed
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")  # end a partial last line: it stays ignored, the next entry stays whole
        return fd

    def add(self, entry: dict) -> None:
        with self.lock:
            if self._fd is None:
                self._fd = self._open()
            os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
            os.fsync(self._fd)
            self.entries[entry["url"]] = entry

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
