import io
import json

import pytest
from PIL import Image

from shared.data.cache_paths import resolve
from shared.data.fetch import FetchPolicy
from shared.data.image_cache import (
    CacheFailRateError,
    cache_images,
    check_fail_rate,
    process_image,
    run_cache_images,
)
from shared.io.records import load_jsonl, write_jsonl
from tests.image_server import ImageServer, jpeg_bytes

POLICY = FetchPolicy(allow_private_networks=True, backoff_s=0.01, timeout_s=0.5, retries=1, per_host_rate=0)


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
    urls = good + [
        f"{server.base}/404.jpg",
        f"{server.base}/429once/g0.jpg",
        f"{server.base}/slow",
        corrupt,
        tiny,
        good[3],
    ]
    recs = [_rec(i, u) for i, u in enumerate(urls)]
    recs[-1]["image_url"] = f"{server.base}/redirect/g3.jpg"  # same bytes as g3: a duplicate
    rep = cache_images(recs, tmp_path, resize=100, min_side=100, policy=POLICY, workers=4)
    counts = rep.fail_counts
    assert counts == {
        "http_404": 1,
        "timeout": 1,
        "decode_error": 1,
        "too_small": 1,
        "duplicate_content": 2,
    }  # 429once/g0 and redirect/g3 duplicate g0 and g3
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
    from shared.data.image_cache import ImageRejected

    with pytest.raises(ImageRejected) as e:
        process_image(_png(2000, 2000, "L"), resize=100, min_side=10, max_pixels=1_000_000)
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(ImageRejected) as e:
        process_image(b"GIF89a garbage", 100, 10, 10**8)
    assert e.value.reason == "decode_error"


def test_index_records_settings_source_size_and_checksums(server, tmp_path):
    from shared.data.image_cache import INDEX_NAME, RENDITION_VERSION, cache_settings
    from shared.io.atomic import sha256_file

    url = server.add("s.jpg", jpeg_bytes(300, 220, seed=5))
    (rec,) = cache_images([_rec(0, url)], tmp_path, resize=100, min_side=100, max_pixels=10**7, policy=POLICY).cached
    (e,) = [json.loads(line) for line in (tmp_path / INDEX_NAME).read_text().splitlines()]
    assert (
        e["settings"]
        == cache_settings(100, 100, 10**7)
        == {"resize": 100, "min_side": 100, "max_pixels": 10**7, "jpeg_quality": 90, "rendition": RENDITION_VERSION}
    )
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
        run_cache_images(
            str(tmp_path / "r.jsonl"),
            str(tmp_path / "cache"),
            resize=100,
            min_side=100,
            max_fail_rate=0.05,
            workers=2,
            fetch_policy={"allow_private_networks": True, "retries": 0},
            out_cached=str(out_c),
            out_report=str(out_r),
        )
    assert json.loads(out_r.read_text())["fail_counts"] == {"http_404": 1}
    assert [r["image_id"] for r in load_jsonl(out_c)] == ["i0"]


def test_local_catalogue_with_default_policy_is_refused(sample_catalogue, tmp_path):
    recs = load_jsonl(sample_catalogue / "records.jsonl")[:5]
    rep = cache_images(recs, tmp_path, resize=64, policy=FetchPolicy())
    assert rep.fail_counts == {"blocked_scheme": 5}


