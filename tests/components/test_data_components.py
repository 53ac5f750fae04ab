"""The data-image components' bodies, called through `.python_func` with real KFP artifact
objects over temporary paths (as kubeflow/pipelines-components tests them): what each writes,
the metadata its consumers read, the metrics the KFP UI shows."""

import json
from pathlib import Path

import pytest
from kfp import dsl

from components.cache_images import cache_images
from components.export_tfjs import export_skipped
from components.ingest import ingest
from components.split import regional_split, split
from components.stage_weights import stage_weights
from shared import artifact_keys as K


def _out(kind, tmp: Path, name: str):
    return kind(uri=str(tmp / name), metadata={})


@pytest.fixture(scope="module")
def phase0(sample_catalogue, tmp_path_factory):
    """ingest -> cache_images -> split, each through its component function."""
    tmp = tmp_path_factory.mktemp("components")
    arts = {n: _out(dsl.Dataset, tmp, n) for n in ("records", "rejections", "cached", "train", "val", "test")}
    arts.update({n: _out(dsl.Artifact, tmp, n) for n in ("audit", "report", "stats")})
    arts["histogram"] = _out(dsl.HTML, tmp, "histogram")
    metrics = {n: _out(dsl.Metrics, tmp, f"{n}_metrics") for n in ("ingest", "cache", "split")}
    ingest.python_func(
        source="jsonl",
        records_uri=str(sample_catalogue / "records.jsonl"),
        mongo={},
        license_allow=["CC0", "CC-BY", "CC-BY-SA"],
        min_side=100,
        snapshot_id="t1",
        checks={},  # DEFAULT_CHECKS
        records=arts["records"],
        audit=arts["audit"],
        rejections=arts["rejections"],
        metrics=metrics["ingest"],
    )
    cache_images.python_func(
        records=arts["records"],
        cache_dir=str(tmp / "cache"),
        resize=40,
        min_side=100,
        max_fail_rate=0.5,
        workers=2,
        fetch_policy={"allow_local_paths": True},
        cached=arts["cached"],
        report=arts["report"],
        metrics=metrics["cache"],
        student_resize=32,
    )
    split.python_func(
        cached=arts["cached"],
        regions="",
        seed=7,
        train=arts["train"],
        val=arts["val"],
        test=arts["test"],
        stats=arts["stats"],
        histogram=arts["histogram"],
        metrics=metrics["split"],
    )
    return arts, metrics, tmp


def test_ingest_writes_records_audit_and_metrics(phase0):
    arts, metrics, _ = phase0
    lines = Path(arts["records"].path).read_text().splitlines()
    assert lines and all(json.loads(line)["taxon"] for line in lines)
    audit = json.loads(Path(arts["audit"].path).read_text())
    assert audit["dropped_by_reason"]["license_not_allowed"] > 0
    assert metrics["ingest"].metadata and all(isinstance(v, float | int) for v in metrics["ingest"].metadata.values())


def test_cache_images_records_the_cache_and_its_student_rendition(phase0):
    arts, metrics, tmp = phase0
    cached = [json.loads(line) for line in Path(arts["cached"].path).read_text().splitlines()]
    assert cached and all(r.get("student_cache_path") for r in cached)
    assert arts["cached"].metadata[K.CACHE_DIR] == str(tmp / "cache")
    assert metrics["cache"].metadata


def test_split_metadata_is_what_the_trainers_read(phase0):
    arts, metrics, _ = phase0
    sizes = {n: arts[n].metadata[K.IMAGES] for n in ("train", "val", "test")}
    assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
    assert sum(1 for _ in open(arts["train"].path)) == sizes["train"]
    assert "<svg" in Path(arts["histogram"].path).read_text()


def test_regional_split_is_nested_in_the_global_one(phase0, tmp_path):
    arts, _, _ = phase0
    out = {n: _out(dsl.Dataset, tmp_path, n) for n in ("train", "val", "test")}
    stats, hist = _out(dsl.Artifact, tmp_path, "s"), _out(dsl.HTML, tmp_path, "h")
    metrics = _out(dsl.Metrics, tmp_path, "m")
    regional_split.python_func(
        global_train=arts["train"],
        global_val=arts["val"],
        global_test=arts["test"],
        regions="EU_SW",
        train=out["train"],
        val=out["val"],
        test=out["test"],
        stats=stats,
        histogram=hist,
        metrics=metrics,
    )
    for n in ("train", "val", "test"):
        global_ids = {json.loads(line)["image_id"] for line in open(arts[n].path)}
        regional = [json.loads(line) for line in open(out[n].path)]
        assert {r["image_id"] for r in regional} <= global_ids
        assert all(r["region"] == "EU_SW" for r in regional)


def test_stage_weights_without_pretrained_weights_says_so(tmp_path):
    weights = _out(dsl.Model, tmp_path, "w")
    stage_weights.python_func(
        role="student",
        kind="student",
        config={"model": {"name": "test_efficientnet", "pretrained": False}},
        overrides={},
        weights_cache=str(tmp_path / "cache"),
        hub_endpoint="",
        offline=True,
        weights=weights,
    )
    staged = json.loads((Path(weights.path) / "staged_weights.json").read_text())
    assert staged["pretrained"] is False and "from scratch" in staged["source"]


def test_export_skipped_reports_the_reason():
    out = export_skipped.python_func(reason="ECE 0.2 >= 0.10")
    assert out == {"status": "skipped", "reason": "ECE 0.2 >= 0.10"}
