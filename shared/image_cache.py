"""The content-addressed image cache (phase 0): fetch each record's image, check
it decodes, reject tiny images and decompression bombs, deduplicate by content
hash, and store a resized JPEG named only by the sha256 of the original bytes.
Resumable: an append-only index in the cache maps URL -> cached file, so a
re-run (or a pod restarted mid-way) fetches nothing already cached."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image, ImageOps

from shared.atomic import write_bytes, write_json
from shared.fetch import FetchError, Fetcher, FetchPolicy
from shared.gcs import is_gs_uri
from shared.remote_cache import RemoteCache, RemoteCacheError, remote_cache
from shared.records import Record, load_jsonl, write_jsonl

INDEX_NAME = "index.jsonl"
# How often a gs:// cache's index is uploaded while caching (and once at the end):
# a pod killed in between refetches at most this long's worth of images.
INDEX_PUSH_SECONDS = 120.0
# Failures that count against the plan's "all URLs downloadable (< 5% failing)".
NOT_FAILURES = {"too_small", "duplicate_content"}


class CacheFailRateError(RuntimeError):
    """Too many images could not be fetched or decoded."""


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class CacheReport:
    cached: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    fetched: int = 0
    reused: int = 0
    seconds: float = 0.0

    @property
    def fail_counts(self) -> dict[str, int]:
        return dict(Counter(f["reason"] for f in self.failures))

    @property
    def attempted(self) -> int:
        return len(self.cached) + len(self.failures)

    @property
    def failed(self) -> int:
        return sum(1 for f in self.failures if f["reason"] not in NOT_FAILURES)

    @property
    def fail_rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    def to_dict(self) -> dict[str, Any]:
        counts = self.fail_counts
        return {"attempted": self.attempted, "cached": len(self.cached), "fetched": self.fetched,
                "reused": self.reused, "failed": self.failed, "fail_rate": round(self.fail_rate, 4),
                "too_small": counts.get("too_small", 0), "duplicates": counts.get("duplicate_content", 0),
                "fail_counts": counts, "seconds": round(self.seconds, 2),
                "images_per_second": round(self.attempted / self.seconds, 2) if self.seconds else 0.0,
                "failures": self.failures}


def cache_path_for(sha256: str) -> str:
    """Relative cache path from the content hash only (never from record fields)."""
    return f"{sha256[:2]}/{sha256}.jpg"


def resolve(cache_dir: str | os.PathLike, rec: dict) -> Path:
    """The cached file of a cached record; refuses paths that escape the cache.
    For a gs:// cache, the local copy (downloaded on first use)."""
    remote = remote_cache(str(cache_dir)) if is_gs_uri(str(cache_dir)) else None
    root = (remote.local if remote else Path(cache_dir)).resolve()
    p = (root / str(rec["cache_path"])).resolve()
    if root not in p.parents:
        raise ValueError(f"record {rec.get('image_id')}: cache_path {rec['cache_path']!r} escapes the cache")
    return remote.fetch(p.relative_to(root).as_posix()) if remote else p


