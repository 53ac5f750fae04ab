"""Catalogue data as it really comes, through the image cache (issue 22): each cached
image's perceptual hash kept (and added to older entries without refetching); a
partial last index line left by a kill; a symlinked folder inside the cache; gs://
URLs to buckets nobody listed and the Google API's error text; huge images against
the decode memory budget and JPEG draft decoding; ICC-tagged images converted to
sRGB; transparency on one background in training and in the demo page. Each test
fails if its guard is removed."""

import hashlib
import io
import json
import re
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from google.api_core import exceptions as gexc
from PIL import Image

from shared.data import image_cache
from shared.data.decode_budget import PixelBudget
from shared.data.fetch import Fetcher, FetchError, FetchPolicy
from shared.data.image_cache import INDEX_NAME, CacheWriteError, cache_images, render_image
from shared.data.image_colour import BACKGROUND_RGB
from shared.data.perceptual_hash import PHASH_FIELD, PHASH_VERSION, dhash64, to_hex
from shared.io import gcs
from tests.image_server import jpeg_bytes
from tests.reliability.test_image_cache_hostile import QUIET, CountingFetcher, _files, _png, _rec

ROOT = Path(__file__).resolve().parents[2]


def _cache(recs, cache, **kw):
    return cache_images(recs, cache, resize=100, min_side=100, **{**QUIET, **kw})


def _three(tmp_path):
    urls = _files(tmp_path / "src", {f"{i}.jpg": jpeg_bytes(240, 180, seed=40 + i) for i in range(3)})
    return [_rec(f"r{i}", urls[f"{i}.jpg"]) for i in range(3)]


def _index(cache) -> list[dict]:
    return [json.loads(line) for line in (cache / INDEX_NAME).read_text().splitlines() if line.startswith("{")]


# -- 1. perceptual hash -------------------------------------------------------------------


def test_each_cached_image_has_the_perceptual_hash_of_its_cached_file(tmp_path):
    cache = tmp_path / "cache"
    rep = _cache(_three(tmp_path), cache)
    assert rep.phashes == {"computed_new": 3}
    by_url = {e["url"]: e for e in _index(cache)}
    for r in rep.cached:
        with Image.open(cache / r["cache_path"]) as img:
            want = to_hex(dhash64(img))
        assert r[PHASH_FIELD] == want == by_url[r["image_url"]][PHASH_FIELD]
        assert re.fullmatch(r"[0-9a-f]{16}", r[PHASH_FIELD])
        assert by_url[r["image_url"]]["phash_version"] == PHASH_VERSION


@pytest.mark.parametrize("old", ["missing", "other_version"])
def test_entries_from_before_get_their_hash_from_the_cached_file_without_refetching(tmp_path, old):
    cache, recs = tmp_path / "cache", _three(tmp_path)
    first = _cache(recs, cache)
    lines = []
    for e in _index(cache):
        if old == "missing":
            e.pop(PHASH_FIELD), e.pop("phash_version")
        else:
            e["phash_version"], e[PHASH_FIELD] = PHASH_VERSION + 1, "0" * 16
        lines.append(json.dumps(e))
    (cache / INDEX_NAME).write_text("\n".join(lines) + "\n")
    f = CountingFetcher()
    again = _cache(recs, cache, fetcher=f)
    assert f.urls == [] and again.phashes == {"from_cached_file": 3}
    assert [r[PHASH_FIELD] for r in again.cached] == [r[PHASH_FIELD] for r in first.cached]
    assert _cache(recs, cache, fetcher=f).phashes == {"indexed": 3} and f.urls == []


# -- 11. a partial last index line --------------------------------------------------------


def test_a_partial_last_index_line_never_swallows_the_next_entry(tmp_path):
    cache, recs = tmp_path / "cache", _three(tmp_path)
    _cache(recs[:2], cache)
    whole = (cache / INDEX_NAME).read_text()
    with open(cache / INDEX_NAME, "a") as fh:  # killed in the middle of writing a third entry
        fh.write(whole.splitlines()[0][:57])
    f = CountingFetcher()
    second = _cache(recs, cache, fetcher=f)
    assert f.urls == [recs[2]["image_url"]]  # nothing already cached is fetched again
    assert second.index_lines_ignored == [
        {"line": 3, "why": "partial last line (no newline: a write cut short)", "bytes": 57}
    ]
    f.urls.clear()
    third = _cache(recs, cache, fetcher=f)
    assert f.urls == [] and third.reused == 3  # the entry written after the partial line is whole
    assert third.index_lines_ignored == [{"line": 3, "why": "not a JSON entry with a url", "bytes": 57}]


# -- 10. symlinks inside the cache --------------------------------------------------------


