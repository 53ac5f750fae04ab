"""A manifest whatever happens, locally: after a kfp.local run failed, the training-manifest
step's inputs gathered from the tasks that did run (their kfp.local task directories), so
run_local can call the same step on them (kfp 2.17.3's local runner cannot run a step with
ignore_upstream_failure() over a failed task's outputs; the compiled pipeline does that).

A task directory holds one file or folder per output and executor_output.json with each
artifact's metadata and the output parameters; a failed task has no executor_output.json,
but validate_export writes its report (every gate, value and bound) before it fails, which is
how the manifest names the failed gate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LocalArtifact:
    """An upstream artifact as the manifest step reads it (path, uri, metadata)."""

    path: str
    uri: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FinishedTask:
    """One task of the failed run: kfp's task name ("train-teacher-2"), the input that tells two
    uses of a component apart ("EU_SW", "global teacher"), SUCCESS or FAILURE, its directory."""

    task: str
    label: str
    status: str
    task_dir: Path | None


# (component, its output) -> the manifest step's input, for components used once
_SINGLE = {
    ("ingest", "audit"): "ingest_audit",
    ("split", "stats"): "split_stats",
    ("cache-images", "report"): "cache_report",
    ("baseline", "report"): "baseline_report",
    ("combine-soft-labels", "soft_labels"): "soft_labels",
    ("train-student", "model"): "student_model",
    ("train-student", "metrics"): "student_metrics",
    ("calibrate", "calibration"): "calibration",
}
# stage-weights' role input -> the manifest step's input
_STAGED = {"global teacher": "global_teacher_weights", "student": "student_weights", "baseline": "baseline_weights"}


def _component(task: str) -> str:
    """kfp numbers a component's second use ("train-teacher-2"): the component's name."""
    head, _, tail = task.rpartition("-")
    return head if tail.isdigit() and head else task


def _outputs(task_dir: Path) -> tuple[dict[str, LocalArtifact], dict[str, Any]]:
    """A finished task's output artifacts (by output name) and output parameters."""
    marker = task_dir / "executor_output.json"
    data = json.loads(marker.read_text()) if marker.is_file() else {}
    arts = {}
    for name, entry in (data.get("artifacts") or {}).items():
        first = (entry.get("artifacts") or [{}])[0]
        path = str(task_dir / name)
        arts[name] = LocalArtifact(path, first.get("uri") or path, dict(first.get("metadata") or {}))
    return arts, dict(data.get("parameterValues") or {})


def _export_summary(bundle: LocalArtifact | None, report_path: Path | None, skipped: dict | None) -> dict:
    """The manifest's export_summary: the export-skipped step's reason, or the bundle's figures
    with the validation report's (its failed gates included), as validate_export returns them."""
    if skipped:
        return dict(skipped)
    if bundle is None:
        return {}
    if report_path is None or not report_path.is_file():
        return {"uri": bundle.uri, **bundle.metadata, "parity": {"status": "not_run"}}
    from shared.export.tfjs import validation_summary

    return validation_summary(json.loads(report_path.read_text()), bundle.uri, bundle.metadata)


def manifest_inputs(tasks: list[FinishedTask]) -> dict[str, Any]:
    """The training-manifest step's artifact inputs and export_summary from the tasks that ran
    (a failed task contributes nothing, except validate_export's report)."""
    found: dict[str, Any] = {"regional_teacher_results": [], "regional_teacher_models": []}
    bundle, report, skipped = None, None, None
    for t in tasks:
        if t.task_dir is None:
            continue
        comp = _component(t.task.rsplit("/", 1)[-1])
        if comp == "validate-export":
            report = t.task_dir / "report"  # written before the step fails on a gate
        if t.status != "SUCCESS":
            continue
        arts, params = _outputs(t.task_dir)
        for (c, out), name in _SINGLE.items():
            if c == comp and out in arts:
                found[name] = arts[out]
        for c, out, role in (("train-teacher", "model", "model"), ("evaluate-teacher", "results", "results")):
            if comp == c and out in arts:
                if t.label == "global":
                    found[f"global_teacher_{role}"] = arts[out]
                else:
                    found[f"regional_teacher_{'models' if role == 'model' else 'results'}"].append(arts[out])
        if comp == "stage-weights" and t.label in _STAGED and "weights" in arts:
            found[_STAGED[t.label]] = arts["weights"]
        elif comp == "export-tfjs":
            bundle = arts.get("bundle")
        elif comp == "export-skipped":
            skipped = params.get("Output")
            found["release_summary"] = params.get("Output")
        elif comp == "publish":
            found["release_summary"] = params.get("Output")
    found["export_summary"] = _export_summary(bundle, report, skipped)
    return {k: v for k, v in found.items() if v not in ([], None)}


def error_line(lines: list[str]) -> str:
    """The failed task's error: the last line of its output that names an exception (a
    traceback's last line), else its last non-empty line."""
    text = [line.strip() for line in lines if line.strip()]
    for line in reversed(text):
        head = line.split(":", 1)[0]
        if ":" in line and (head.endswith("Error") or head.endswith("Exception")) and " " not in head:
            return line
    return text[-1] if text else "no output"
