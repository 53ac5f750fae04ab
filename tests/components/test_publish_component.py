"""The publish step's body through `.python_func` with real KFP artifacts: a tiny calibrated
student published locally, then the same student again (compared with the first on the same
images), and what the manifest and run_summary make of its result."""

import json
from pathlib import Path

import torch
from kfp import dsl

from components.publish import publish
from shared.io.checkpoint import save_checkpoint
from shared.manifest.release_section import release_section
from shared.manifest.run_summary import run_summary_metrics


def _inputs(tmp: Path, splits: dict) -> dict:
    import timm

    from shared.vision.image_dataset import class_list

    classes = class_list(splits["train"])
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(classes))
    ckpt = dsl.Model(uri=str(tmp / "calibrated.pt"))
    save_checkpoint(
        ckpt.path,
        model,
        model_name="test_efficientnet",
        classes=classes,
        image_size=32,
        eval_resize=36,
        temperature=1.2,
    )
    cal = dsl.Artifact(uri=str(tmp / "calibration.json"))
    Path(cal.path).write_text(json.dumps({"test_top1": 0.1, "test_ece_after": 0.05, "test_coverage": 0.0}))
    test = dsl.Dataset(uri=str(tmp / "test.jsonl"))
    Path(test.path).write_text("".join(json.dumps(r) + "\n" for r in splits["test"]))
    bundle = dsl.Artifact(uri=str(tmp / "bundle"))
    Path(bundle.path).mkdir()
    (Path(bundle.path) / "model.json").write_text("{}")
    return {"bundle": bundle, "model": ckpt, "calibration": cal, "test": test, "cache_dir": splits["cache_dir"]}


def _publish(tmp: Path, inputs: dict, uri: str, name: str) -> tuple[dict, dsl.Metrics]:
    metrics = dsl.Metrics(uri=str(tmp / f"{name}-metrics"))
    out = publish.python_func(
        **inputs,
        export_summary={"model_size_mb": 0.3},
        pipeline_settings={"release": {"uri": uri, "margins": {"top1": 0.005, "ece": 0.02, "coverage": 0.01}}},
        run_id=name,
        report=dsl.Artifact(uri=str(tmp / f"{name}-report.json")),
        metrics=metrics,
        git_commit="abc",
    )
    return out, metrics


def test_publish_twice_then_the_manifest_records_the_decision(cached_splits, tmp_path):
    inputs = _inputs(tmp_path, cached_splits)
    uri = str(tmp_path / "releases")
    first, m1 = _publish(tmp_path, inputs, uri, "run-1")
    assert "None" not in repr(first) and "current_version" not in first  # KFP passes no None in a dict
    assert first["published"] and m1.metadata["release_published"] == 1.0
    release = json.loads((Path(uri) / "models" / first["version"] / "release.json").read_text())
    assert release["headline"] == {
        "test_top1": 0.1,
        "test_ece": 0.05,
        "test_coverage": 0.0,
        "bundle_mb": 0.3,
    }
    assert release["student_checkpoint"] == inputs["model"].uri and release["git_commit"] == "abc"
    second, m2 = _publish(tmp_path, inputs, uri, "run-2")
    assert second["published"] and second["current_version"] == first["version"]
    assert m2.metadata["candidate_shared_top1"] == m2.metadata["current_shared_top1"]
    section = release_section(second, export_completed=True)
    assert section["published"] and section["current"]["version"] == first["version"]
    assert section["candidate"]["on_shared_classes"] == section["current"]["on_shared_classes"]
    assert run_summary_metrics({"release": section})["release_published"] == 1.0


def test_no_release_uri_publishes_nothing(cached_splits, tmp_path):
    out, metrics = _publish(tmp_path, _inputs(tmp_path, cached_splits), "", "run")
    assert out["status"] == "skipped" and metrics.metadata["release_published"] == 0.0
    assert run_summary_metrics({"release": release_section(out, True)})["release_published"] == 0.0
