"""gs:// against a real GCS API server (gcp-storage-emulator over HTTP): image
fetches, the records file, and the image cache kept in a bucket instead of on a
volume (uploaded by cache_images, resumed from the bucket by a fresh pod, read on
demand by the training datasets)."""

import json

import pytest

from shared.data.cache_paths import resolve
from shared.data.fetch import Fetcher, FetchError, FetchPolicy
from shared.data.image_cache import INDEX_NAME, cache_images
from shared.data.ingest import fetch_records_file
from shared.io import gcs
from shared.vision.image_dataset import CachedImageDataset
from tests.gcs_emulator import gcs_emulator
from tests.image_server import jpeg_bytes

# gs:// image URLs are refused unless their bucket is listed (cache.fetch.gcs_bucket_allowlist)
PLANTS = FetchPolicy(gcs_bucket_allowlist=["plants"])


@pytest.fixture(scope="module")
def bucket():
    with gcs_emulator("plants"):
        yield gcs.client().bucket("plants")


def test_fetch_images_from_bucket(bucket):
    img = jpeg_bytes(200, 150, seed=3)
    bucket.blob("photos/a.jpg").upload_from_string(img)
    assert Fetcher(FetchPolicy(gcs_bucket_allowlist=["plants"])).fetch("gs://plants/photos/a.jpg") == img
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(gcs_bucket_allowlist=["plants"])).fetch("gs://plants/photos/missing.jpg")
    assert e.value.reason == "not_found"
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(max_bytes=len(img) - 1, gcs_bucket_allowlist=["plants"])).fetch("gs://plants/photos/a.jpg")
    assert e.value.reason == "too_large"


def test_records_file_from_bucket(bucket, tmp_path):
    lines = [json.dumps({"image_id": "x1", "image_url": "gs://plants/photos/a.jpg", "taxon": "Quercus ilex"})]
    bucket.blob("catalogue/records.jsonl").upload_from_string("\n".join(lines) + "\n")
    local = fetch_records_file("gs://plants/catalogue/records.jsonl", tmp_path)
    assert open(local, encoding="utf-8").read().splitlines() == lines
    with pytest.raises(FileNotFoundError, match="gs://plants/catalogue/nope.jsonl"):
        fetch_records_file("gs://plants/catalogue/nope.jsonl", tmp_path)


class _NoFetch:
    def fetch(self, url):
        raise AssertionError(f"fetched {url} again although the bucket has it")


def _records(n):
    imgs = {f"gs://plants/src/{i}.jpg": jpeg_bytes(240, 180, seed=100 + i) for i in range(n)}
    return imgs, [
        {"image_id": f"g{i}", "image_url": u, "taxon": f"t{i % 2}", "region": "EU_SW", "license": "CC0"}
        for i, u in enumerate(imgs)
    ]


def test_cache_in_bucket_resumes_on_a_fresh_pod_and_is_read_on_demand(bucket, tmp_path, monkeypatch):
    imgs, recs = _records(6)
    for u, data in imgs.items():
        bucket.blob(u.removeprefix("gs://plants/")).upload_from_string(data)
    uri = "gs://plants/cache"

    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod1"))
    first = cache_images(recs, uri, resize=120, min_side=100, policy=PLANTS, workers=3, progress=lambda d, t: None)
    assert (first.fetched, first.reused, len(first.cached)) == (6, 0, 6)
    objects = {b.name: b.size for b in gcs.client().list_blobs("plants", prefix="cache/")}
    for r in first.cached:  # every file and the index are in the bucket, with the local sizes
        local = tmp_path / "pod1" / "plants" / "cache" / r["cache_path"]
        assert objects["cache/" + r["cache_path"]] == local.stat().st_size
    assert f"cache/{INDEX_NAME}" in objects

    # a new pod (empty local copy): nothing fetched again, the same cached records
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod2"))
    second = cache_images(recs, uri, resize=120, min_side=100, fetcher=_NoFetch(), progress=lambda d, t: None)
    assert (second.fetched, second.reused) == (0, 6)
    assert [r["cache_path"] for r in second.cached] == [r["cache_path"] for r in first.cached]

    # a lost object in the bucket is fetched again, not trusted from the index
    gone = first.cached[0]
    bucket.blob("cache/" + gone["cache_path"]).delete()
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod3"))
    third = cache_images(recs, uri, resize=120, min_side=100, policy=PLANTS, workers=2, progress=lambda d, t: None)
    assert (third.fetched, third.reused) == (1, 5)

    # a training pod reads through the bucket: files arrive on first use, byte for byte
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "trainer"))
    ds = CachedImageDataset(third.cached, uri, ["t0", "t1"], transform=lambda im: im.size)
    assert [ds[i][0] for i in range(len(ds))] == [(r["cached_width"], r["cached_height"]) for r in third.cached]
    p = resolve(uri, third.cached[1])
    assert p.read_bytes() == bucket.blob("cache/" + third.cached[1]["cache_path"]).download_as_bytes()
    assert p.is_relative_to(tmp_path / "trainer")
    with pytest.raises(ValueError, match="escapes the cache"):
        resolve(uri, {"image_id": "evil", "cache_path": "../../etc/passwd"})

    # an object missing from the bucket: the record is named, nothing half-written stays
    missing = dict(third.cached[2], image_id="lost-1", cache_path="ff/" + "f" * 64 + ".jpg")
    with pytest.raises(RuntimeError, match=r"record lost-1: .*not in the cache bucket"):
        CachedImageDataset([missing], uri, ["t0", "t1"], transform=lambda im: im)[0]
    assert not list((tmp_path / "trainer").rglob("*.part"))


