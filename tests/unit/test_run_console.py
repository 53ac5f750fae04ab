"""shared.run_console: kfp.local's log lines parsed into task events, the console's task lines
and key metrics, and a real (tiny) kfp.local run followed through two parallel tasks and a
failing one. The full DAG's console is checked in test_pipeline_local.py."""

import builtins
import io
import json
import logging
import sys
import time
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.dsl import Metrics, Output

from shared.run_console import (
    KEY_METRICS,
    RunConsole,
    TaskEvent,
    TaskOutputs,
    format_task_line,
    key_metric,
    parse_event,
    summary_lines,
    task_label,
)

# What kfp.local 2.17 writes (task_dispatcher / enhanced_dag_orchestrator), colours included.
KFP_LINES = {
    "22:34:36.479 - INFO - Executing task \x1b[96m'ingest'\x1b[0m": TaskEvent("start", "ingest"),
    "22:34:36.692 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m": TaskEvent(
        "end", "ingest", "SUCCESS"
    ),
    "22:40:01.002 - ERROR - Task \x1b[96m'calibrate'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m": TaskEvent(
        "end", "calibrate", "FAILURE"
    ),
    "22:40:01.002 - INFO - Task train-teacher cache hit (key=0123456789ab); skipping execution.": TaskEvent(
        "cached", "train-teacher"
    ),
    "22:40:01.002 - INFO - Skipping conditional task condition-3 (condition evaluated to False)": TaskEvent(
        "skipped", "condition-3", "condition false"
    ),
    "22:40:01.002 - INFO - Skipping task export-tfjs: upstream task(s) ['calibrate'] failed.": TaskEvent(
        "skipped", "export-tfjs", "upstream failed"
    ),
    # a task's own output quoting kfp is no event; nor are kfp's other records
    "    Executing task 'ingest'": None,
    "    [KFP Executor 2026-11-30 22:34:36,564 INFO]: Got executor_input:": None,
    "22:34:36.479 - INFO - Streamed logs:": None,
}


@pytest.mark.parametrize("line", list(KFP_LINES))
def test_parse_event(line):
    assert parse_event(line) == KFP_LINES[line]


def test_format_task_line():
    at = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert format_task_line("start", "train-teacher-2", "EU_SW", at=at) == "03:04:05  start   train-teacher-2 [EU_SW]"
    ok = format_task_line("ok", "train-teacher-2", "EU_SW", 83.4, "val top-1 0.818 (6 epochs)", at=at)
    assert ok.split() == "03:04:05 ok train-teacher-2 [EU_SW] 1m23s val top-1 0.818 (6 epochs)".split()
    failed = format_task_line("FAILED", "calibrate", seconds=2.26, at=at)
    assert failed.split() == ["03:04:05", "FAILED", "calibrate", "2.3s"]
    # columns: the seconds end where they end on every line, the metric starts after them
    assert ok.index("1m23s") + len("1m23s") == len(failed) and ok.index("val top-1") == len(failed) + 2


def _executor_output(task_dir, artifacts, params=None):
    task_dir.mkdir(parents=True)
    data = {
        "artifacts": {
            name: {"artifacts": [{"name": name, "uri": str(task_dir / name), "metadata": md}]}
            for name, md in artifacts.items()
        }
    }
    if params:
        data["parameterValues"] = params
    (task_dir / "executor_output.json").write_text(json.dumps(data))
    return task_dir


