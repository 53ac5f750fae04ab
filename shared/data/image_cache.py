"""The content-addressed image cache (phase 0): fetch each record's image, check
it decodes, reject tiny images and decompression bombs, deduplicate by content
hash, and store a resized JPEG named only by the sha256 of the original bytes.
Resumable: an append-only index in the cache maps URL -> cached file, so a
re-run (or a pod restarted mid-way) fetches nothing already cached.

Catalogue data is hostile, and one record never stops the step: an image that
cannot be rendered (wider than JPEG can store, an unsupported mode, NaN pixels)
is rejected with its reason; only the cache's own storage failing (disk full,
read-only, I/O error, bucket unreachable) stops it. High-bit-depth and float
images are scaled to 8 bits, never clipped. The same bytes under two taxa are a
label conflict: neither record is trained on. Each index entry records the
settings it was made under, the source size it was judged on and the cached
file's checksums, so a re-run with other settings re-judges or re-renders it and
a replaced file is refetched, not reused.

With `student_resize` (cache.student_resize) a second, smaller rendition is stored
beside each cached image for the student (issue 16: decoding the 448 px JPEG was 40 %
of the student's loader time): the main cached JPEG resized to that short side
(`ab/<sha256>.s<short side>.jpg`, made from the main file, so adding it to a full
cache fetches nothing again), written atomically, and recorded in the index entry
(`student`: its short side, version, checksums, stat and the main file's sha256 it
was made from), so a missing, replaced or stale one (made from an older main file or
at another size) is rebuilt. An image already no larger than that keeps one file:
its rendition is the main file. Cached records then carry `student_cache_path`,
`student_width`, `student_height` and `student_resize` (read by `student_records`).

Issue 22: each cached image's perceptual hash (perceptual_hash.dhash64 of the cached file,
`phash`) is kept in its index entry and record, computed from the cached file for entries
that lack it (nothing refetched); images carrying an ICC profile are converted to sRGB
and transparency goes onto image_colour.BACKGROUND_RGB (image_colour); decoding is held
to a pixel budget across the workers, JPEGs draft-decoded near the target size
(decode_budget); writes never follow a link out of the cache, and a partial index line
left by a kill is ignored, never merged with the next entry (cache_store)."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import os
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from shared.data.cache_store import CacheIndex, write_cache_file
from shared.data.decode_budget import PixelBudget
from shared.data.fetch import Fetcher, FetchError, FetchPolicy
from shared.data.image_colour import on_background, to_srgb
from shared.data.perceptual_hash import PHASH_FIELD, PHASH_VERSION, dhash64, to_hex
from shared.data.remote_cache import RemoteCache, RemoteCacheError
from shared.io.atomic import sha256_file, write_json
from shared.io.gcs import is_gs_uri
from shared.io.records import Record, load_jsonl, write_jsonl

INDEX_NAME = "index.jsonl"
# How often a gs:// cache's index is uploaded while caching (and once at the end):
# a pod killed in between refetches at most this long's worth of images.
INDEX_PUSH_SECONDS = 120.0
JPEG_QUALITY = 90
# libjpeg stores at most 65,500 pixels on a side; a wider image fails at encode time.
JPEG_MAX_SIDE = 65_500
# Bump whenever the same bytes and settings would give another stored rendition
# (decoding, conversion or encoding changed): older entries are then re-rendered.
# 2: high-bit-depth and float images scaled instead of saturated.
# 3: ICC profiles converted to sRGB; JPEGs draft-decoded (libjpeg's DCT scaling) before resizing.
RENDITION_VERSION = 3
INDEX_VERSION = 2
# The pixel cap on a source image (its header, before decoding). A 448 px cache needs no
# more than a 50 MP camera's photo (45 MP full frame passes); PIL's own bomb limit is
# 89 MP, and each such decode held ~270 MB (RGB) per worker.
MAX_PIXELS = 50_000_000
# Pixels the workers may hold decoded at once (decode_budget.PixelBudget): ~600 MB of RGB
# and its conversions, whatever cache.workers is; a JPEG holds only its draft size.
DECODE_PIXEL_BUDGET = 100_000_000
# Settings that decide the stored bytes: an entry made under others is re-rendered.
RENDITION_KEYS = ("resize", "jpeg_quality", "rendition")
# Settings that only decide acceptance: re-judged from the source size the entry records.
ACCEPTANCE_KEYS = ("min_side", "max_pixels")
# Rejections that do not count against the plan's "all URLs downloadable (< 5% failing)":
# the image was downloaded and decodes, it is just not usable as training data.
NOT_FAILURES = {"too_small", "duplicate_content", "too_wide_for_jpeg", "label_conflict"}
# Bump whenever the same main file and short side would give another student rendition:
# older student renditions are then rebuilt (from the main file, nothing is refetched).
STUDENT_RENDITION_VERSION = 1
# Unsigned 16-bit -> 8-bit over the type's whole range (0 -> 0, 65535 -> 255), rounded.
_LUT16 = np.rint(np.arange(65536, dtype=np.float64) / 257.0).astype(np.uint8)


class CacheFailRateError(RuntimeError):
    """Too many images could not be fetched or decoded."""


class CacheWriteError(RuntimeError):
    """The cache itself could not be written (disk full, read-only, I/O error,
    bucket unreachable): no record's fault, so the step stops."""


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
    settings: dict[str, Any] = field(default_factory=dict)
    # How each index entry found for a record was checked: "stat" (size, mtime, ctime and
    # inode as recorded: trusted without reading), "listing" (gs://: size and md5 from
    # the bucket's listing), "rehashed" (stat changed, sha256 still matches), or why it
    # was redone: unknown_settings, settings_changed, missing_file, size_mismatch,
    # checksum_mismatch, unreadable_file, bad_entry.
    index_checks: dict[str, int] = field(default_factory=dict)
    # Cached records whose source was scaled down to 8 bits (16-bit, 32-bit, float), per mode.
    high_bit_depth: dict[str, int] = field(default_factory=dict)
    # With student_resize: how each record's student rendition was found ("stat", "listing",
    # "rehashed", "same_as_main": the image is no larger, its main file serves) or why it
    # was (re)built: built_new (a freshly rendered main file), missing_entry, settings_changed,
    # stale (made from another main file), missing_file, size_mismatch, checksum_mismatch,
    # unreadable_file, bad_entry.
    student_renditions: dict[str, int] = field(default_factory=dict)
    # How each cached entry got its perceptual hash: computed_new (a fresh rendition),
    # from_cached_file (an older entry, hashed from its file), indexed (already there).
    phashes: dict[str, int] = field(default_factory=dict)
    # Index lines skipped on reading (a partial last line left by a kill, junk): line and why.
    index_lines_ignored: list[dict] = field(default_factory=list)
    # The decode pixel budget (decode_budget.PixelBudget): its size, peak use and waits.
    decode_pixels: dict[str, int] = field(default_factory=dict)
    # Cached records whose image was converted from an embedded ICC profile to sRGB.
    colour_converted: int = 0

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
        return {
            "attempted": self.attempted,
            "cached": len(self.cached),
            "fetched": self.fetched,
            "reused": self.reused,
            "failed": self.failed,
            "fail_rate": round(self.fail_rate, 4),
            "too_small": counts.get("too_small", 0),
            "duplicates": counts.get("duplicate_content", 0),
            "label_conflicts": counts.get("label_conflict", 0),
            "high_bit_depth": self.high_bit_depth,
            "settings": self.settings,
            "index_checks": self.index_checks,
            "student_renditions": self.student_renditions,
            "phashes": self.phashes,
            "index_lines_ignored": self.index_lines_ignored,
            "decode_pixels": self.decode_pixels,
            "colour_converted": self.colour_converted,
            "fail_counts": counts,
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.attempted / self.seconds, 2) if self.seconds else 0.0,
            "failures": self.failures,
        }