def test_student_rendition_is_stored_indexed_reused_and_rebuilt(server, tmp_path):
    """cache.student_resize: a second, smaller JPEG per image beside the main one, written
    atomically, recorded in the index (size, version, checksums, the main file it was made
    from) and in the cached records; reused when intact, rebuilt (never refetched) when
    missing, replaced, stale or asked at another size."""
    from shared.data.image_cache import INDEX_NAME, STUDENT_RENDITION_VERSION, student_cache_path_for
    from shared.io.atomic import sha256_file

    urls = [server.add(f"st{i}.jpg", jpeg_bytes(300, 220, seed=i)) for i in range(2)]
    urls.append(server.add("small.jpg", jpeg_bytes(110, 100, seed=7)))  # main 110x100: no smaller rendition
    recs = [_rec(i, u) for i, u in enumerate(urls)]
    plain = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY)  # a cache made before
    assert "student_cache_path" not in plain.cached[0] and plain.student_renditions == {}
    hits = sum(server.hits.values())

    a = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY, student_resize=100)
    assert sum(server.hits.values()) == hits and a.fetched == 0  # made from the main files
    assert a.student_renditions == {"missing_entry": 3} and a.settings["student_resize"] == 100
    big, _, small = a.cached
    assert big["student_cache_path"] == student_cache_path_for(big["sha256"], 100)
    # made from the 164x120 main file
    assert (big["student_width"], big["student_height"], big["student_resize"]) == (137, 100, 100)
    assert Image.open(tmp_path / big["student_cache_path"]).size == (137, 100)
    assert small["student_cache_path"] == small["cache_path"]  # no larger than 100: its main file serves
    assert not list(tmp_path.rglob("*.tmp"))  # temp file + rename
    entries = {}
    for line in (tmp_path / INDEX_NAME).read_text().splitlines():
        e = json.loads(line)
        entries[e["url"]] = e
    st = entries[urls[0]]["student"]
    assert st["resize"] == 100 and st["version"] == STUDENT_RENDITION_VERSION
    assert st["from_file_sha256"] == entries[urls[0]]["file_sha256"]
    assert st["file_sha256"] == sha256_file(tmp_path / big["student_cache_path"])

    b = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY, student_resize=100)
    assert b.student_renditions == {"same_as_main": 1, "stat": 2} and b.cached == a.cached
    # a replaced rendition is rebuilt, a stale one (made from another main file) too; no refetch
    victim = tmp_path / big["student_cache_path"]
    victim.write_bytes(victim.read_bytes()[:40])
    stale = {**entries[urls[1]], "student": {**entries[urls[1]]["student"], "from_file_sha256": "0" * 64}}
    with open(tmp_path / INDEX_NAME, "a") as f:
        f.write(json.dumps(stale) + "\n")
    c = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY, student_resize=100)
    assert c.student_renditions == {"same_as_main": 1, "size_mismatch": 1, "stale": 1}
    assert c.fetched == 0 and sum(server.hits.values()) == hits
    assert Image.open(victim).size == (137, 100) and c.cached == a.cached
    # another size: new files under another name, the main files untouched
    d = cache_images(recs, tmp_path, resize=120, min_side=100, policy=POLICY, student_resize=80)
    assert d.fetched == 0 and d.student_renditions == {"settings_changed": 3}
    assert d.cached[2]["student_cache_path"].endswith(".s80.jpg") and d.cached[2]["student_height"] == 80
    # a new main file (another resize: refetched) gets its rendition with it
    e = cache_images(recs, tmp_path, resize=110, min_side=100, policy=POLICY, student_resize=80)
    assert e.fetched == 3 and e.student_renditions == {"built_new": 3}
    with pytest.raises(ValueError, match="student_resize: 200"):
        cache_images(recs, tmp_path, resize=110, student_resize=200, policy=POLICY)


def test_student_records_read_the_rendition_or_name_the_record():
    from shared.data.image_cache import student_records

    rec = {
        "image_id": "x1",
        "cache_path": "ab/ab.jpg",
        "cached_width": 597,
        "cached_height": 448,
        "student_cache_path": "ab/ab.s256.jpg",
        "student_width": 341,
        "student_height": 256,
        "student_resize": 256,
    }
    (s,) = student_records([rec], 256)
    assert (s["cache_path"], s["cached_width"], s["image_id"]) == ("ab/ab.s256.jpg", 341, "x1")
    with pytest.raises(ValueError, match=r"record x2: no student rendition.*cache.student_resize"):
        student_records([{"image_id": "x2", "cache_path": "ab/ab.jpg"}], 256)
    with pytest.raises(ValueError, match=r"record x1: its student rendition is 256 px.*asks for 224"):
        student_records([rec], 224)