def test_key_metrics_from_executor_output(tmp_path):
    d = _executor_output(
        tmp_path / "for-loop-1-iteration-0" / "train-teacher-2",
        {"model": {"teacher": "EU_SW"}, "metrics": {"val_top1_acc": 0.8181, "epochs_run": 6}},
    )
    o = TaskOutputs.read(d, {"name": "EU_SW", "regions": "EU_SW"})
    assert key_metric("train-teacher-2", o) == "val top-1 0.818 (6 epochs)"
    assert task_label("train-teacher-2", o.inputs.__dict__) == "EU_SW"
    d = _executor_output(
        tmp_path / "calibrate",
        {
            "metrics": {"ece_before": 0.21, "ece_after": 0.05, "temperature": 1.7, "blessed": 0.0},
            "calibration": {"gate_bounds": "custom"},
        },
        {"blessed": False, "reason": "val_top1 0.25 < 0.99"},
    )
    assert key_metric("calibrate", TaskOutputs.read(d)).startswith(
        "ECE 0.210 -> 0.050 (T 1.70); plan criteria not reported; gate (custom bounds): NOT blessed: val_"
    )
    d = _executor_output(
        tmp_path / "calibrate-2",
        {
            "metrics": {
                "ece_before": 0.2,
                "ece_after": 0.05,
                "temperature": 1.7,
                "blessed": 1.0,
                "plan_criteria_met": 0.0,
            },
            "calibration": {"gate_bounds": "local"},
        },
        {"blessed": True, "reason": "blessed: ..."},
    )
    assert key_metric("calibrate", TaskOutputs.read(d)).endswith("plan criteria NOT met; gate (local bounds): blessed")
    d = _executor_output(
        tmp_path / "combine-soft-labels",
        {
            "metrics": {
                "samples": 348.0,
                "temperature": 3.0,
                "topk_mass_mean": 0.6178,
                "topk_mass_min": 0.5092,
                "teacher_agreement": 0.836,
            }
        },
    )
    assert key_metric("combine-soft-labels", TaskOutputs.read(d)) == (
        "348 soft labels at T=3 (top-k mass mean 0.618, min 0.509), teacher agreement 0.84"
    )
    d = _executor_output(tmp_path / "export-skipped", {}, {"Output": {"status": "skipped", "reason": "not blessed"}})
    assert key_metric("export-skipped", TaskOutputs.read(d)) == "not blessed"
    d = _executor_output(
        tmp_path / "training-manifest",
        {"manifest": {"git_commit": "", "phase_0": "completed", "phase_5": "completed", "phase_6": "skipped"}},
    )
    assert key_metric("training-manifest", TaskOutputs.read(d)) == "phases: 2 completed, 1 skipped (phase_6)"
    d = _executor_output(
        tmp_path / "training-manifest-2",
        {"manifest": {"run_status": "failed", "phase_5": "completed", "phase_6": "failed"}},
    )
    assert key_metric("training-manifest", TaskOutputs.read(d)) == "run failed; phases: 1 completed, 1 failed (phase_6)"
    d = _executor_output(tmp_path / "ingest", {"metrics": {"records_kept": 462.0}})
    with pytest.raises(AttributeError):  # a figure missing: RunConsole then shows the line without one
        key_metric("ingest", TaskOutputs.read(d))
    assert key_metric("not-in-the-table", TaskOutputs.read(d)) == ""


def test_every_component_of_the_pipeline_has_a_console_metric():
    import pipeline

    names = {c.name for c in pipeline._import_components().values()}
    assert names and names <= set(KEY_METRICS), names - set(KEY_METRICS)


def test_summary_lines(tmp_path):
    s = {"seconds": 252.4, "training_manifest": "/o/TRAINING_MANIFEST.yaml", "tfjs_model": "/o/tfjs_model"}
    lines = summary_lines(s, tmp_path, tmp_path / "run.log", tasks_ok=23)
    assert lines[0] == "Done in 4m12s: 23 tasks ok."
    assert any(line.endswith("/o/tfjs_model") and "TF.js model" in line for line in lines)
    assert lines[-2].endswith(str(tmp_path / "run.log"))
    # last, the verdict the manifest computed (here none was written: it says so, not "blessed")
    assert lines[-1] == "verdict: unknown (no TRAINING_MANIFEST.yaml was written)"
    assert "not exported" in "\n".join(summary_lines({"seconds": 1}, tmp_path, "run.log", 1))