def cache_path_for(sha256: str) -> str:
    """Relative cache path from the content hash only (never from record fields)."""
    return f"{sha256[:2]}/{sha256}.jpg"


def student_cache_path_for(sha256: str, short_side: int) -> str:
    """Relative path of the student rendition at `short_side`: beside the main file, the
    size in the name (a run with another student_resize never overwrites a file that a
    running job may be reading)."""
    return f"{sha256[:2]}/{sha256}.s{int(short_side)}.jpg"


def student_records(records: list[dict], short_side: int, what: str = "student") -> list[dict]:
    """The records as the student reads them: each one's `cache_path` (and cached size)
    replaced by its student rendition's. Never falls back to the main file: a record
    without a rendition at `short_side` is an error naming it (a cache made without
    cache.student_resize, or with another value: re-run cache_images)."""
    out = []
    for r in records:
        have = r.get("student_resize")
        if not r.get("student_cache_path") or have is None:
            raise ValueError(
                f"{what}: record {r.get('image_id')}: no student rendition (student_cache_path) "
                f"although {short_side} px is configured (data.student_rendition, from "
                "cache.student_resize): these records were cached without cache.student_resize; "
                "re-run cache_images with it"
            )
        if int(have) != int(short_side):
            raise ValueError(
                f"{what}: record {r.get('image_id')}: its student rendition is {have} px "
                f"(student_resize), the config asks for {short_side} px (data.student_rendition); "
                "re-run cache_images with cache.student_resize set to it"
            )
        out.append(
            {
                **r,
                "cache_path": r["student_cache_path"],
                "cached_width": r.get("student_width"),
                "cached_height": r.get("student_height"),
            }
        )
    return out


