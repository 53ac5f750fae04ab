"""Hostile image bytes through the whole cache step: decompression bombs (pixel and
gzip), truncated and fake images, too-small images, an image wider than JPEG stores. Each is rejected with a named
reason and leaves nothing in the cache; the good images beside them are cached."""

import gzip
import io
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from shared.data.fetch import Fetcher, FetchError, FetchPolicy
from shared.data.image_cache import cache_images
from tests.image_server import jpeg_bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes that claim width x height pixels (a classic pixel bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    body = zlib.compress(row * 4, 9)  # only a few rows: the header is the weapon
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _png_l(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 120).save(buf, "PNG")
    return buf.getvalue()


def _rec(i, url):
    return {"image_id": f"b{i}", "image_url": url, "taxon": "t", "region": "EU_SW", "license": "CC0"}


@pytest.fixture()
def files(tmp_path):
    good = jpeg_bytes(240, 200, seed=3)
    cases = {
        "good.jpg": good,
        "pixel_bomb.png": png_declaring(60_000, 60_000),  # 3.6 gigapixels declared
        "moderate_bomb.png": png_declaring(8_000, 8_000),  # 64 MP: above our 50 MP cap, below PIL's 89 MP warning
        "truncated.jpg": good[: len(good) // 3],
        "html_as_jpg.jpg": b"<!doctype html><html><body>not an image</body></html>",
        "empty.jpg": b"",
        "tiny.jpg": jpeg_bytes(90, 60, seed=1),
        "too_wide.png": _png_l(70_000, 100),  # 7 MP, under every cap, but JPEG stores 65,500 px a side
    }
    src = tmp_path / "src"
    src.mkdir()
    for name, data in cases.items():
        (src / name).write_bytes(data)
    return src


EXPECTED = {
    "pixel_bomb.png": "decompression_bomb",
    "moderate_bomb.png": "decompression_bomb",
    "truncated.jpg": "decode_error",
    "html_as_jpg.jpg": "decode_error",
    "empty.jpg": "decode_error",
    "tiny.jpg": "too_small",
    "too_wide.png": "too_wide_for_jpeg",
}


def test_hostile_images_are_rejected_by_reason_and_never_cached(files, tmp_path):
    names = sorted(p.name for p in files.iterdir())
    recs = [_rec(i, str(files / n)) for i, n in enumerate(names)]
    cache = tmp_path / "cache"
    rep = cache_images(
        recs,
        cache,
        resize=100,
        min_side=100,
        max_pixels=50_000_000,
        policy=FetchPolicy(allow_local_paths=True),
        workers=2,
        progress=lambda d, t: None,
    )
    assert [r["image_url"] for r in rep.cached] == [str(files / "good.jpg")]
    by_url = {f["image_url"]: f["reason"] for f in rep.failures}
    assert {u.rsplit("/", 1)[1]: r for u, r in by_url.items()} == EXPECTED
    for f in rep.failures:  # each failure names its record and says why
        assert f["image_id"].startswith("b") and f.get("detail") is not None
    stored = [p for p in cache.rglob("*") if p.is_file() and p.suffix == ".jpg"]
    assert len(stored) == 1  # only the good image is in the cache


class _Gzip(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        body = gzip.compress(b"\x00" * 50_000_000, 9)  # 50 MB of zeros in ~50 kB
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_gzip_bomb_is_cut_on_the_decoded_size():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Gzip)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        f = Fetcher(FetchPolicy(allow_private_networks=True, per_host_rate=0, retries=0, max_bytes=5_000_000))
        with pytest.raises(FetchError) as e:
            f.fetch(f"http://127.0.0.1:{httpd.server_address[1]}/x.jpg")
        assert e.value.reason == "too_large"  # the 50 kB on the wire would have passed a wire-size cap
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_good_image_still_decodes_after_the_checks(files, tmp_path):
    rep = cache_images(
        [_rec(0, str(files / "good.jpg"))],
        tmp_path / "c",
        resize=100,
        min_side=100,
        policy=FetchPolicy(allow_local_paths=True),
        workers=1,
        progress=lambda d, t: None,
    )
    (entry,) = rep.cached
    img = Image.open(io.BytesIO((tmp_path / "c" / entry["cache_path"]).read_bytes()))
    assert min(img.size) == 100 and img.mode == "RGB"
