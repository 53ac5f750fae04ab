"""End to end: the whole DAG through kfp.local on a small synthetic catalogue, and
the compiled pipeline. Slow (minutes), so it runs once per session."""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
from shared.config.pipeline import load_pipeline_config  # noqa: E402
from shared.run_console import LocalRunFailed  # noqa: E402

PHASE0_TASKS = {"ingest", "cache-images", "split", "baseline"}


@pytest.fixture(scope="module")
def local_run_console(sample_catalogue, tmp_path_factory):
    """The one full local run of this module: (cfg, summary, what it printed, its --output)."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_pipeline_config(
        ROOT / "config" / "local.yaml",
        {
            "data.records_uri": str(sample_catalogue / "records.jsonl"),
            "release.uri": str(out / "releases"),  # not the repo's outputs/releases (make run's)
            "cache.dir": str(out / "cache"),
            # its own checkpoints: a killed earlier run's last_checkpoint.pt would be resumed
            "teachers.checkpoint_dir": str(out / "checkpoints"),
            # 24 val images of 12 species make ECE noisy: this run tests the blessed path
            # (the gate's other side is strict_gate_run below).
            "export.gates.max_ece": 0.5,
            # 12 species: keep fewer than all of them, so the soft labels' rest bin holds mass
            "teachers.logits_top_k": 8,
        },
    )
    console = io.StringIO()
    with contextlib.redirect_stdout(console):  # what a user of `make run` sees
        summary = pipeline.run_local(cfg, str(out))
    return cfg, summary, console.getvalue(), out


@pytest.fixture(scope="module")
def local_run(local_run_console):
    cfg, summary, _, _ = local_run_console
    return cfg, summary


def test_local_run_console_is_short_and_the_log_holds_the_detail(local_run_console):
    cfg, summary, console, out = local_run_console
    lines = console.splitlines()
    assert len(lines) < 80, console
    log_path = out / "run.log"
    assert str(log_path) in lines[0] and lines[-3].endswith(str(log_path))
    # the last lines: the verdict the manifest computed, the gate's bounds named, the plan's apart
    m = yaml.safe_load(Path(summary["training_manifest"]).read_text())
    assert lines[-2:] == m["verdict"]["lines"] and lines[-2] == "gate (local bounds): blessed"
    assert lines[-1].startswith("plan criteria: ")
    # a start and an end line per task that ran, the end with its seconds and key metric
    tasks = [key.rsplit("/", 1)[-1] for key in summary["outputs"]]
    ends = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  ok ", line)]
    starts = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  start ", line)]
    assert len(ends) == len(starts) == len(tasks), console
    assert sorted(line.split()[2] for line in ends) == sorted(tasks)
    assert all(re.search(r" \d+(\.\d)?s  \S|\dm\d\ds  \S", line) for line in ends), console
    metric = {
        line.split()[2] + (" " + line.split()[3] if line.split()[3].startswith("[") else ""): line for line in ends
    }
    assert "records kept" in metric["ingest"] and "val top-1" in metric["train-teacher [global]"]
    assert "val top-1" in metric["train-teacher-2 [EU_SW]"] and "val top-1" in metric["train-teacher-2 [EU_CORE]"]
    assert "gate (local bounds): blessed" in metric["calibrate"] and " MB (fp16)" in metric["export-tfjs"]
    assert re.search(r"parity r (0\.99|1\.00)\d+.*gates passed", metric["validate-export"])
    assert "images train" in metric["split"]
    assert summary["tfjs_model"] in console and summary["training_manifest"] in console
    assert not re.search(r"epoch \d+/\d+", console) and "executor_input" not in console  # no task output
    # the log: everything kfp and the tasks printed, each task's lines under its name
    log = log_path.read_text()
    assert len(log.splitlines()) > 10 * len(lines)
    assert "Executing task 'train-student'" in log and "Got executor_input" in log
    assert re.search(r"^train-teacher-2 \[EU_SW\] \| epoch 1/\d+ step", log, re.M)
    assert re.search(r"^cache-images \| cache_images  image \d+/\d+ .* in ", log, re.M)  # the progress line
    assert re.search(r"^teacher-logits \[global\] \| teacher logits global  batch \d+/\d+ ", log, re.M)


def test_local_run_produces_phase0_outputs(local_run):
    cfg, summary = local_run
    outs = summary["outputs"]
    assert PHASE0_TASKS <= set(outs), outs.keys()
    audit = json.loads(Path(outs["ingest"]["audit"]).read_text())
    assert audit["dropped_by_reason"]["license_not_allowed"] > 0
    assert audit["dropped_by_reason"]["missing_field"] == 1
    stats = json.loads(Path(outs["split"]["stats"]).read_text())
    assert stats["leakage"]["leak_free"] and stats["train_val_class_overlap"] == 1.0
    assert stats["images"]["train"] > stats["images"]["val"] > 0
    assert "<svg" in Path(outs["split"]["histogram"]).read_text()
    report = json.loads(Path(outs["baseline"]["report"]).read_text())
    # the local config says baseline.pretrained: false (no hub here): the report says what that means
    assert report["pretrained"] is False and report["versus_plan"] == "not comparable: random weights"
    assert "says nothing about a pretrained model" in report["weights"]
    assert 0.0 <= report["top1_accuracy"] <= 1.0
    staged = [
        json.loads((Path(o["weights"]) / "staged_weights.json").read_text())
        for k, o in outs.items()
        if k.startswith("stage-weights")
    ]
    assert sorted(s["role"] for s in staged) == ["baseline", "global teacher", "student"]
    assert all(s["pretrained"] is False and "trained from scratch" in s["source"] for s in staged)


def test_local_run_trains_teachers(local_run):
    from shared.distill.teacher_logits import TeacherLogits

    cfg, summary = local_run
    outs = summary["outputs"]
    res = json.loads(Path(outs["evaluate-teacher"]["results"]).read_text())
    n_classes = len(json.loads(Path(outs["split"]["stats"]).read_text())["images_per_class"])
    assert res["top1_accuracy"] > 4.0 / n_classes  # far above chance
    loops = [k for k in outs if k.startswith("for-loop")]
    regional = [
        json.loads(Path(outs[k]["results"]).read_text())["teacher"] for k in loops if k.endswith("evaluate-teacher-2")
    ]
    assert sorted(regional) == ["EU_CORE", "EU_SW"]
    tl = TeacherLogits.load(outs["teacher-logits"]["logits"])
    assert tl.name == "global" and tl.k == min(8, len(tl.classes)) and len(tl.image_ids) > 100
    core = [TeacherLogits.load(outs[k]["logits"]) for k in loops if k.endswith("teacher-logits-2")]
    assert {t.regions for t in core} == {"EU_SW", "EU_NORTH,EU_EAST"}


def test_local_run_distils_student(local_run):
    from shared.distill.soft_labels import SoftLabels
    from shared.io.checkpoint import load_checkpoint

    cfg, summary = local_run
    outs = summary["outputs"]
    sl = SoftLabels.load(outs["combine-soft-labels"]["soft_labels"])
    # the plan's T=3 distribution: the kept classes' exact probabilities plus the rest as one bin
    assert abs(sl.values.astype(float).sum(1) + sl.rest - 1).max() < 1e-5 and sl.temperature == 3.0
    assert 0 < sl.kept_mass.min() and sl.kept_mass.mean() < 1
    s = json.loads(Path(outs["train-student"]["summary"]).read_text())
    d = s["distilled"]
    assert d["distilled"] and d["soft_label_coverage"] == 1.0
    assert {"distillation", "finetuning"} <= set(d) and d["size_mb_fp32"] < 20
    n_classes = len(sl.classes)
    assert d["val_top1"] > 4.0 / n_classes
    assert "ce_control" in s
    # which student shipped, and its figures on the held-out test set too
    assert d["final_stage"] in ("distillation", "finetuning") and 0.0 <= d["test_top1"] <= 1.0
    assert all("test_top1" in d[stage] for stage in ("distillation", "finetuning"))
    assert "test_top1" in s["ce_control"] and set(d["test_per_region"]) <= {"EU_SW", "EU_NORTH", "EU_EAST", "OTHER"}
    # the confusion matrix is artifact metadata (KFP's ClassificationMetrics), in the executor output
    task_dir = Path(outs["train-student"]["model"]).parent
    assert "confusionMatrix" in (task_dir / "executor_output.json").read_text()
    assert any(Path(outs["train-student"]["logs"]).rglob("events.out.tfevents*"))  # both stages' TensorBoard logs
    ck = load_checkpoint(outs["train-student"]["model"])
    assert ck["classes"] == sl.classes


def test_local_run_exports_blessed_student_and_writes_manifest(local_run):
    cfg, summary = local_run
    bundle = Path(summary["tfjs_model"])
    assert (bundle / "model.json").exists() and (bundle / "index.html").exists()
    cal = json.loads((bundle / "calibration.json").read_text())
    assert cal["label_below_threshold"] == "no concluyente" and cal["temperature"] > 0
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert prep["initial_weights"] == {"pretrained": False}  # the local student trained from scratch, on purpose
    m = yaml.safe_load(Path(summary["training_manifest"]).read_text())
    assert m["seed"] == 42 and m["data"]["leak_free"] is True
    assert {p["status"] for p in m["phases"].values()} == {"completed"}
    p6 = m["phases"]["phase_6"]
    assert p6["model_size_mb"] > 0 and p6["parity"]["correlation"] > 0.995 and p6["parity"]["passed"]
    assert m["environment"]["packages"]["kfp"].startswith("2.17")
    # the converters ran in their own environment; their versions reach the manifest
    assert p6["toolchain"]["tensorflowjs"] and m["environment"]["packages"]["onnx2tf"] == p6["toolchain"]["onnx2tf"]
    # the training steps report their own image's versions (the manifest step's image has no torch)
    assert m["environment"]["training"]["packages"]["timm"]
    assert m["environment"]["student_training"]["packages"]["torch"]
    # the student's test figures beside the val ones; local gate thresholds labelled as local
    p4, p5 = m["phases"]["phase_4"], m["phases"]["phase_5"]
    assert p4["final_stage"] and p4["final_test_top1"] is not None and p4["stages"]["finetuning"]["test_top1"] >= 0
    assert p5["test_ece"] is not None and "test_coverage>=0.8" in p5["criteria"]
    assert p5["gate"]["profile"] == "local" and "not the plan's criteria" in p5["gate"]["label"]
    assert p5["gate"]["bounds"] == "local" and p5["gate"]["deviations"]["max_ece"] == {"used": 0.5, "plan": 0.1}
    # one verdict: the bundle's calibration.json, the manifest and the calibrate step's metrics agree
    v = m["verdict"]
    assert m["run"]["status"] == "completed" and v["blessed"] is True
    assert cal["plan_criteria"] == {"met": v["plan_criteria_met"], "criteria": v["plan_criteria"]}
    assert cal["gate_bounds"]["kind"] == "local" and cal["blessed"] is True
    cal_metrics = json.loads(
        (Path(summary["outputs"]["calibrate"]["calibration"]).parent / "executor_output.json").read_text()
    )
    logged = cal_metrics["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["plan_criteria_met"] == float(v["plan_criteria_met"] is True)
    summary_md = Path(summary["outputs"]["training-manifest"]["summary"]).read_text()
    assert "| 4 student | test top-1 |" in summary_md and "LOCAL smoke-test thresholds" in summary_md
    # every model's starting weights: the local configs train from scratch on purpose, and say so
    models = m["models"]
    assert {models[r]["model_id"] for r in ("global_teacher", "student", "baseline")} == {
        "test_resnet",
        "test_efficientnet",
    }
    assert all(
        models[r]["pretrained"] is False and "model.pretrained is false" in models[r]["source"]
        for r in ("global_teacher", "student", "baseline")
    )
    assert models["regional_teacher_EU_SW"]["weights_downloaded"] is False


@pytest.fixture(scope="module")
def strict_gate_run(sample_catalogue, tmp_path_factory, local_run):
    """A quick second run (1 epoch each) whose student cannot pass a 99% gate."""
    out = tmp_path_factory.mktemp("run_strict")
    cfg = load_pipeline_config(
        ROOT / "config" / "local.yaml",
        {
            "data.records_uri": str(sample_catalogue / "records.jsonl"),
            "release.uri": str(out / "releases"),  # not the repo's outputs/releases (make run's)
            "cache.dir": local_run[0]["cache"]["dir"],  # shared cache: nothing is fetched again
            "teachers.checkpoint_dir": str(out / "checkpoints"),
            "teachers.overrides": {"training.epochs": 1},
            "student.overrides": {"training.distillation_epochs": 1, "training.finetune_epochs": 1},
            "student.train_ce_control": False,
        },
    )
    # the 99 % gate as a run parameter (as `submit --param` gives it), not a config value
    return pipeline.run_local(cfg, str(out), params={"gate_min_val_top1": 0.99})


def test_failed_gate_ends_green_without_export(strict_gate_run):
    outs = strict_gate_run["outputs"]
    assert not any(k.endswith("export-tfjs") for k in outs)
    assert any(k.endswith("export-skipped") for k in outs)
    assert "tfjs_model" not in strict_gate_run
    m = yaml.safe_load(Path(strict_gate_run["training_manifest"]).read_text())
    p6 = m["phases"]["phase_6"]
    assert p6["status"] == "skipped" and "not blessed" in p6["reason"] and "0.99" in p6["reason"]
    # the manifest records the run's parameters as submitted, the override named as such
    assert m["parameters"]["overridden"] == {"gate_min_val_top1": 0.99}
    assert (
        m["parameters"]["values"]["gate_min_val_top1"] == 0.99 and m["parameters"]["values"]["quantization"] == "fp16"
    )


@pytest.fixture(scope="module")
def gate_failed_run(sample_catalogue, tmp_path_factory, local_run):
    """A quick run (1 epoch each) whose student is blessed and whose TF.js export then fails its
    size gate (`--set export.gates.max_bundle_mb=0.001`): (the exception, --output, console)."""
    out = tmp_path_factory.mktemp("run_gatefail")
    (out / "tfjs_model").mkdir()  # a previous run's bundle must not survive
    cfg = load_pipeline_config(
        ROOT / "config" / "local.yaml",
        {
            "data.records_uri": str(sample_catalogue / "records.jsonl"),
            "release.uri": str(out / "releases"),  # not the repo's outputs/releases (make run's)
            "cache.dir": local_run[0]["cache"]["dir"],
            "teachers.checkpoint_dir": str(out / "checkpoints"),
            "teachers.overrides": {"training.epochs": 1},
            "student.overrides": {"training.distillation_epochs": 1, "training.finetune_epochs": 1},
            "student.train_ce_control": False,
            "export.gates.min_val_top1": 0.0,
            "export.gates.max_ece": 1.0,
            # a 1-epoch student reaches no threshold at 95 % precision (a missing figure fails
            # the gate whatever its bound): a target it can reach, so the run gets to export
            "calibration.target_precision": 0.05,
            "export.gates.max_bundle_mb": 0.001,
        },
    )
    console = io.StringIO()
    with contextlib.redirect_stdout(console), pytest.raises(LocalRunFailed) as failed:
        pipeline.run_local(cfg, str(out))
    return failed.value, out, console.getvalue().splitlines()


def test_a_failed_export_gate_writes_the_manifest_and_leaves_no_bundle(gate_failed_run):
    err, out, console = gate_failed_run
    assert "validate-export failed" in str(err)
    assert not (out / "tfjs_model").exists() and not list(out.rglob("model.json"))
    m = yaml.safe_load((out / "TRAINING_MANIFEST.yaml").read_text())
    run = m["run"]
    assert (run["status"], run["failed_task"], run["failed_phase"]) == ("failed", "validate-export", "phase_6")
    assert "fails its gates" in run["error"] and "0.001" in run["error"]
    p6 = m["phases"]["phase_6"]
    assert p6["status"] == "failed" and p6["model_size_mb"] > 0.001
    assert [g["passed"] for g in p6["gates"] if g["gate"] == "model_size_mb"] == [False]  # the gate, named
    assert all(m["phases"][f"phase_{i}"]["status"] == "completed" for i in range(6))
    assert console[-1] == m["verdict"]["lines"][-1] and console[-1].startswith("run: FAILED at validate-export")
    assert "TF.js model: none (the run failed)" in console


def test_same_seed_same_splits(local_run, strict_gate_run):
    a, b = local_run[1]["outputs"], strict_gate_run["outputs"]
    for name in ("train", "val", "test"):
        assert Path(a["split"][name]).read_bytes() == Path(b["split"][name]).read_bytes()
    cache_a = json.loads(Path(a["cache-images"]["report"]).read_text())
    cache_b = json.loads(Path(b["cache-images"]["report"]).read_text())
    assert cache_b["fetched"] == 0 and cache_b["cached"] == cache_a["cached"]


def test_compile_contains_all_components(tmp_path):
    cfg = load_pipeline_config(ROOT / "config" / "local.yaml")
    path = pipeline.compile_pipeline(cfg, str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all(Path(path).read_text()))  # then the Kubernetes platform spec
    execs = set(spec["deploymentSpec"]["executors"])
    for name in (
        "ingest",
        "cache-images",
        "split",
        "regional-split",
        "stage-weights",
        "baseline",
        "train-teacher",
        "evaluate-teacher",
        "teacher-logits",
        "combine-soft-labels",
        "train-student",
        "calibrate",
        "export-tfjs",
        "validate-export",
        "export-skipped",
        "training-manifest",
    ):
        assert f"exec-{name}" in execs, execs
    # The regional teachers run as one ParallelFor.
    dag = spec["root"]["dag"]["tasks"]
    loops = [t for t in dag.values() if "parameterIterator" in t]
    assert len(loops) == 1 and loops[0]["parameterIterator"]["items"]["inputParameter"]