def test_cache_writes_never_follow_a_symlinked_folder_out_of_the_cache(tmp_path):
    data = jpeg_bytes(240, 180, seed=7)
    urls = _files(tmp_path / "src", {"a.jpg": data})
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    prefix = hashlib.sha256(data).hexdigest()[:2]
    (cache / prefix).symlink_to(outside, target_is_directory=True)
    with pytest.raises(CacheWriteError, match=rf"{re.escape(str(cache / prefix))}.*symbolic link"):
        _cache([_rec("a", urls["a.jpg"])], cache)
    assert list(outside.iterdir()) == []


def test_the_index_is_never_appended_through_a_symlink(tmp_path):
    urls = _files(tmp_path / "src", {"a.jpg": jpeg_bytes(240, 180, seed=8)})
    cache, victim = tmp_path / "cache", tmp_path / "victim.txt"
    cache.mkdir()
    victim.write_text("precious\n")
    (cache / INDEX_NAME).symlink_to(victim)
    with pytest.raises(CacheWriteError, match=rf"{re.escape(str(cache / INDEX_NAME))}.*symbolic link"):
        _cache([_rec("a", urls["a.jpg"])], cache)
    assert victim.read_text() == "precious\n"


# -- 5. gs:// buckets ---------------------------------------------------------------------


class _FakeBucket:
    def __init__(self, error):
        self.error = error

    def get_blob(self, name):
        raise self.error


class _FakeClient:
    def __init__(self, error):
        self.error = error

    def bucket(self, name):
        return _FakeBucket(self.error)


def test_gs_urls_are_refused_unless_their_bucket_is_listed(tmp_path, monkeypatch):
    def no_client():
        raise AssertionError("a storage client was made for a refused bucket")

    monkeypatch.setattr(gcs, "client", no_client)
    with pytest.raises(FetchError) as err:
        Fetcher(FetchPolicy()).fetch("gs://team-artifacts/models/secret.pt")
    assert err.value.reason == "blocked_bucket"
    assert "'team-artifacts'" in str(err.value) and "cache.fetch.gcs_bucket_allowlist" in str(err.value)
    with pytest.raises(FetchError, match="blocked_bucket"):
        Fetcher(FetchPolicy(gcs_bucket_allowlist=["plants"])).fetch("gs://plants-evil/a.jpg")
    rep = cache_images(
        [_rec("g", "gs://team-artifacts/a.jpg")],
        tmp_path / "cache",
        resize=100,
        min_side=100,
        workers=1,
        progress=lambda d, t: None,
    )
    assert rep.failures[0]["reason"] == "blocked_bucket" and "gcs_bucket_allowlist" in rep.failures[0]["detail"]
    with pytest.raises(ValueError, match="gcs_bucket_allowlist.*'gs://plants'"):
        FetchPolicy.from_dict({"gcs_bucket_allowlist": ["gs://plants"]})


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            gexc.Forbidden("GET https://storage.googleapis.com/x: sa-123@proj.iam does not have access"),
            "permission_denied",
        ),
        (gexc.Unauthorized("GET https://storage.googleapis.com/x: sa-123@proj.iam token expired"), "permission_denied"),
        (gexc.NotFound("GET https://storage.googleapis.com/x: sa-123@proj.iam No such object"), "not_found"),
        (gexc.ServiceUnavailable("GET https://storage.googleapis.com/x: sa-123@proj.iam backend"), "gcs_unavailable"),
        (gexc.TooManyRequests("GET https://storage.googleapis.com/x: sa-123@proj.iam slow down"), "rate_limited"),
    ],
)
def test_gcs_errors_are_short_reasons_without_the_apis_text(monkeypatch, error, reason):
    monkeypatch.setattr(gcs, "client", lambda: _FakeClient(error))
    with pytest.raises(FetchError) as err:
        Fetcher(FetchPolicy(gcs_bucket_allowlist=["plants"])).fetch("gs://plants/a.jpg")
    assert err.value.reason == reason
    assert "sa-123" not in str(err.value) and "googleapis" not in str(err.value)


# -- 9. decoding memory ---------------------------------------------------------------------


