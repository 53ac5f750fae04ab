"""shared/manifest/after_failure.py: the manifest step's inputs from a failed local run's task
directories, and the failed task's error line."""

import json

from shared.manifest.after_failure import FinishedTask, error_line, manifest_inputs


def _task(root, name, outputs, params=None, label="", status="SUCCESS"):
    d = root / name
    d.mkdir(parents=True)
    if status == "SUCCESS":
        arts = {o: {"artifacts": [{"name": o, "uri": str(d / o), "metadata": md}]} for o, md in outputs.items()}
        (d / "executor_output.json").write_text(json.dumps({"artifacts": arts, "parameterValues": params or {}}))
    return FinishedTask(name, label, status, d)


def test_inputs_by_component_and_label(tmp_path):
    tasks = [
        _task(tmp_path, "ingest", {"audit": {}}),
        _task(tmp_path, "split", {"stats": {}}),
        _task(tmp_path, "stage-weights", {"weights": {"model_id": "t"}}, label="global teacher"),
        _task(tmp_path, "stage-weights-2", {"weights": {"model_id": "s"}}, label="student"),
        _task(tmp_path, "train-teacher", {"model": {"teacher": "global"}}, label="global"),
        _task(tmp_path, "evaluate-teacher", {"results": {}}, label="global"),
        _task(tmp_path, "for-loop-2/train-teacher-2", {"model": {"teacher": "EU_SW"}}, label="EU_SW"),
        _task(tmp_path, "for-loop-2/evaluate-teacher-2", {"results": {}}, label="EU_SW"),
        _task(tmp_path, "train-student", {"model": {"final_stage": "finetuning"}, "metrics": {}}),
        _task(tmp_path, "calibrate", {"calibration": {"blessed": False}}),
        _task(tmp_path, "export-skipped", {}, params={"Output": {"status": "skipped", "reason": "not blessed"}}),
        _task(tmp_path, "combine-soft-labels", {}, status="FAILURE"),  # failed: contributes nothing
    ]
    got = manifest_inputs(tasks)
    assert got["global_teacher_weights"].metadata == {"model_id": "t"}
    assert got["student_weights"].path == str(tmp_path / "stage-weights-2" / "weights")
    assert got["global_teacher_model"].metadata == {"teacher": "global"}
    assert [m.metadata["teacher"] for m in got["regional_teacher_models"]] == ["EU_SW"]
    assert len(got["regional_teacher_results"]) == 1 and "global_teacher_results" in got
    assert got["student_model"].metadata == {"final_stage": "finetuning"} and "student_metrics" in got
    assert got["calibration"].metadata == {"blessed": False}
    assert got["export_summary"] == {"status": "skipped", "reason": "not blessed"}
    assert {"ingest_audit", "split_stats"} <= set(got) and "soft_labels" not in got


def test_an_export_that_failed_validation_without_a_report(tmp_path):
    tasks = [
        _task(tmp_path, "export-tfjs", {"bundle": {"quantization": "uint8"}}),
        _task(tmp_path, "validate-export", {}, status="FAILURE"),
    ]
    summary = manifest_inputs(tasks)["export_summary"]
    assert summary["quantization"] == "uint8" and summary["parity"] == {"status": "not_run"}
    assert summary["uri"] == str(tmp_path / "export-tfjs" / "bundle")


def test_error_line():
    tail = ["Traceback (most recent call last):", '  File "x.py", line 3', "RuntimeError: gate max_bundle_mb", ""]
    assert error_line(tail) == "RuntimeError: gate max_bundle_mb"
    assert error_line(["epoch 1", "killed"]) == "killed"
    assert error_line([]) == "no output"
