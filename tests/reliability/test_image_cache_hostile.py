"""Hostile catalogue data through the image cache (issue 12): an image JPEG cannot
store, an encoder error and a real full disk told apart; 16-bit, 32-bit and float
images scaled rather than saturated; the same bytes under two taxa; a cache made
under looser settings, an index from before settings were recorded, and a cached
file replaced by another of the same size. Each test fails if its guard is removed."""

import errno
import io
import json
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.data import image_cache
from shared.data.cache_paths import resolve
from shared.data.fetch import Fetcher, FetchPolicy
from shared.data.image_cache import (
    INDEX_NAME,
    CacheWriteError,
    cache_images,
    render_image,
    run_cache_images,
    to_8bit,
)
from shared.io import gcs
from shared.io.records import load_jsonl, write_jsonl
from tests.image_server import jpeg_bytes

LOCAL = FetchPolicy(allow_local_paths=True)
QUIET = {"policy": LOCAL, "workers": 2, "progress": lambda d, t: None}


class CountingFetcher(Fetcher):
    """Local files only; remembers what was fetched (a reused entry fetches nothing)."""

    def __init__(self) -> None:
        super().__init__(LOCAL)
        self.urls: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.urls.append(url)
        return super().fetch(url)


def _files(d, images: dict[str, bytes]) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (d / name).write_bytes(data)
    return {name: str(d / name) for name in images}


