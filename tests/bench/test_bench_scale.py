"""bench/bench_scale.py (`make bench-scale`) at a tiny size: every step runs through the
real code in its own process and the figures land under "scale" in the results file."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import bench_scale as bs  # noqa: E402


def test_catalogue_shape_is_the_plans_long_tail():
    sizes = bs.class_sizes(bs.FULL_RECORDS, bs.FULL_SPECIES)
    assert sizes.sum() == bs.FULL_RECORDS and len(sizes) == bs.FULL_SPECIES and sizes.min() == 1
    assert abs((sizes == 1).mean() - bs.SINGLETON_SHARE) < 0.005
    assert (sizes <= 3).mean() > 0.4
    quarter = bs.class_sizes(bs.FULL_RECORDS // 4, bs.FULL_SPECIES // 4)
    assert abs((quarter == 1).mean() - (sizes == 1).mean()) < 0.01  # the same histogram, scaled
    names = bs.species_names(bs.FULL_SPECIES)
    assert len(set(names)) == bs.FULL_SPECIES


def test_synthetic_logits_are_valid_teacher_logits():
    import numpy as np

    from shared.distill.teacher_logits import TeacherLogits

    rng = np.random.default_rng(0)
    for n_classes in (5, 40, 9000):
        labels = rng.integers(-1, n_classes, 300).astype(np.int32)
        idx, vals, lse, conf = bs.synthetic_logits(labels, n_classes, 32, rng)
        k = min(32, n_classes)
        assert idx.shape == vals.shape == (300, k) and vals.dtype == np.float16
        assert all(len(set(row)) == k for row in idx.tolist())  # k distinct classes a row
        assert (conf > 0).all() and (conf <= 1).all()
        TeacherLogits(
            np.array([f"i{i}" for i in range(300)]), idx, vals, lse, conf, labels, [f"c{i}" for i in range(n_classes)]
        )  # validates ranges and order


def test_evaluate_flags_a_superlinear_step_and_missed_targets():
    def step(sec, mib=100.0):
        return {"seconds": sec, "cpu_seconds": sec, "peak_rss_mib": mib, "ru_maxrss_mib": mib, "synthetic": False}

    sizes = {
        "full": {
            "records": bs.FULL_RECORDS,
            "steps": {"split": step(40.0), "combine_soft_labels": step(100.0, 20_000.0)},
        },
        "quarter": {"records": bs.FULL_RECORDS // 4, "steps": {"split": step(10.0), "combine_soft_labels": step(10.0)}},
    }
    r = bs.evaluate(sizes)
    assert r["ratios"]["split"]["superlinear"] is False  # 4x: linear
    assert r["ratios"]["combine_soft_labels"]["superlinear"] is True  # 10x > 6x
    c = r["checks"]
    assert c["size_ratio"] == 4.0 and c["superlinear_threshold"] == 6.0
    assert c["no_superlinear_step"] is False
    assert c["every_step_under_16gib"] is False
    assert c["split_plus_combine_under_60s_at_full_size"] is False
    assert c["passed"] is False


@pytest.mark.timeout(300)
def test_bench_scale_tiny_end_to_end(tmp_path):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"benchmarks": {"bench_split": {"split_seconds": 1.0}}}))
    rc = bs.main(
        [
            "--records",
            "3000",
            "--species",
            "200",
            "--scales",
            "1",
            "--mongo-slice",
            "400",
            "--output",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["benchmarks"] == {"bench_split": {"split_seconds": 1.0}}  # other keys kept
    scale = data["scale"]
    assert set(scale) >= {"machine", "rss_method", "targets", "sizes", "ratios", "checks"}
    (size,) = scale["sizes"].values()
    assert size["records"] == 3000 and size["species"] == 200
    assert list(size["steps"]) == bs.STEP_NAMES  # every step ran, in order
    for name, fig in size["steps"].items():
        assert "error" not in fig, (name, fig)
        assert fig["seconds"] >= 0 and fig["cpu_seconds"] >= 0 and fig["peak_rss_mib"] > 0, name
        assert fig["process_seconds"] >= fig["seconds"], name
    st = size["steps"]
    cat = size["catalogue"]
    assert st["ingest_jsonl"]["records_read"] == cat["catalogue_lines"]
    assert st["ingest_jsonl"]["records_kept"] == 3000
    assert st["ingest_jsonl"]["dropped_by_reason"] == cat["rejected_expected_by_reason"]
    assert st["ingest_jsonl"]["records_taxon_normalised"] == cat["taxon_variants"]
    assert st["ingest_mongo"]["slice_documents"] == 400 and st["ingest_mongo"]["extrapolated_seconds"] >= 0
    assert st["cache_fields"]["cached"] == 3000 - cat["content_duplicates"] - cat["fetch_failures"]
    splits = st["split"]["splits"]
    assert set(splits) == {"global", "EU_SW", "EU_CORE"} and all(s["leak_free"] for s in splits.values())
    assert st["combine_soft_labels"]["samples"] == splits["global"]["images"]["train"]
    assert set(st["combine_soft_labels"]["coverage"]) == {"global", "EU_SW", "EU_CORE"}
    assert st["soft_label_loader"]["coverage"] == 1.0
    assert st["training_manifest"]["data"]["total_samples"] == st["cache_fields"]["cached"]
    assert scale["checks"]["every_step_ran"] is True
    assert scale["checks"]["split_plus_combine_under_60s_at_full_size"] is None  # not the full size