def test_student_renditions_in_a_bucket_are_made_from_it_listed_and_read(bucket, tmp_path, monkeypatch):
    """cache.student_resize on a gs:// cache: a fresh pod adds the renditions to a bucket cache
    made without them from the bucket's own main files (nothing fetched again), uploads them,
    the next pod trusts them from the listing, and a training pod reads them on demand."""
    from shared.data.image_cache import student_records

    imgs, recs = _records(3)
    for u, data in imgs.items():
        bucket.blob(u.removeprefix("gs://plants/")).upload_from_string(data)
    uri = "gs://plants/student-cache"
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod1"))
    cache_images(recs, uri, resize=120, min_side=100, policy=PLANTS, progress=lambda d, t: None)
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod2"))
    a = cache_images(
        recs, uri, resize=120, min_side=100, student_resize=90, fetcher=_NoFetch(), progress=lambda d, t: None
    )
    assert a.student_renditions == {"missing_entry": 3} and a.fetched == 0
    names = {b.name for b in gcs.client().list_blobs("plants", prefix="student-cache/")}
    assert all("student-cache/" + r["student_cache_path"] in names for r in a.cached)
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "pod3"))
    b = cache_images(
        recs, uri, resize=120, min_side=100, student_resize=90, fetcher=_NoFetch(), progress=lambda d, t: None
    )
    assert b.student_renditions == {"listing": 3} and b.cached == a.cached
    monkeypatch.setenv("PLANTID_LOCAL_CACHE", str(tmp_path / "trainer"))
    ds = CachedImageDataset(student_records(b.cached, 90), uri, ["t0", "t1"], transform=lambda im: im.size)
    assert [min(ds[i][0]) for i in range(len(ds))] == [90, 90, 90]


def test_a_bucket_cache_is_fit_for_the_cluster_and_compiles(tmp_path):
    """cache.dir: gs://... needs no volume: the cluster checks accept it and it becomes
    the pipeline's cache_dir default."""
    import yaml
    from kfp import compiler

    import pipeline
    from shared.config.cluster import cluster_problems
    from shared.config.pipeline import load_pipeline_config
    from tests.conftest import ROOT

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml", {"cache.dir": "gs://plants/cache"})
    assert cluster_problems(cfg) == []
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline.build_pipeline(cfg), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["cache_dir"]["defaultValue"] == "gs://plants/cache"


def test_uris_where_only_paths_work_are_refused():
    """Checkpoints resume from a mounted volume; a URI would quietly become a local
    directory named 'gs:'. Only gs:// is a cache location."""
    from shared.config.pipeline import ConfigError, load_pipeline_config
    from shared.io.checkpoint import work_dir
    from tests.conftest import ROOT

    with pytest.raises(ConfigError, match="teachers.checkpoint_dir"):
        load_pipeline_config(ROOT / "config" / "cluster.yaml", {"teachers.checkpoint_dir": "gs://plants/ckpt"})
    with pytest.raises(ConfigError, match="cache.dir"):
        load_pipeline_config(ROOT / "config" / "cluster.yaml", {"cache.dir": "s3://plants/cache"})
    with pytest.raises(ValueError, match="checkpoint_dir 'gs://plants/ckpt'"):
        work_dir("gs://plants/ckpt", "run-1", "global")
