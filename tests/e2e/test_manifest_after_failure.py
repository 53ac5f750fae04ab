"""A manifest whatever happens, through kfp.local in seconds: `pipeline.py run-local` over a
miniature DAG whose tasks carry the pipeline's component names and whose TF.js validation
fails its size gate. The run exits 1, TRAINING_MANIFEST.yaml names the failed task, its phase
and the gate, what did run keeps its figures, and no TF.js model is left in the outputs (the
whole DAG's version of this is test_pipeline_local.py's gate_failed_run)."""

import json
import sys
from pathlib import Path

import yaml
from kfp import dsl
from kfp.dsl import Artifact, Input, Output

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402

GATE_ERROR = "the TF.js export fails its gates: model_size_mb 3.1 MB >= 0.001 MB"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def ingest(audit: Output[Artifact]):
    import json

    with open(audit.path, "w") as f:
        json.dump({"source": "jsonl", "records_read": 12, "records_kept": 12, "classes": 3}, f)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def split(stats: Output[Artifact]):
    import json

    with open(stats.path, "w") as f:
        json.dump({"images": {"train": 8, "val": 2, "test": 2}, "leakage": {"leak_free": True}}, f)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def calibrate(calibration: Output[Artifact]):
    import json

    figures = {
        "val_top1": 0.58,
        "ece_after": 0.05,
        "coverage": 0.41,
        "precision_at_threshold": 0.96,
        "test_ece_after": 0.06,
        "test_coverage": 0.39,
        "test_precision_at_threshold": 0.95,
    }
    table = [{"name": "val_top1", "split": "val", "value": 0.58, "op": ">=", "bound": 0.3, "passed": True}]
    with open(calibration.path, "w") as f:
        json.dump({**figures, "temperature": 1.2, "gates": table, "blessed": True, "reason": "blessed"}, f)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def export_tfjs(bundle: Output[Artifact]):
    import os

    os.makedirs(bundle.path)
    with open(os.path.join(bundle.path, "model.json"), "w") as f:
        f.write("{}")
    bundle.metadata.update({"quantization": "fp16", "model_size_mb": 3.1})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def validate_export(bundle: Input[Artifact]) -> dict:
    raise RuntimeError("the TF.js export fails its gates: model_size_mb 3.1 MB >= 0.001 MB")


@dsl.pipeline(name="mini-gate-fail")
def mini_pipeline(
    seed: int = 7,
    snapshot_id: str = "mini",
    global_teacher_config: dict = {},  # noqa: B006 (KFP parameter defaults: constants in the spec)
    regional_teachers: list = [],  # noqa: B006
    student_config: dict = {},  # noqa: B006
    pipeline_settings: dict = {"export": {"gates": {"profile": "local", "min_val_top1": 0.3}}},  # noqa: B006
):
    # in order: without control flow kfp.local stops at the first failure
    done = [ingest(), split(), calibrate()]
    validate_export(bundle=export_tfjs().after(*done).outputs["bundle"])


def test_a_failed_export_gate_leaves_a_manifest_naming_it_exit_1_and_no_bundle(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gatefail"
    stale = out / "tfjs_model"
    stale.mkdir(parents=True)
    (stale / "model.json").write_text("{}")  # a previous run's bundle
    (out / "TRAINING_MANIFEST.yaml").write_text("from: a previous run\n")
    monkeypatch.setattr(pipeline, "build_pipeline", lambda cfg, local=False: mini_pipeline)
    code = pipeline.main(["run-local", "--config", str(ROOT / "config" / "local.yaml"), "--output", str(out)])
    console = capsys.readouterr().out.splitlines()

    assert code == 1
    # no TF.js model anywhere under --output: neither a previous run's nor this run's unvalidated one
    assert not stale.exists() and not list(out.rglob("model.json"))
    m = yaml.safe_load((out / "TRAINING_MANIFEST.yaml").read_text())
    assert m["seed"] == 7 and m["data"]["snapshot"] == "mini"
    assert m["run"]["status"] == "failed" and m["run"]["failed_task"] == "validate-export"
    assert m["run"]["failed_phase"] == "phase_6" and m["run"]["error"] == f"RuntimeError: {GATE_ERROR}"
    ph = m["phases"]
    assert ph["phase_6"]["status"] == "failed" and ph["phase_6"]["quantization"] == "fp16"
    assert ph["phase_5"]["status"] == "completed" and ph["phase_5"]["gate"]["bounds"] == "local"
    assert ph["phase_4"]["status"] == "not_run" and "validate-export (phase_6)" in ph["phase_4"]["reason"]
    v = m["verdict"]
    assert v["run_status"] == "failed" and v["blessed"] is True and v["plan_criteria_met"] is False
    assert v["lines"] == [
        "gate (local bounds): blessed",
        "plan criteria: NOT met (student val top-1 0.580 < 0.7, val coverage 0.410 < 0.8, test coverage 0.390 < 0.8)",
        f"run: FAILED at validate-export (phase_6): RuntimeError: {GATE_ERROR}",
    ]
    # the console: the failed task, then where the manifest is, no model, and the verdict last
    assert any("FAILED  validate-export" in line for line in console)
    assert console[-5:] == [
        f"TRAINING_MANIFEST.yaml: {out / 'TRAINING_MANIFEST.yaml'}",
        "TF.js model: none (the run failed)",
        *v["lines"],
    ]
    assert json.loads((out / "run_summary.json").read_text())["failed"] == "validate-export"