def process_image(data: bytes, resize: int, min_side: int, max_pixels: int) -> tuple[bytes, int, int]:
    """Decode, check and resize image bytes; return (jpeg bytes, width, height)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected("decompression_bomb", f"{w}x{h} > {max_pixels} pixels")
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("decompression_bomb", str(e)) from None
    except Exception as e:  # PIL raises many types for a corrupt file
        raise ImageRejected("decode_error", f"{type(e).__name__}: {e}") from None
    img = ImageOps.exif_transpose(img)
    if min(img.size) < min_side:
        raise ImageRejected("too_small", f"{img.width}x{img.height} < {min_side}px")
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        img = bg
    img = img.convert("RGB")
    short = min(img.size)
    if resize and short > resize:  # never upscale: a small image stays as it is
        scale = resize / short
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue(), img.width, img.height


class CacheIndex:
    """Append-only JSONL in the cache dir: URL -> {sha256, cache_path, size, params}.

    A truncated last line (a kill mid-write) is ignored; entries whose file is
    missing or does not match its hash are refetched."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / INDEX_NAME
        self.entries: dict[str, dict] = {}
        self.lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                        self.entries[e["url"]] = e
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        self._fh = None

    def get(self, url: str) -> dict | None:
        return self.entries.get(url)

    def add(self, entry: dict) -> None:
        with self.lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(json.dumps(entry, sort_keys=True) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.entries[entry["url"]] = entry

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


def _entry_valid(cache_dir: Path, e: dict, resize: int, remote_sizes: dict[str, int] | None = None) -> bool:
    if e.get("resize") != resize:
        return False
    if remote_sizes is not None:  # a gs:// cache: the bucket holds the truth
        return remote_sizes.get(e["cache_path"]) == e.get("bytes")
    p = cache_dir / e["cache_path"]
    if not p.is_file() or p.stat().st_size != e.get("bytes"):
        return False
    return True


def cache_images(records: Iterable[dict | Record], cache_dir: str | os.PathLike, *, resize: int = 448,
                 min_side: int = 100, max_pixels: int = 89_478_485, policy: FetchPolicy | None = None,
                 workers: int = 8, max_fail_rate: float = 0.05,
                 progress: Callable[[int, int], None] | None = None,
                 fetcher: Fetcher | None = None) -> CacheReport:
    """Cache every record's image; see the module docstring. Raises
    CacheFailRateError (after the index is written) when too many fail."""
    t0 = time.monotonic()
    remote = RemoteCache(str(cache_dir)) if is_gs_uri(str(cache_dir)) else None
    root = remote.local if remote else Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    recs = [r.to_dict() if isinstance(r, Record) else dict(r) for r in records]
    remote_sizes = None
    if remote:
        remote.refresh(INDEX_NAME)
        remote_sizes = remote.sizes()
    index = CacheIndex(root)
    fetcher = fetcher or Fetcher(policy)
    results: list[Any] = [None] * len(recs)
    counters = Counter()
    done = [0]
    lock = threading.Lock()
    progress = progress or _log_progress(len(recs))

    def work(i: int) -> None:
        rec = recs[i]
        url = rec.get("image_url", "")
        try:
            e = index.get(url)
            if e and "error" not in e and _entry_valid(root, e, resize, remote_sizes):
                results[i] = ("ok", e, "reused")
            else:
                data = fetcher.fetch(url)
                sha = hashlib.sha256(data).hexdigest()
                jpeg, w, h = process_image(data, resize, min_side, max_pixels)
                rel = cache_path_for(sha)
                write_bytes(root / rel, jpeg)
                if remote:  # the file is in the bucket before the index names it
                    remote.upload(rel)
                e = {"url": url, "sha256": sha, "cache_path": rel, "cached_width": w,
                     "cached_height": h, "bytes": len(jpeg), "resize": resize}
                index.add(e)
                if remote:
                    remote.upload(INDEX_NAME, at_most_every=INDEX_PUSH_SECONDS)
                results[i] = ("ok", e, "fetched")
        except FetchError as err:
            results[i] = ("fail", err.reason, str(err))
        except ImageRejected as err:
            results[i] = ("fail", err.reason, f"{url}: {err.detail}")
        except (OSError, RemoteCacheError) as err:  # disk full / read-only cache: not the record's fault
            raise RuntimeError(f"cannot write to the image cache {cache_dir}: {err}") from err
        with lock:
            done[0] += 1
            progress(done[0], len(recs))

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(work, range(len(recs))))
    finally:
        index.close()
        if remote and (root / INDEX_NAME).exists():
            remote.upload(INDEX_NAME)
    report = CacheReport()
    seen: dict[str, str] = {}
    for rec, res in zip(recs, results):
        if res[0] == "fail":
            report.failures.append({"image_id": rec.get("image_id"), "image_url": rec.get("image_url"),
                                    "reason": res[1], "detail": res[2]})
            continue
        e, how = res[1], res[2]
        counters[how] += 1
        if e["sha256"] in seen:  # same bytes as an earlier record: keep the first
            report.failures.append({"image_id": rec.get("image_id"), "image_url": rec.get("image_url"),
                                    "reason": "duplicate_content",
                                    "detail": f"same image as {seen[e['sha256']]}"})
            continue
        seen[e["sha256"]] = str(rec.get("image_id"))
        report.cached.append({**rec, "sha256": e["sha256"], "cache_path": e["cache_path"],
                              "cached_width": e["cached_width"], "cached_height": e["cached_height"]})
    report.fetched, report.reused = counters["fetched"], counters["reused"]
    report.seconds = time.monotonic() - t0
    return report


def _log_progress(total: int, every: int = 0) -> Callable[[int, int], None]:
    every = every or max(1, total // 10)
    t0 = time.monotonic()

    def log(done: int, total_: int) -> None:
        if done % every == 0 or done == total_:
            rate = done / max(1e-9, time.monotonic() - t0)
            print(f"cache_images: {done}/{total_} ({rate:.1f} images/s)", flush=True)
    return log


def check_fail_rate(report: CacheReport, max_fail_rate: float) -> None:
    if report.fail_rate > max_fail_rate:
        top = ", ".join(f"{k}={v}" for k, v in Counter(
            f["reason"] for f in report.failures if f["reason"] not in NOT_FAILURES).most_common(5))
        raise CacheFailRateError(
            f"{report.failed} of {report.attempted} images failed ({report.fail_rate:.1%}), above the "
            f"allowed {max_fail_rate:.1%}; top reasons: {top}. See the cache report for every URL.")


def run_cache_images(records_path: str, cache_dir: str, *, resize: int, min_side: int,
                     max_fail_rate: float, workers: int, fetch_policy: dict, out_cached: str,
                     out_report: str) -> dict[str, Any]:
    """The cache step: cache, write cached records + report, then enforce the fail rate."""
    report = cache_images(load_jsonl(records_path), cache_dir, resize=resize, min_side=min_side,
                          policy=FetchPolicy.from_dict(fetch_policy), workers=workers)
    write_jsonl(out_cached, report.cached)
    summary = report.to_dict()
    write_json(out_report, summary)
    check_fail_rate(report, max_fail_rate)
    return summary