def test_the_pixel_budget_is_honoured_by_concurrent_workers():
    budget = PixelBudget(100)
    held, seen, lock = [0], [], threading.Lock()

    def worker(n):
        with budget.reserve(n) as got:
            with lock:
                held[0] += got
                seen.append(held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= got

    threads = [threading.Thread(target=worker, args=(n,)) for n in [40, 40, 40, 70, 30, 500, 10, 60] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert max(seen) <= 100 and budget.peak <= 100 and budget.in_flight == 0 and budget.waits > 0
    with budget.reserve(10**9) as got:  # larger than the budget: cut to it, not refused or stuck
        assert got == 100
    with pytest.raises(ValueError, match="budget"):
        PixelBudget(0)


def test_images_just_under_the_pixel_cap_decode_within_the_budget(tmp_path):
    rng = np.random.default_rng(3)
    images = {f"{i}.png": _png(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)) for i in range(4)}
    urls = _files(tmp_path / "src", images)
    recs = [_rec(f"b{i}", urls[f"{i}.png"]) for i in range(4)]
    cap = 2000 * 1500 + 1000  # each image is just under the cap; the budget holds one at a time
    rep = _cache(recs, tmp_path / "cache", max_pixels=cap, decode_pixel_budget=cap, workers=4)
    assert len(rep.cached) == 4
    assert rep.decode_pixels["budget"] == cap and 2000 * 1500 <= rep.decode_pixels["peak"] <= cap
    assert image_cache.MAX_PIXELS <= 50_000_000  # lowered from PIL's 89 MP for a 448 px cache


def test_a_huge_jpeg_is_draft_decoded_near_the_target_size():
    data = jpeg_bytes(4000, 3000, seed=9)
    budget = PixelBudget(1_000_000)  # the full decode (12 MP) would not fit
    r = render_image(data, 448, 100, 50_000_000, budget)
    assert (r.source_width, r.source_height) == (4000, 3000)  # judged on the source, not the draft
    assert min(r.width, r.height) == 448
    assert budget.peak == 1000 * 750  # decoded at 1/4 scale: the smallest whose short side is >= 448


# -- 6. colour -----------------------------------------------------------------------------


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def icc_rgb(description: str, red, green, blue, gamma: float) -> bytes:
    """A minimal ICC v2 RGB display profile (matrix + gamma), as cameras and editors embed."""

    def xyz(v):
        return b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in v)

    curv = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    text = description.encode("ascii") + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 11 + b"\0" * 67
    d50 = (0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"wtpt", xyz(d50)), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue))]
    tags += [(b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body))
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acspAPPL"
        + b"\0" * 24
        + b"".join(_s15(c) for c in d50)
        + b"\0" * 48
    )
    return header + struct.pack(">I", len(tags)) + table + body


# Adobe RGB (1998), its colorants adapted to D50 as in Adobe's own profile; gamma 563/256
ADOBE = {"red": (0.60974, 0.31111, 0.01947), "green": (0.20528, 0.62567, 0.06087), "blue": (0.14919, 0.06322, 0.74457)}
SRGB_D50 = np.array(
    [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]]
)


def _adobe_to_srgb(rgb) -> np.ndarray:
    """What a colour-managed browser shows for an Adobe RGB pixel, computed independently."""
    linear = (np.asarray(rgb) / 255.0) ** (563 / 256)
    s = np.clip(np.linalg.solve(SRGB_D50, np.array([ADOBE["red"], ADOBE["green"], ADOBE["blue"]]).T @ linear), 0, 1)
    return np.where(s <= 0.0031308, 12.92 * s, 1.055 * s ** (1 / 2.4) - 0.055) * 255


def test_an_image_with_a_wide_gamut_profile_is_cached_in_srgb(tmp_path):
    source = (200, 60, 60)
    buf = io.BytesIO()
    profile = icc_rgb("Test Adobe RGB", **ADOBE, gamma=563 / 256)
    Image.new("RGB", (240, 180), source).save(buf, "PNG", icc_profile=profile)
    urls = _files(tmp_path / "src", {"wide.png": buf.getvalue()})
    cache = tmp_path / "cache"
    rep = _cache([_rec("w", urls["wide.png"])], cache)
    with Image.open(cache / rep.cached[0]["cache_path"]) as img:
        got = np.asarray(img.convert("RGB"), dtype=float)[90, 120]
        assert "icc_profile" not in img.info  # plain sRGB, as the loaders read it
    want = _adobe_to_srgb(source)  # about (231, 57, 57): more saturated than the raw numbers
    assert np.abs(got - want).max() <= 3 and np.abs(got - np.array(source)).max() >= 25
    (e,) = _index(cache)
    assert e["colour"] == "converted from Test Adobe RGB" and rep.colour_converted == 1
    assert e["settings"]["rendition"] == image_cache.RENDITION_VERSION >= 3  # older entries re-rendered


# -- 7. transparency -----------------------------------------------------------------------


def test_transparency_has_one_background_in_training_and_in_the_demo_page(tmp_path):
    page = (ROOT / "shared/export/web/index.html").read_text()
    m = re.search(r"const BACKGROUND = 'rgb\((\d+), (\d+), (\d+)\)';", page)
    assert m and tuple(int(v) for v in m.groups()) == BACKGROUND_RGB
    body = page[page.index("function preprocess(") :]
    body = body[: body.index("\n}\n")]
    fill, draw = body.find("ctx.fillRect(0, 0, size, size)"), body.find("ctx.drawImage(")
    assert "ctx.fillStyle = BACKGROUND;" in body and 0 <= fill < draw  # filled before the photo is drawn
    clear = np.zeros((180, 240, 4), np.uint8)  # fully transparent (its colour channels black, as canvases read them)
    urls = _files(tmp_path / "src", {"clear.png": _png(clear)})
    rep = _cache([_rec("t", urls["clear.png"])], tmp_path / "cache")
    with Image.open(tmp_path / "cache" / rep.cached[0]["cache_path"]) as img:
        assert np.abs(np.asarray(img, dtype=int) - np.array(BACKGROUND_RGB)).max() <= 2