def _rec(image_id: str, url: str, taxon: str = "Quercus ilex") -> dict:
    return {"image_id": image_id, "image_url": url, "taxon": taxon, "region": "EU_SW", "license": "CC0"}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey or RGB) from uint16 data; PIL cannot write 16-bit RGB itself."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def tiff(arr: np.ndarray) -> bytes:
    """An uncompressed little-endian TIFF of any integer/float numpy data (grey or RGB),
    for the kinds PIL cannot write (unsigned 32-bit, 16-bit RGB)."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    spp = 1 if arr.ndim == 2 else arr.shape[2]
    bits, fmt = arr.dtype.itemsize * 8, {"u": 1, "i": 2, "f": 3}[arr.dtype.kind]
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    n = 11
    extra = 8 + 2 + n * 12 + 4  # BitsPerSample and SampleFormat arrays after the IFD
    data_off = extra + 4 * spp

    def short(v: int) -> bytes:
        return struct.pack("<HH", v, 0)

    def long_(v: int) -> bytes:
        return struct.pack("<I", v)

    tags = [
        (256, 4, 1, long_(w)),
        (257, 4, 1, long_(h)),
        (258, 3, spp, short(bits) if spp == 1 else long_(extra)),
        (259, 3, 1, short(1)),
        (262, 3, 1, short(1 if spp == 1 else 2)),
        (273, 4, 1, long_(data_off)),
        (277, 3, 1, short(spp)),
        (278, 4, 1, long_(h)),
        (279, 4, 1, long_(len(data))),
        (284, 3, 1, short(1)),
        (339, 3, spp, short(fmt) if spp == 1 else long_(extra + 2 * spp)),
    ]
    ifd = struct.pack("<H", n) + b"".join(struct.pack("<HHI", *t[:3]) + t[3] for t in tags) + long_(0)
    arrays = struct.pack("<" + "H" * spp, *[bits] * spp) + struct.pack("<" + "H" * spp, *[fmt] * spp)
    return b"II*\x00" + long_(8) + ifd + arrays + data


def _pil_tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


# --- 1. one record never stops the step; a real disk error still does ----------------------


def test_image_too_wide_for_jpeg_is_rejected_and_the_step_goes_on(tmp_path):
    """A 70,000 x 8 PNG (560 kP, far under the pixel cap) used to fail the JPEG write,
    reported as a cache-disk problem: the whole step failed, on every re-run."""
    urls = _files(
        tmp_path / "src",
        {
            "wide.png": _png(np.full((8, 70_000), 90, np.uint8)),
            "tall.png": _png(np.full((70_000, 8), 90, np.uint8)),
            **{f"good{i}.jpg": jpeg_bytes(240, 200, seed=i) for i in range(3)},
        },
    )
    write_jsonl(tmp_path / "records.jsonl", [_rec(f"w{i}", u) for i, u in enumerate(urls.values())])
    out = {"out_cached": str(tmp_path / "cached.jsonl"), "out_report": str(tmp_path / "report.json")}
    for _ in range(2):  # and the re-run does the same, instead of failing again
        summary = run_cache_images(
            str(tmp_path / "records.jsonl"),
            str(tmp_path / "cache"),
            resize=448,
            min_side=8,
            max_fail_rate=0.05,
            workers=2,
            fetch_policy={"allow_local_paths": True},
            **out,
        )
        assert summary["fail_counts"] == {"too_wide_for_jpeg": 2} and summary["failed"] == 0
        assert [r["image_id"] for r in load_jsonl(out["out_cached"])] == ["w2", "w3", "w4"]
    failures = {f["image_id"]: f for f in json.loads((tmp_path / "report.json").read_text())["failures"]}
    assert "70000x8 after resizing" in failures["w0"]["detail"] and failures["w0"]["field"] == "image_url"
    assert "8x70000" in failures["w1"]["detail"]
    assert len(list((tmp_path / "cache").rglob("*.jpg"))) == 3


def test_an_encoder_error_is_the_records_rejection_not_a_disk_error(tmp_path, monkeypatch):
    """PIL reports encoder failures as OSError; encoding is into memory, so it is never the disk's."""
    urls = _files(tmp_path / "src", {"odd.jpg": jpeg_bytes(150, 120, seed=1), "ok.jpg": jpeg_bytes(240, 200)})
    real_save = Image.Image.save

    def failing_save(self, fp, format=None, **kw):
        if format == "JPEG" and self.width == 150:
            raise OSError("encoder error -2 when writing image file")
        return real_save(self, fp, format, **kw)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    rep = cache_images(
        [_rec("e0", urls["odd.jpg"]), _rec("e1", urls["ok.jpg"])], tmp_path / "cache", resize=448, min_side=100, **QUIET
    )
    assert [r["image_id"] for r in rep.cached] == ["e1"]
    assert rep.fail_counts == {"encode_error": 1} and "encoder error -2" in rep.failures[0]["detail"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_real_disk_error_still_stops_the_step_as_a_cache_error(tmp_path, monkeypatch, code):
    urls = _files(tmp_path / "src", {"a.jpg": jpeg_bytes(240, 200)})

    def broken(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(
        CacheWriteError,
        match=rf"cannot write to the image cache .*{errno.errorcode[code]}: "
        rf".*{os.strerror(code)}",
    ):
        cache_images([_rec("d0", urls["a.jpg"])], tmp_path / "cache", resize=100, min_side=100, **QUIET)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no partial file left


# --- 2. high-bit-depth and float images: scaled, never clipped ---------------------------------

RAMP = np.linspace(0.0, 1.0, 256)
ROWS = 104  # over min_side; a multiple of JPEG's 8-pixel blocks


def _grey(values: np.ndarray, dtype) -> np.ndarray:
    return np.tile(values.astype(dtype), (ROWS, 1))


def _unit(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint((v.astype(np.float64) - lo) / (hi - lo) * 255)


U16 = np.rint(RAMP * 65535)
DARK12 = np.rint(RAMP * 4095)  # 12-bit sensor data in a 16-bit container
I32 = np.rint(RAMP * 4e9 - 2e9)
U32 = np.rint(RAMP * 4e9)  # above 2**31: PIL reads these as negative int32
F_RANGE = RAMP * 25 - 5
CASES = {  # name: (bytes, source mode PIL gives, expected 8-bit row)
    "png_16bit_grey": (_png(_grey(U16, np.uint16)), "I;16", np.rint(U16 / 257)),
    "png_16bit_grey_12bit_data": (_png(_grey(DARK12, np.uint16)), "I;16", np.rint(DARK12 / 257)),
    "tiff_16bit_big_endian": (_pil_tiff(_grey(U16, ">u2")), "I;16B", np.rint(U16 / 257)),
    "tiff_int32": (_pil_tiff(_grey(I32, np.int32)), "I", _unit(I32, -2e9, 2e9)),
    "tiff_uint32": (tiff(_grey(U32, np.uint32)), "I", _unit(U32, 0, 4e9)),
    "tiff_float_0_1": (_pil_tiff(_grey(RAMP, np.float32)), "F", np.rint(RAMP.astype(np.float32) * 255.0)),
    "tiff_float_range": (
        _pil_tiff(_grey(F_RANGE, np.float32)),
        "F",
        _unit(F_RANGE.astype(np.float32), float(np.float32(-5)), float(np.float32(20))),
    ),
    "png_16bit_rgb": (png16(np.stack([_grey(U16, np.uint16)] * 3, -1)), "RGB", np.floor(U16 / 256)),
    "tiff_16bit_rgb": (tiff(np.stack([_grey(U16, np.uint16)] * 3, -1)), "RGB", np.rint(U16 / 257)),
}


@pytest.mark.parametrize("name", CASES)
def test_high_bit_depth_images_are_scaled_not_saturated(name):
    data, mode, expected = CASES[name]
    src = Image.open(io.BytesIO(data))
    assert src.mode == mode  # the case exercises the mode it claims to
    if mode != "RGB":  # the conversion itself is exact
        got, _ = to_8bit(src, image_cache._is_unsigned32_tiff(src))
        assert got.mode == "L" and np.array_equal(np.asarray(got)[0], expected.astype(np.uint8))
    r = render_image(data, resize=0, min_side=100, max_pixels=10**8)
    assert (r.width, r.height, r.source_mode) == (256, ROWS, mode)
    row = np.asarray(Image.open(io.BytesIO(r.jpeg)).convert("L"), np.float64)[ROWS // 2]
    assert np.abs(row - expected).max() <= 4, (row[::32], expected[::32])  # JPEG noise only
    assert (row >= 250).sum() < 16 and np.ptp(expected) - np.ptp(row) <= 8  # a gradient, not white


def test_float_pixels_that_are_not_numbers_and_flat_images_are_rejected_by_reason():
    nan = _grey(RAMP, np.float32)
    nan[5, 7] = np.nan
    inf = _grey(RAMP * 3, np.float32)
    inf[0, 0] = np.inf
    cases = {
        "non_finite_pixels": [nan, inf],
        "flat_image": [np.full((ROWS, 256), 3.0, np.float32), np.full((ROWS, 256), 70_000, np.int32)],
    }
    for reason, arrays in cases.items():
        for arr in arrays:
            with pytest.raises(image_cache.ImageRejected) as e:
                render_image(_pil_tiff(arr), resize=0, min_side=100, max_pixels=10**8)
            assert e.value.reason == reason, e.value
    assert "1 of 26624 pixels are NaN or infinite (1 NaN)" in str(
        pytest.raises(image_cache.ImageRejected, render_image, _pil_tiff(nan), 0, 100, 10**8).value
    )
    # a flat float image inside 0..1 has a meaning (mid grey), not a missing range
    r = render_image(_pil_tiff(np.full((ROWS, 256), 0.5, np.float32)), resize=0, min_side=100, max_pixels=10**8)
    assert abs(np.asarray(Image.open(io.BytesIO(r.jpeg)).convert("L")).mean() - 128) <= 1


def test_high_bit_depth_conversions_are_reported_and_indexed(tmp_path):
    urls = _files(
        tmp_path / "src",
        {"g16.png": CASES["png_16bit_grey"][0], "f.tif": CASES["tiff_float_range"][0], "ok.jpg": jpeg_bytes(240, 200)},
    )
    rep = cache_images(
        [_rec(f"h{i}", u) for i, u in enumerate(urls.values())], tmp_path / "cache", resize=0, min_side=100, **QUIET
    )
    assert len(rep.cached) == 3 and rep.to_dict()["high_bit_depth"] == {"F": 1, "I;16": 1}
    index = [json.loads(line) for line in (tmp_path / "cache" / INDEX_NAME).read_text().splitlines()]
    assert {e["source_mode"]: e.get("value_range") for e in index} == {
        "I;16": [0.0, 65535.0],
        "F": [-5.0, 20.0],
        "RGB": None,
    }


# --- 3. the same image under two taxa ------------------------------------------------------------


def test_same_bytes_under_two_taxa_are_both_excluded_and_reported(tmp_path):
    x, y = jpeg_bytes(240, 200, seed=1), jpeg_bytes(240, 200, seed=2)
    urls = _files(
        tmp_path / "src",
        {"x.jpg": x, "x_again.jpg": x, "y.jpg": y, "y_again.jpg": y, "z.jpg": jpeg_bytes(240, 200, seed=3)},
    )
    recs = [
        _rec("a", urls["x.jpg"], "Quercus ilex"),
        _rec("b", urls["x_again.jpg"], "Quercus suber"),
        _rec("c", urls["y.jpg"], "Pinus pinea"),
        _rec("d", urls["y_again.jpg"], "Pinus pinea"),
        _rec("e", urls["z.jpg"], "Pinus pinea"),
    ]
    for order in (recs, recs[::-1]):  # input order decides nothing
        write_jsonl(tmp_path / "records.jsonl", order)
        summary = run_cache_images(
            str(tmp_path / "records.jsonl"),
            str(tmp_path / "cache"),
            resize=100,
            min_side=100,
            max_fail_rate=0.05,
            workers=2,
            fetch_policy={"allow_local_paths": True},
            out_cached=str(tmp_path / "cached.jsonl"),
            out_report=str(tmp_path / "r.json"),
        )
        cached = {r["image_id"] for r in load_jsonl(tmp_path / "cached.jsonl")}
        assert cached.isdisjoint({"a", "b"}) and {"e"} <= cached and len(cached & {"c", "d"}) == 1
        assert summary["label_conflicts"] == 2 and summary["duplicates"] == 1 and summary["failed"] == 0
        report = json.loads((tmp_path / "r.json").read_text())
        conflicts = {f["image_id"]: f for f in report["failures"] if f["reason"] == "label_conflict"}
        assert set(conflicts) == {"a", "b"}
        for f in conflicts.values():
            assert f["field"] == "taxon"
            assert sorted(f["conflict"], key=lambda g: g["image_id"]) == [
                {"image_id": "a", "taxon": "Quercus ilex"},
                {"image_id": "b", "taxon": "Quercus suber"},
            ]
            for word in ("'Quercus ilex' in a", "'Quercus suber' in b"):
                assert word in f["detail"]


# --- 4. settings and checksums in the index ------------------------------------------------------


def test_raised_min_side_and_lowered_max_pixels_rejudge_cached_entries(tmp_path):
    urls = _files(tmp_path / "src", {"small.jpg": jpeg_bytes(80, 70, seed=1), "big.jpg": jpeg_bytes(240, 200)})
    recs = [_rec("s", urls["small.jpg"]), _rec("b", urls["big.jpg"])]
    cache = tmp_path / "cache"
    first = cache_images(recs, cache, resize=60, min_side=50, **QUIET)
    assert [r["image_id"] for r in first.cached] == ["s", "b"]

    f = CountingFetcher()
    raised = cache_images(recs, cache, resize=60, min_side=100, fetcher=f, workers=2, progress=lambda d, t: None)
    assert f.urls == []  # judged on the source size the index recorded, nothing refetched
    assert [r["image_id"] for r in raised.cached] == ["b"] and raised.fail_counts == {"too_small": 1}
    assert "80x70 < 100px (source size from the cache index)" in raised.failures[0]["detail"]

    lowered = cache_images(
        recs, cache, resize=60, min_side=50, max_pixels=40_000, fetcher=f, workers=2, progress=lambda d, t: None
    )
    assert lowered.fail_counts == {"decompression_bomb": 1} and "240x200 > 40000" in lowered.failures[0]["detail"]

    back = cache_images(recs, cache, resize=60, min_side=50, fetcher=f, workers=2, progress=lambda d, t: None)
    assert back.cached == first.cached and f.urls == [] and back.reused == 2


def test_an_index_without_settings_is_rechecked(tmp_path):
    """An index written before settings were recorded: each entry is unknown, so re-fetched
    and judged again (here the small image, accepted under min_side=50, now refused)."""
    urls = _files(tmp_path / "src", {"small.jpg": jpeg_bytes(80, 70, seed=1), "big.jpg": jpeg_bytes(240, 200)})
    recs = [_rec("s", urls["small.jpg"]), _rec("b", urls["big.jpg"])]
    cache = tmp_path / "cache"
    cache_images(recs, cache, resize=60, min_side=50, **QUIET)
    old_keys = ("url", "sha256", "cache_path", "cached_width", "cached_height", "bytes", "resize")
    index = cache / INDEX_NAME
    lines = [json.loads(line) for line in index.read_text().splitlines()]
    index.write_text("".join(json.dumps({k: e[k] for k in old_keys}) + "\n" for e in lines))

    f = CountingFetcher()
    rep = cache_images(recs, cache, resize=60, min_side=100, fetcher=f, workers=2, progress=lambda d, t: None)
    assert sorted(f.urls) == sorted(urls.values()) and rep.index_checks == {"unknown_settings": 2}
    assert [r["image_id"] for r in rep.cached] == ["b"] and rep.fail_counts == {"too_small": 1}
    f.urls.clear()
    again = cache_images(recs, cache, resize=60, min_side=100, fetcher=f, workers=2, progress=lambda d, t: None)
    assert again.reused == 1 and again.index_checks["stat"] == 1  # the rewritten entry is trusted now
    # a rejected image is not indexed (as before): its old entry stays unknown and it is judged afresh
    assert f.urls == [urls["small.jpg"]] and again.fail_counts == {"too_small": 1}


def _replace_same_size(path, how: str) -> None:
    old = path.read_bytes()
    new = old[:200] + bytes(255 - b for b in old[200:400]) + old[400:]
    st = path.stat()
    time.sleep(0.02)  # past the filesystem's timestamp tick, as any later edit is
    if how == "in_place_mtime_kept":  # `cp -p`, `rsync -t` or a restore from backup
        with open(path, "r+b") as fh:
            fh.write(new)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        tmp = path.with_suffix(".new")
        tmp.write_bytes(new)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


@pytest.mark.parametrize("how", ["in_place_mtime_kept", "renamed_over"])
def test_a_same_size_replacement_of_a_cached_file_is_refetched(tmp_path, how):
    urls = _files(tmp_path / "src", {f"r{i}.jpg": jpeg_bytes(240, 200, seed=i) for i in range(3)})
    recs = [_rec(f"r{i}", u) for i, u in enumerate(urls.values())]
    cache = tmp_path / "cache"
    first = cache_images(recs, cache, resize=100, min_side=100, **QUIET)
    victim = resolve(cache, first.cached[1])
    original = victim.read_bytes()
    _replace_same_size(victim, how)

    f = CountingFetcher()
    rep = cache_images(recs, cache, resize=100, min_side=100, fetcher=f, workers=2, progress=lambda d, t: None)
    assert f.urls == [recs[1]["image_url"]] and rep.index_checks == {"checksum_mismatch": 1, "stat": 2}
    assert victim.read_bytes() == original and rep.cached == first.cached


def test_unchanged_reruns_read_no_cached_file_and_a_touched_one_is_hashed_once(tmp_path, monkeypatch):
    urls = _files(tmp_path / "src", {f"t{i}.jpg": jpeg_bytes(240, 200, seed=i) for i in range(3)})
    recs = [_rec(f"t{i}", u) for i, u in enumerate(urls.values())]
    cache = tmp_path / "cache"
    first = cache_images(recs, cache, resize=100, min_side=100, **QUIET)
    hashed: list[str] = []
    real = image_cache.sha256_file
    monkeypatch.setattr(image_cache, "sha256_file", lambda p: hashed.append(str(p)) or real(p))

    assert cache_images(recs, cache, resize=100, min_side=100, **QUIET).index_checks == {"stat": 3}
    assert hashed == []  # size, mtime, ctime and inode as recorded: no file read
    touched = resolve(cache, first.cached[0])
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new stat (e.g. a copy)
    rep = cache_images(recs, cache, resize=100, min_side=100, **QUIET)
    assert rep.index_checks == {"rehashed": 1, "stat": 2} and rep.fetched == 0 and hashed == [str(touched)]
    assert cache_images(recs, cache, resize=100, min_side=100, **QUIET).index_checks == {"stat": 3}
    assert len(hashed) == 1  # the verified stat was recorded: hashed once, not on every run


def test_a_same_size_replacement_in_a_bucket_cache_is_refetched(tmp_path, monkeypatch):
    """gs:// cache: a fresh pod has no local files to stat; the bucket listing's md5 decides."""
    from tests.gcs_emulator import gcs_emulator

    with gcs_emulator("plants"):
        bucket = gcs.client().bucket("plants")
        urls = _files(tmp_path / "src", {f"b{i}.jpg": jpeg_bytes(240, 200, seed=40 + i) for i in range(2)})
        recs = [_rec(f"b{i}", u) for i, u in enumerate(urls.values())]
        uri = "gs://plants/hostile-cache"
        monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod1"))
        first = cache_images(recs, uri, resize=100, min_side=100, **QUIET)
        blob = bucket.blob("hostile-cache/" + first.cached[0]["cache_path"])
        old = blob.download_as_bytes()
        blob.upload_from_string(old[:300] + bytes(255 - b for b in old[300:500]) + old[500:])

        monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod2"))
        f = CountingFetcher()
        rep = cache_images(recs, uri, resize=100, min_side=100, fetcher=f, workers=2, progress=lambda d, t: None)
        assert f.urls == [recs[0]["image_url"]] and rep.index_checks == {"checksum_mismatch": 1, "listing": 1}
        assert blob.download_as_bytes() == old and rep.cached == first.cached