# A tiny pipeline through kfp.local's real runner: named after pipeline components so that
# the key-metric table and labels apply.
@dsl.component(base_image="python:3.11", install_kfp_package=False)
def train_teacher(name: str, lines: int, metrics: Output[Metrics]):
    import time

    for i in range(lines):
        print(f"teacher {name} line {i}", flush=True)
        time.sleep(0.01)  # both iterations print at once
    metrics.log_metric("val_top1_acc", 0.5 if name == "A" else 0.75)
    metrics.log_metric("epochs_run", 3)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def calibrate(lines: int):
    for i in range(lines):
        print(f"calibrate line {i}")
    raise ValueError("the gate is shut")


@dsl.pipeline(name="console-ok")
def two_teachers():
    with dsl.ParallelFor(items=["A", "B"], name="teachers") as name:
        train_teacher(name=name, lines=40)


@dsl.pipeline(name="console-fail")
def failing():
    calibrate(lines=45)


def _run(pipeline_func, tmp_path):
    out = io.StringIO()
    rc = RunConsole(tmp_path / "run.log", out)
    error = None
    with rc.capture():
        local.init(
            runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True
        )
        try:
            pipeline_func()
        except RuntimeError as e:
            error = e
    if error is not None:
        rc.failure_report(error)
    rc.close()
    return rc, out.getvalue().splitlines(), (tmp_path / "run.log").read_text()


def test_parallel_tasks_followed_and_told_apart(tmp_path):
    stdout, print_, handlers = sys.stdout, builtins.print, logging.getLogger().handlers[:]
    rc, console, log = _run(two_teachers, tmp_path)
    # what kfp.local swaps while it runs is back as it was
    assert (sys.stdout, builtins.print, logging.getLogger().handlers) == (stdout, print_, handlers)
    assert len(console) == 4, console
    for name, acc in (("A", "0.500"), ("B", "0.750")):
        assert sum(f"start   train-teacher [{name}]" in line for line in console) == 1, console
        [ok] = [line for line in console if f"ok      train-teacher [{name}]" in line]
        assert ok.endswith(f"val top-1 {acc} (3 epochs)"), ok
        # every line the task printed is in the log, under its own task's name
        mine = [line for line in log.splitlines() if f"teacher {name} line" in line]
        assert len(mine) == 40 and all(line.startswith(f"train-teacher [{name}] | ") for line in mine)
    assert "Got executor_input" in log and rc.tasks_ok() == 2 and not rc.failed


def test_failed_task_shows_its_last_lines(tmp_path):
    rc, console, log = _run(failing, tmp_path)
    text = "\n".join(console)
    assert console[0].endswith("start   calibrate") and "FAILED  calibrate" in console[1]
    assert "FAILED: task calibrate" in text and "ValueError: the gate is shut" in text
    assert "calibrate line 44" in text and "calibrate line 5\n" not in text + "\n"  # the tail only
    assert console[-1] == f"full log: {tmp_path / 'run.log'}"
    assert len(console) < 40
    assert "calibrate line 0" in log and "Traceback" in log


def test_cli_run_local_fails_with_the_task_and_exit_1(tmp_path, monkeypatch, capsys):
    import pipeline

    monkeypatch.setattr(pipeline, "build_pipeline", lambda cfg, local=False: failing)  # the CLI path, a one-task DAG
    config = Path(pipeline.__file__).parent / "config" / "local.yaml"
    code = pipeline.main(["run-local", "--config", str(config), "--output", str(tmp_path)])
    console = capsys.readouterr().out.splitlines()
    assert code == 1
    assert console[0].endswith(f"full log: {tmp_path / 'run.log'}")
    assert any("FAILED  calibrate" in line for line in console)
    assert "  | ValueError: the gate is shut" in console and f"full log: {tmp_path / 'run.log'}" in console
    # this one-task DAG has none of the manifest's parameters: no manifest, and the console says so
    assert console[-3:] == [
        "TRAINING_MANIFEST.yaml: not written (see the log)",
        "TF.js model: none (the run failed)",
        "verdict: unknown (no TRAINING_MANIFEST.yaml was written)",
    ]
    assert "Traceback" in (tmp_path / "run.log").read_text()
