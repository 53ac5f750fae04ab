import io
import json

import numpy as np
import pytest
from PIL import Image

from shared.fetch import FetchPolicy
from shared.image_cache import (CacheFailRateError, cache_images, check_fail_rate, process_image,
                                resolve, run_cache_images)
from shared.records import load_jsonl, write_jsonl
from tests.image_server import ImageServer, jpeg_bytes

POLICY = FetchPolicy(allow_private_networks=True, backoff_s=0.01, timeout_s=0.5, retries=1,
                     per_host_rate=0)


def _png(w, h, mode="RGBA"):
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 200, 30, 128) if mode == "RGBA" else 0).save(buf, "PNG")
    return buf.getvalue()


def _rec(i, url):
    return {"image_id": f"i{i}", "image_url": url, "taxon": "t", "region": "EU_SW", "license": "CC0"}


@pytest.fixture()
def server():
    with ImageServer(slow_seconds=1.5) as s:
        yield s


def test_mixed_failures_rate_and_reasons(server, tmp_path):
    good = [server.add(f"g{i}.jpg", jpeg_bytes(300, 220, seed=i)) for i in range(12)]
    tiny = server.add("tiny.jpg", jpeg_bytes(80, 60, seed=99))
    corrupt = server.add("bad.jpg", b"\xff\xd8\xff not a jpeg")
    urls = good + [f"{server.base}/404.jpg", f"{server.base}/429once/g0.jpg", f"{server.base}/slow",
                   corrupt, tiny, good[3]]
    recs = [_rec(i, u) for i, u in enumerate(urls)]
    recs[-1]["image_url"] = f"{server.base}/redirect/g3.jpg"  # same bytes as g3: a duplicate
    rep = cache_images(recs, tmp_path, resize=100, min_side=100, policy=POLICY, workers=4)
    counts = rep.fail_counts
    assert counts == {"http_404": 1, "timeout": 1, "decode_error": 1, "too_small": 1,
                      "duplicate_content": 2}  # 429once/g0 and redirect/g3 duplicate g0 and g3
    assert server.hits["/429once/g0.jpg"] == 2  # the 429 was retried
    assert len(rep.cached) == 12
    assert rep.failed == 3 and rep.fail_rate == pytest.approx(3 / 18)
    with pytest.raises(CacheFailRateError, match=r"3 of 18 images failed .*http_404=1"):
        check_fail_rate(rep, 0.05)
    check_fail_rate(rep, 0.2)
    first = rep.cached[0]
    img = Image.open(resolve(tmp_path, first))
    assert min(img.size) == 100 and first["cached_width"] == img.width
    assert first["cache_path"] == f"{first['sha256'][:2]}/{first['sha256']}.jpg"


def test_resume_fetches_nothing_and_refetches_truncated(server, tmp_path):
    urls = [server.add(f"r{i}.jpg", jpeg_bytes(240, 200, seed=i)) for i in range(6)]
    recs = [_rec(i, u) for i, u in enumerate(urls)]
    a = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY)
    hits = sum(server.hits.values())
    b = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY)
    assert sum(server.hits.values()) == hits and b.fetched == 0 and b.reused == 6
    assert a.cached == b.cached
    # Truncate one cached file and corrupt the index's last line: only that one is refetched.
    victim = resolve(tmp_path, a.cached[2])
    victim.write_bytes(victim.read_bytes()[:50])
    with open(tmp_path / "index.jsonl", "a") as f:
        f.write('{"url": "http://x/trunc')
    c = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY)
    assert c.fetched == 1 and c.reused == 5 and c.cached == a.cached
    assert Image.open(victim).size[1] == 120
    # A different resize is a different cache content: refetched.
    d = cache_images(recs, tmp_path, resize=110, min_side=100, policy=POLICY)
    assert d.fetched == 6


def test_process_image_modes_bombs_and_no_upscale():
    data, w, h = process_image(_png(300, 200), resize=100, min_side=50, max_pixels=10**8)
    assert (w, h) == (150, 100) and Image.open(io.BytesIO(data)).mode == "RGB"
    data, w, h = process_image(_png(150, 120, "L"), resize=448, min_side=100, max_pixels=10**8)
    assert (w, h) == (150, 120)  # smaller than resize: kept, never upscaled
    from shared.image_cache import ImageRejected
    with pytest.raises(ImageRejected) as e:
        process_image(_png(2000, 2000, "L"), resize=100, min_side=10, max_pixels=1_000_000)
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(ImageRejected) as e:
        process_image(b"GIF89a garbage", 100, 10, 10**8)
    assert e.value.reason == "decode_error"


def test_index_records_settings_source_size_and_checksums(server, tmp_path):
    from shared.atomic import sha256_file
    from shared.image_cache import INDEX_NAME, cache_settings

    url = server.add("s.jpg", jpeg_bytes(300, 220, seed=5))
    (rec,) = cache_images([_rec(0, url)], tmp_path, resize=100, min_side=100, max_pixels=10**7,
                          policy=POLICY).cached
    (e,) = [json.loads(line) for line in (tmp_path / INDEX_NAME).read_text().splitlines()]
    assert e["settings"] == cache_settings(100, 100, 10**7) == {
        "resize": 100, "min_side": 100, "max_pixels": 10**7, "jpeg_quality": 90, "rendition": 2}
    assert (e["source_width"], e["source_height"], e["source_mode"]) == (300, 220, "RGB")
    assert (e["cached_width"], e["cached_height"], e["resize"]) == (136, 100, 100)  # old readers' keys kept
    path = resolve(tmp_path, rec)
    assert e["file_sha256"] == sha256_file(path) and e["bytes"] == path.stat().st_size
    assert e["stat"][:2] == [path.stat().st_size, path.stat().st_mtime_ns]


def test_resolve_refuses_escape(tmp_path):
    with pytest.raises(ValueError, match="escapes the cache"):
        resolve(tmp_path, {"image_id": "x", "cache_path": "../../etc/passwd"})


def test_run_cache_images_writes_report_before_failing(server, tmp_path):
    recs = [_rec(0, server.add("ok.jpg", jpeg_bytes(220, 200))), _rec(1, f"{server.base}/404.jpg")]
    write_jsonl(tmp_path / "r.jsonl", recs)
    out_c, out_r = tmp_path / "cached.jsonl", tmp_path / "report.json"
    with pytest.raises(CacheFailRateError):
        run_cache_images(str(tmp_path / "r.jsonl"), str(tmp_path / "cache"), resize=100, min_side=100,
                         max_fail_rate=0.05, workers=2,
                         fetch_policy={"allow_private_networks": True, "retries": 0},
                         out_cached=str(out_c), out_report=str(out_r))
    assert json.loads(out_r.read_text())["fail_counts"] == {"http_404": 1}
    assert [r["image_id"] for r in load_jsonl(out_c)] == ["i0"]


def test_local_catalogue_with_default_policy_is_refused(sample_catalogue, tmp_path):
    recs = load_jsonl(sample_catalogue / "records.jsonl")[:5]
    rep = cache_images(recs, tmp_path, resize=64, policy=FetchPolicy())
    assert rep.fail_counts == {"blocked_scheme": 5}
