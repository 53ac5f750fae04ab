"""Phase 5: calibrate the student (ECE, temperature, "no concluyente" threshold)
and decide whether it is blessed for export (the quality gate)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def calibrate(
    model: Input[Model],
    val: Input[Dataset],
    test: Input[Dataset],
    cache_dir: str,
    ece_threshold: float,
    target_precision: float,
    calibration_objective: str,
    min_val_top1: float,
    max_ece: float,
    calibrated: Output[Model],
    calibration: Output[Artifact],
    reliability: Output[HTML],
    reliability_png: Output[Artifact],
    metrics: Output[Metrics],
    min_coverage: float = 0.80,
    min_precision: float = 0.95,
) -> NamedTuple("Outputs", [("blessed", bool), ("reason", str)]):
    """Calibration (temperature and "no concluyente" threshold fitted on val) and the export gate,
    checked on val and on the held-out test set: blessed only when every gate passes.

    Args:
        model: The student checkpoint (train_student).
        val: The val split (temperature and threshold are fitted here).
        test: The test split (held out: every gating figure is measured here too).
        cache_dir: The image cache.
        ece_threshold: Temperature scaling runs when val ECE exceeds it (plan 5.2).
        target_precision: The precision the confidence threshold is chosen for (plan 5.3).
        calibration_objective: "ece" (plan 5.2) or "nll".
        min_val_top1: Gate: val top-1 >= this (plan 4.3: 0.70).
        max_ece: Gate: ECE after calibration < this, on val and test (plan 5.4: 0.10).
        min_coverage: Gate: share of samples above the threshold >= this, on val and test (plan 5.4: 0.80).
        min_precision: Gate: precision above the threshold >= this, on val and test (plan 5.4: 0.95).

    Returns:
        calibrated: The checkpoint with temperature and threshold.
        calibration: calibration.json with the gate table.
        reliability: Reliability diagram (HTML).
        reliability_png: The same as PNG.
        metrics: Temperature, ECE/MCE, threshold, coverage and precision on val and test, blessed.
        blessed: Whether every gate passed.
        reason: Each failed (or passed) gate with its value and bound.
    """
    from collections import namedtuple

    from shared import artifact_keys as K
    from shared.evaluate.calibration import export_gate, reliability_diagram_png, report_html, run_calibrate
    from shared.io.atomic import write_bytes, write_json, write_text
    from shared.io.records import load_jsonl

    cal = run_calibrate(
        model.path,
        load_jsonl(val.path),
        load_jsonl(test.path),
        cache_dir,
        calibrated.path,
        calibration.path,
        ece_threshold,
        target_precision,
        calibration_objective,
    )
    write_text(reliability.path, report_html(cal))
    write_bytes(reliability_png.path, reliability_diagram_png(cal["bins_before"], cal["bins_after"]))
    blessed, reason, gates = export_gate(cal, min_val_top1, max_ece, min_coverage, min_precision)
    write_json(calibration.path, {**cal, "gates": gates, K.BLESSED: blessed, K.REASON: reason})
    for key in K.CALIBRATION_METRICS:
        if isinstance(cal.get(key), (int, float)):
            metrics.log_metric(key, cal[key])
    metrics.log_metric(K.THRESHOLD_REACHED, float(cal["threshold_reached"]))
    metrics.log_metric(K.BLESSED, float(blessed))
    calibration.metadata.update({K.BLESSED: blessed, K.REASON: reason, K.THRESHOLD_MESSAGE: cal["threshold_message"]})
    print(
        f"calibration: T={cal['temperature']:.3f} ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; "
        f"{cal['threshold_message']}; {reason}"
    )
    return namedtuple("Outputs", ["blessed", "reason"])(blessed, reason)