def cache_settings(resize: int, min_side: int, max_pixels: int) -> dict[str, Any]:
    """Everything that decides whether an image is accepted and what is stored for it."""
    return {
        "resize": resize,
        "min_side": min_side,
        "max_pixels": max_pixels,
        "jpeg_quality": JPEG_QUALITY,
        "rendition": RENDITION_VERSION,
    }


def judge_size(width: int, height: int, min_side: int, max_pixels: int) -> None:
    """The acceptance rule on a source size (after EXIF rotation); the same rule
    re-judges a cached entry from the size its index entry records."""
    if width * height > max_pixels:
        raise ImageRejected("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
    if min(width, height) < min_side:
        raise ImageRejected("too_small", f"{width}x{height} < {min_side}px")


@dataclass(frozen=True)
class Rendition:
    """What is stored for one source image, and what it was made from."""

    jpeg: bytes
    width: int
    height: int
    source_width: int
    source_height: int
    source_mode: str
    value_range: tuple[float, float] | None = None  # the source values mapped to 0..255
    colour: str | None = None  # what was done about an embedded ICC profile (image_colour.to_srgb)


def _is_unsigned32_tiff(img: Image.Image) -> bool:
    """PIL opens unsigned 32-bit TIFFs as signed mode I: values >= 2**31 come out negative."""
    if img.mode != "I" or img.format != "TIFF":
        return False
    tags = getattr(img, "tag_v2", None) or {}
    bits, sample_format = tags.get(258), tags.get(339, 1)  # BitsPerSample, SampleFormat (1: unsigned)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) and sample_format else sample_format
    return bits == 32 and sample_format == 1


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255, a block of rows at a time (a 89 MP float
    image would need 700 MB as one float64 array)."""
    out = np.empty(arr.shape, np.uint8)
    scale = 255.0 / (hi - lo)
    step = max(1, (1 << 20) // max(1, arr.shape[1]))
    for r in range(0, arr.shape[0], step):
        block = (arr[r : r + step].astype(np.float64) - lo) * scale
        np.clip(block, 0.0, 255.0, out=block)  # float rounding only: every value lies in [lo, hi]
        out[r : r + step] = np.rint(block)
    return out


def to_8bit(img: Image.Image, unsigned32: bool = False) -> tuple[Image.Image, tuple[float, float] | None]:
    """A high-bit-depth greyscale image as mode L, scaled and never clipped; other
    modes unchanged (PIL already reduces 16-bit RGB(A) PNGs and TIFFs to 8 bits by
    their high byte). Returns the image and the source range mapped to 0..255:

    - unsigned 16-bit (I;16, I;16B, ...): the type's range, 0..65535 (a dark photo stays dark);
    - 32-bit integer (I): no white point to speak of, so its actual min..max;
    - float (F): 0..1 when every value lies there (the usual convention), else its
      actual min..max; NaN or infinite pixels are rejected (`non_finite_pixels`).
    A flat I or F image (one value everywhere) has no range to scale: `flat_image`."""
    mode = img.mode
    if mode.startswith("I;16"):
        return Image.fromarray(_LUT16[np.asarray(img)]), (0.0, 65535.0)
    if mode not in ("I", "F"):
        return img, None
    arr = np.asarray(img)
    if mode == "I":
        if unsigned32:
            arr = arr.view(np.uint32)
        lo, hi = int(arr.min()), int(arr.max())
    else:
        finite = np.isfinite(arr)
        if not finite.all():
            bad = arr.size - int(np.count_nonzero(finite))
            raise ImageRejected(
                "non_finite_pixels",
                f"mode F: {bad} of {arr.size} pixels are NaN or infinite ({int(np.isnan(arr).sum())} NaN)",
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
    if hi == lo:
        raise ImageRejected("flat_image", f"mode {mode}: every pixel is {lo}, no range to scale to 8 bits")
    return Image.fromarray(_stretch(arr, lo, hi)), (lo, hi)


def _source_size(header: tuple[int, int], decoded: tuple[int, int], shown: tuple[int, int]) -> tuple[int, int]:
    """The source's size as shown (after EXIF rotation): the header's size, swapped when
    the rotation swapped the decoded image's sides (a draft decode is smaller than the header)."""
    w, h = header
    return (h, w) if shown != decoded else (w, h)


def _decode(data: bytes, resize: int, max_pixels: int, budget: PixelBudget | None) -> Any:
    """Open, check the header's size, draft-decode a JPEG at the smallest scale whose short
    side is still >= resize (libjpeg scales by 1/2, 1/4 or 1/8 while decoding: a 24 MP photo
    for a 448 px cache decodes as 1.5 MP), reserve its pixels in the budget and decode.
    A context manager yielding (image, header size, unsigned32 TIFF); the budget is held
    until the block ends (the caller renders inside it)."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if w * h > max_pixels:  # before decoding: the header is the weapon
        raise ImageRejected("decompression_bomb", f"{w}x{h} > {max_pixels} pixels")
    if resize and img.format == "JPEG":
        img.draft("RGB", (resize, resize))
    # modes with more than 8 bits or 4 channels per pixel decode into more memory; pixels stay the unit
    return img, (w, h), (budget.reserve(img.width * img.height) if budget else contextlib.nullcontext())


def render_image(
    data: bytes, resize: int, min_side: int, max_pixels: int, budget: PixelBudget | None = None
) -> Rendition:
    """Decode, check, convert and resize image bytes into the JPEG the cache stores.
    Every way this can fail is an ImageRejected naming the reason: nothing here
    touches the disk, so no error from it may pass for a cache-disk problem. With a
    budget, the decoded pixels are reserved in it while the image is in memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img, header, hold = _decode(data, resize, max_pixels, budget)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("decompression_bomb", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt file
        raise ImageRejected("decode_error", f"{type(e).__name__}: {e}") from None
    with hold:
        return _render_decoded(img, header, resize, min_side, max_pixels)


def _render_decoded(
    img: Image.Image, header: tuple[int, int], resize: int, min_side: int, max_pixels: int
) -> Rendition:
    """The rest of render_image, on an opened image whose decode is budgeted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            unsigned32 = _is_unsigned32_tiff(img)
            decoded = img.size
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("decompression_bomb", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt file or EXIF block
        raise ImageRejected("decode_error", f"{type(e).__name__}: {e}") from None
    source_mode = img.mode
    sw, sh = _source_size(header, decoded, img.size)
    judge_size(sw, sh, min_side, max_pixels)
    try:
        img, value_range = to_8bit(img, unsigned32)
        img, colour = to_srgb(img)
        img = on_background(img)  # transparent areas onto BACKGROUND_RGB, as the demo page draws them
        short = min(img.size)
        if resize and short > resize:  # never upscale: a small image stays as it is
            scale = resize / short
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    except ImageRejected:
        raise
    except Exception as e:  # noqa: BLE001 - an exotic mode PIL cannot convert
        raise ImageRejected("unsupported_mode", f"mode {source_mode}: {type(e).__name__}: {e}") from None
    if max(img.size) > JPEG_MAX_SIDE:
        raise ImageRejected(
            "too_wide_for_jpeg",
            f"{img.width}x{img.height} after resizing; JPEG stores at "
            f"most {JPEG_MAX_SIDE} pixels a side (source {sw}x{sh})",
        )
    buf = io.BytesIO()
    try:
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    except Exception as e:  # noqa: BLE001 - into memory: an OSError is the encoder's, never the disk's
        raise ImageRejected(
            "encode_error", f"{img.width}x{img.height} mode {source_mode}: {type(e).__name__}: {e}"
        ) from None
    return Rendition(buf.getvalue(), img.width, img.height, sw, sh, source_mode, value_range, colour)


def render_student(main_jpeg: bytes, short_side: int) -> tuple[bytes, int, int] | None:
    """The student rendition of a main cached JPEG: resized (bicubic, as the main file
    was) to `short_side` and stored at the cache's JPEG quality; None when the image is
    no larger than that (the main file then serves as it is: never upscale).
    Made from the main file rather than the source: a cache that is already full gets
    its renditions without fetching anything again, and a rendition depends on the main
    file alone (which the index checks it against)."""
    try:
        img = Image.open(io.BytesIO(main_jpeg))
        if min(img.size) <= short_side:
            return None
        img = img.convert("RGB")
        scale = short_side / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    except Exception as e:  # noqa: BLE001 - our own file: unreadable means corrupt, reported per record
        raise ImageRejected("student_rendition_error", f"{type(e).__name__}: {e}") from None
    return buf.getvalue(), img.width, img.height


def process_image(data: bytes, resize: int, min_side: int, max_pixels: int) -> tuple[bytes, int, int]:
    """Decode, check and resize image bytes; return (jpeg bytes, width, height)."""
    r = render_image(data, resize, min_side, max_pixels)
    return r.jpeg, r.width, r.height


def _stat_key(st: os.stat_result) -> list[int]:
    """What changes when a file is rewritten, replaced or copied: its size, mtime,
    ctime (which no tool can set back) and inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")  # GCS lists md5s


def _entry_valid(
    cache_dir: Path, e: dict, settings: dict[str, Any], remote_objects: dict[str, tuple[int, str | None]] | None = None
) -> tuple[bool, str]:
    """Whether an index entry's cached file can be reused as it is, and how that was
    decided (or why not). The file is read only when its stat changed since it was
    verified, so an unchanged re-run reads no cached file; the one edit a stat cannot
    show is one that keeps size and inode within the filesystem's timestamp tick
    (milliseconds) of our own write. A gs:// cache is checked against the bucket's
    listing (size and md5), as a fresh pod has no local files to stat."""
    s = e.get("settings")
    if not isinstance(s, dict) or not all(k in e for k in ("file_sha256", "source_width", "source_height")):
        return False, "unknown_settings"  # an index written before settings were recorded
    if any(s.get(k) != settings[k] for k in RENDITION_KEYS):
        return False, "settings_changed"
    if e.get("cache_path") != cache_path_for(str(e.get("sha256"))):
        return False, "bad_entry"  # never follow a path the index did not derive from the hash
    return _file_valid(cache_dir, e, remote_objects)


def _file_valid(cache_dir: Path, e: dict, remote_objects: dict[str, tuple[int, str | None]] | None) -> tuple[bool, str]:
    """Whether the file an index entry (or its `student` part) records at e["cache_path"]
    is still the one it wrote: bytes, file_md5 (gs://), stat, else file_sha256."""
    if remote_objects is not None:  # a gs:// cache: the bucket holds the truth
        obj = remote_objects.get(e["cache_path"])
        if obj is None:
            return False, "missing_file"
        if obj[0] != e.get("bytes") or obj[1] != e.get("file_md5"):
            return False, "checksum_mismatch"
        return True, "listing"
    p = cache_dir / e["cache_path"]
    try:
        st = p.stat()
    except FileNotFoundError:
        return False, "missing_file"
    except OSError:
        return False, "unreadable_file"
    if st.st_size != e.get("bytes"):
        return False, "size_mismatch"
    if e.get("stat") == _stat_key(st):
        return True, "stat"
    try:
        digest = sha256_file(p)
    except OSError:
        return False, "unreadable_file"
    return (True, "rehashed") if digest == e.get("file_sha256") else (False, "checksum_mismatch")


def _student_valid(
    cache_dir: Path, e: dict, short_side: int, remote_objects: dict[str, tuple[int, str | None]] | None = None
) -> tuple[bool, str]:
    """Whether a (valid) main entry's student rendition can be reused, and how that was
    decided (or why not); the main file's own check covers a rendition that is it."""
    st = e.get("student")
    if not isinstance(st, dict):
        return False, "missing_entry"
    if st.get("resize") != short_side or st.get("version") != STUDENT_RENDITION_VERSION:
        return False, "settings_changed"
    if st.get("from_file_sha256") != e.get("file_sha256"):
        return False, "stale"  # made from a main file that has since been re-rendered
    if st.get("cache_path") == e["cache_path"]:
        return True, "same_as_main"
    if st.get("cache_path") != student_cache_path_for(str(e.get("sha256")), short_side):
        return False, "bad_entry"
    return _file_valid(cache_dir, st, remote_objects)


def _describe_os_error(err: BaseException) -> str:
    """The error and, for an OSError anywhere in its chain, its errno name (ENOSPC, EROFS, EIO)."""
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, OSError) and e.errno in errno.errorcode:
            return f"{errno.errorcode[e.errno]}: {err}"
        e = e.__cause__
    return str(err)


def cache_images(
    records: Iterable[dict | Record],
    cache_dir: str | os.PathLike,
    *,
    resize: int = 448,
    min_side: int = 100,
    max_pixels: int = MAX_PIXELS,
    policy: FetchPolicy | None = None,
    workers: int = 8,
    max_fail_rate: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
    fetcher: Fetcher | None = None,
    student_resize: int = 0,
    decode_pixel_budget: int = 0,
) -> CacheReport:
    """Cache every record's image; see the module docstring. student_resize > 0 also
    stores each image's student rendition at that short side (render_student). A record
    whose image cannot be fetched, decoded or rendered is reported and skipped; raises
    CacheWriteError when the cache itself cannot be written. The caller enforces
    the fail rate (check_fail_rate), after writing its outputs. decode_pixel_budget: the
    pixels the workers may decode at once (0: DECODE_PIXEL_BUDGET, at least max_pixels)."""
    student_resize = int(student_resize or 0)
    if student_resize < 0 or (student_resize and resize and student_resize > resize):
        raise ValueError(f"student_resize: {student_resize} must be 0 (off) or in [1, resize={resize}]")
    run = _CacheRun(
        cache_dir,
        cache_settings(resize, min_side, max_pixels),
        student_resize,
        fetcher or Fetcher(policy),
        PixelBudget(decode_pixel_budget or max(DECODE_PIXEL_BUDGET, max_pixels)),
    )
    return run.run([r.to_dict() if isinstance(r, Record) else dict(r) for r in records], workers, progress)


class _CacheRun:
    """One cache_images run: its cache location, index, settings, fetcher, decode budget and
    counters, shared by the worker threads (each caches one record at a time: cache_one)."""

    def __init__(
        self, cache_dir: str | os.PathLike, settings: dict, student_resize: int, fetcher: Fetcher, budget: PixelBudget
    ):
        self.cache_dir = cache_dir
        self.remote = RemoteCache(str(cache_dir)) if is_gs_uri(str(cache_dir)) else None
        self.root = self.remote.local if self.remote else Path(cache_dir)
        self.settings, self.student_resize, self.fetcher, self.budget = settings, student_resize, fetcher, budget
        self.checks: Counter = Counter()
        self.student_checks: Counter = Counter()
        self.phashes: Counter = Counter()
        self.lock = threading.Lock()
        self.remote_objects: dict[str, tuple[int, str | None]] | None = None
        self.store(lambda: self.root.mkdir(parents=True, exist_ok=True))
        if self.remote:
            self.remote.refresh(INDEX_NAME)
            self.remote_objects = self.remote.objects()
        self.index = self.store(lambda: CacheIndex(self.root, INDEX_NAME))

    def count(self, counter: Counter, key: str) -> None:
        with self.lock:
            counter[key] += 1

    def store(self, write: Callable[[], Any]) -> Any:
        """Writes to the cache: their failures are the cache's, and stop the step."""
        try:
            return write()
        except (OSError, RemoteCacheError) as err:
            raise CacheWriteError(
                f"cannot write to the image cache {self.cache_dir}: {_describe_os_error(err)}"
            ) from err

    def write_file(self, rel: str, data: bytes) -> os.stat_result:
        """A file into the cache (temp file + rename, never through a link), uploaded to a
        gs:// cache before any index line names it."""
        st = self.store(lambda: write_cache_file(self.root, rel, data))
        if self.remote:
            self.store(lambda: self.remote.upload(rel))
        return st

    def read_file(self, rel: str) -> bytes:
        """A cached file's bytes (a gs:// cache downloads it; failing, like the disk, stops the step)."""
        return self.store(lambda: Path(self.remote.fetch(rel) if self.remote else self.root / rel).read_bytes())

    def run(self, recs: list[dict], workers: int, progress: Callable[[int, int], None] | None) -> CacheReport:
        t0 = time.monotonic()
        results: list[Any] = [None] * len(recs)
        done = [0]
        progress = progress or _log_progress(len(recs))

        def work(i: int) -> None:
            url = str(recs[i].get("image_url", ""))
            try:
                results[i] = self.cache_one(url)
            except FetchError as err:
                results[i] = ("fail", err.reason, str(err))
            except ImageRejected as err:
                results[i] = ("fail", err.reason, f"{url}: {err.detail}")
            with self.lock:
                done[0] += 1
                progress(done[0], len(recs))

        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                list(pool.map(work, range(len(recs))))
        finally:
            self.index.close()
            if self.remote and (self.root / INDEX_NAME).exists():
                self.remote.upload(INDEX_NAME)
        report = _build_report(recs, results, self.student_resize)
        s = self.settings
        report.settings = {**s, "student_resize": self.student_resize} if self.student_resize else s
        report.index_checks = dict(sorted(self.checks.items()))
        report.student_renditions = dict(sorted(self.student_checks.items()))
        report.phashes = dict(sorted(self.phashes.items()))
        report.index_lines_ignored = self.index.ignored
        report.decode_pixels = {"budget": self.budget.total, "peak": self.budget.peak, "waits": self.budget.waits}
        report.seconds = time.monotonic() - t0
        return report

    def cache_one(self, url: str) -> tuple[str, dict, str]:
        """One record's URL: its valid index entry brought up to date, else fetched and rendered."""
        e = self.index.get(url)
        if e and "error" not in e:
            ok, how = _entry_valid(self.root, e, self.settings, self.remote_objects)
            self.count(self.checks, how)
            if ok:
                return "ok", self.reuse(e, how), "reused"
        return "ok", self.fetch_new(url), "fetched"

    def reuse(self, e: dict, how: str) -> dict:
        """A valid entry, completed where it lacks something this run needs (its stat after a
        rehash, a student rendition, a perceptual hash) from the cached file, never refetched;
        then re-judged (min_side / max_pixels may have changed since it was made)."""
        before = e
        if how == "rehashed":  # verified by content: record the new stat, the next run trusts it
            e = {**e, "stat": _stat_key(self.store(lambda: (self.root / e["cache_path"]).stat()))}
        if self.student_resize:
            s_ok, s_how = _student_valid(self.root, e, self.student_resize, self.remote_objects)
            if not s_ok:
                e = {**e, "student": self.student_part(e, None, s_how)}
            else:
                if s_how == "rehashed":
                    st = self.store(lambda: (self.root / e["student"]["cache_path"]).stat())
                    e = {**e, "student": {**e["student"], "stat": _stat_key(st)}}
                self.count(self.student_checks, s_how)
        if e.get(PHASH_FIELD) is None or e.get("phash_version") != PHASH_VERSION:
            e = {**e, **_phash_part(self.read_file(e["cache_path"]), e["cache_path"])}
            self.count(self.phashes, "from_cached_file")
        else:
            self.count(self.phashes, "indexed")
        if e is not before:
            self.store(lambda: self.index.add(e))
        try:
            judge_size(e["source_width"], e["source_height"], self.settings["min_side"], self.settings["max_pixels"])
        except ImageRejected as err:
            raise ImageRejected(err.reason, f"{err.detail} (source size from the cache index)") from None
        return e

    def fetch_new(self, url: str) -> dict:
        """Fetch, render and store one image, then index it (after its files are written)."""
        data = self.fetcher.fetch(url)
        sha = hashlib.sha256(data).hexdigest()
        s = self.settings
        r = render_image(data, s["resize"], s["min_side"], s["max_pixels"], self.budget)
        rel = cache_path_for(sha)
        e = {
            "url": url,
            "sha256": sha,
            "cache_path": rel,
            "cached_width": r.width,
            "cached_height": r.height,
            "bytes": len(r.jpeg),
            "resize": s["resize"],
            "v": INDEX_VERSION,
            "settings": s,
            "source_width": r.source_width,
            "source_height": r.source_height,
            "source_mode": r.source_mode,
            "file_sha256": hashlib.sha256(r.jpeg).hexdigest(),
            "file_md5": _md5_b64(r.jpeg),
            **_phash_part(r.jpeg, rel),
        }
        self.count(self.phashes, "computed_new")
        if r.value_range is not None:
            e["value_range"] = list(r.value_range)
        if r.colour is not None:
            e["colour"] = r.colour
        st = self.write_file(rel, r.jpeg)
        if not self.remote:
            e["stat"] = _stat_key(st)
        if self.student_resize:  # written (and uploaded) before the index line that names it
            e["student"] = self.student_part(e, r.jpeg, "built_new")
        self.store(lambda: self.index.add(e))
        if self.remote:
            self.store(lambda: self.remote.upload(INDEX_NAME, at_most_every=INDEX_PUSH_SECONDS))
        return e

    def student_part(self, e: dict, main_jpeg: bytes | None, why: str) -> dict:
        """Build, store and describe the student rendition of entry e (its main file
        valid): from main_jpeg, else read back from the cache (why: the reason, counted)."""
        self.count(self.student_checks, why)
        if main_jpeg is None:
            main_jpeg = self.read_file(e["cache_path"])
        made = render_student(main_jpeg, self.student_resize)
        part: dict[str, Any] = {
            "resize": self.student_resize,
            "version": STUDENT_RENDITION_VERSION,
            "from_file_sha256": e["file_sha256"],
        }
        if made is None:  # no larger than the rendition: the main file serves
            keys = ("cache_path", "bytes", "file_sha256", "file_md5")
            return {**part, **{k: e.get(k) for k in keys}, "width": e["cached_width"], "height": e["cached_height"]}
        jpeg, w, h = made
        rel = student_cache_path_for(e["sha256"], self.student_resize)
        part.update(
            {
                "cache_path": rel,
                "width": w,
                "height": h,
                "bytes": len(jpeg),
                "file_sha256": hashlib.sha256(jpeg).hexdigest(),
                "file_md5": _md5_b64(jpeg),
            }
        )
        st = self.write_file(rel, jpeg)
        if not self.remote:
            part["stat"] = _stat_key(st)
        return part


def _phash_part(jpeg: bytes, rel: str) -> dict[str, Any]:
    """The perceptual hash fields of an index entry, from the cached file's bytes (the image
    as training reads it). A cached file that no longer decodes is that record's rejection."""
    try:
        with Image.open(io.BytesIO(jpeg)) as img:
            value = dhash64(img)
    except Exception as e:  # noqa: BLE001 - our own file, unreadable: corrupt, reported per record
        raise ImageRejected("cached_file_unreadable", f"{rel}: {type(e).__name__}: {e}") from None
    return {PHASH_FIELD: to_hex(value), "phash_version": PHASH_VERSION}


def _build_report(recs: list[dict], results: list[Any], student_resize: int) -> CacheReport:
    """The cached records and failures of a run, in input order: the same bytes under two
    taxa excluded as label conflicts, the same bytes again under one taxon as duplicates."""
    report = CacheReport()
    conflicts = _label_conflicts(recs, results)
    seen: dict[str, str] = {}
    deep: Counter = Counter()
    counters: Counter = Counter()
    for rec, res in zip(recs, results, strict=True):
        failure = {"image_id": rec.get("image_id"), "image_url": rec.get("image_url"), "field": "image_url"}
        if res[0] == "fail":
            report.failures.append({**failure, "reason": res[1], "detail": res[2]})
            continue
        e, how = res[1], res[2]
        counters[how] += 1
        group = conflicts.get(e["sha256"])
        if group:  # one image, two names: which is right is for a curator, not for input order
            named = ", ".join(f"{g['taxon']!r} in {g['image_id']}" for g in group)
            detail = f"the same image (sha256 {e['sha256'][:12]}) is labelled {named}"
            report.failures.append(
                {**failure, "field": "taxon", "reason": "label_conflict", "conflict": group, "detail": detail}
            )
            continue
        if e["sha256"] in seen:  # same bytes and taxon as an earlier record: keep the first
            report.failures.append(
                {**failure, "reason": "duplicate_content", "detail": f"same image as {seen[e['sha256']]}"}
            )
            continue
        seen[e["sha256"]] = str(rec.get("image_id"))
        report.cached.append(_cached_record(rec, e, student_resize))
        if e.get("value_range") is not None:
            deep[str(e.get("source_mode"))] += 1
        if e.get("colour", "").startswith("converted"):
            counters["colour_converted"] += 1
    report.fetched, report.reused = counters["fetched"], counters["reused"]
    report.colour_converted = counters["colour_converted"]
    report.high_bit_depth = dict(sorted(deep.items()))
    return report


def _cached_record(rec: dict, e: dict, student_resize: int) -> dict:
    """A cached record as the later steps read it: the input record plus its cache fields."""
    out = {
        **rec,
        "sha256": e["sha256"],
        "cache_path": e["cache_path"],
        "cached_width": e["cached_width"],
        "cached_height": e["cached_height"],
        PHASH_FIELD: e[PHASH_FIELD],
    }
    if student_resize:
        sp = e["student"]
        out.update(
            {
                "student_cache_path": sp["cache_path"],
                "student_width": sp["width"],
                "student_height": sp["height"],
                "student_resize": student_resize,
            }
        )
    return out


def _label_conflicts(recs: list[dict], results: list[Any]) -> dict[str, list[dict]]:
    """sha256 -> every record with those bytes, for bytes cached under more than one taxon."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec, res in zip(recs, results, strict=True):
        if res[0] == "ok":
            groups[res[1]["sha256"]].append({"image_id": rec.get("image_id"), "taxon": rec.get("taxon")})
    return {sha: g for sha, g in groups.items() if len({str(x["taxon"]) for x in g}) > 1}


def _log_progress(total: int, every_s: float = 60.0) -> Callable[[int, int], None]:
    """The default progress callback: a line with rate and ETA at most every `every_s` seconds
    (a fixed share of a 741k-image catalogue can take an hour), and one at the end."""
    from shared.io.progress import Progress

    p = Progress(total, "image", label="cache_images", every_s=every_s)

    def log(done: int, total_: int) -> None:
        p.set(done)
        if done >= total_:
            p.finish()

    return log


def check_fail_rate(report: CacheReport, max_fail_rate: float) -> None:
    if report.fail_rate > max_fail_rate:
        top = ", ".join(
            f"{k}={v}"
            for k, v in Counter(f["reason"] for f in report.failures if f["reason"] not in NOT_FAILURES).most_common(5)
        )
        raise CacheFailRateError(
            f"{report.failed} of {report.attempted} images failed ({report.fail_rate:.1%}), above the "
            f"allowed {max_fail_rate:.1%}; top reasons: {top}. See the cache report for every URL."
        )


def run_cache_images(
    records_path: str,
    cache_dir: str,
    *,
    resize: int,
    min_side: int,
    max_fail_rate: float,
    workers: int,
    fetch_policy: dict,
    out_cached: str,
    out_report: str,
    max_pixels: int = MAX_PIXELS,
    student_resize: int = 0,
) -> dict[str, Any]:
    """The cache step: cache, write cached records + report, then enforce the fail rate."""
    report = cache_images(
        load_jsonl(records_path),
        cache_dir,
        resize=resize,
        min_side=min_side,
        max_pixels=max_pixels,
        policy=FetchPolicy.from_dict(fetch_policy),
        workers=workers,
        student_resize=student_resize,
    )
    write_jsonl(out_cached, report.cached)
    summary = report.to_dict()
    write_json(out_report, summary)
    check_fail_rate(report, max_fail_rate)
    return summary
