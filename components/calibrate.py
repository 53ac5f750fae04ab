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
    gate_profile: str = "",
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
        gate_profile: The config's export.gates.profile ("local" words non-plan bounds as local
            smoke-test ones); the gate is labelled the plan's only when every bound equals the plan's.

    Returns:
        calibrated: The checkpoint with temperature and threshold.
        calibration: calibration.json with the gate table, the gate's bounds beside the plan's
            (gate_bounds) and the plan's criteria for the student, each value/bound/met (plan_criteria).
        reliability: Reliability diagram (HTML).
        reliability_png: The same as PNG.
        metrics: Temperature, ECE/MCE, threshold, coverage and precision on val and test, blessed,
            plan_criteria_met (1 met, 0 not met or not all measured).
        blessed: Whether every gate passed.
        reason: Each failed (or passed) gate with its value and bound.
    """
    from collections import namedtuple

    from shared import artifact_keys as K
    from shared.evaluate.calibration import export_gate, reliability_diagram_png, report_html, run_calibrate
    from shared.evaluate.plan_criteria import gate_bounds, plan_verdict, verdict_lines
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
    used = {"min_val_top1": min_val_top1, "max_ece": max_ece, "min_coverage": min_coverage}
    bounds = gate_bounds({**used, "min_precision": min_precision}, gate_profile or None)
    plan = plan_verdict(cal)
    verdict = {K.BLESSED: blessed, K.REASON: reason, K.GATE_BOUNDS: bounds, K.PLAN_CRITERIA: plan}
    write_json(calibration.path, {**cal, "gates": gates, **verdict})
    for key in K.CALIBRATION_METRICS:
        if isinstance(cal.get(key), (int, float)):
            metrics.log_metric(key, cal[key])
    metrics.log_metric(K.THRESHOLD_REACHED, float(cal["threshold_reached"]))
    metrics.log_metric(K.BLESSED, float(blessed))
    metrics.log_metric(K.PLAN_CRITERIA_MET, float(plan["met"] is True))
    calibration.metadata.update(
        {
            K.BLESSED: blessed,
            K.REASON: reason,
            K.THRESHOLD_MESSAGE: cal["threshold_message"],
            K.GATE_BOUNDS: bounds["kind"],
            K.PLAN_CRITERIA_MET: plan["met"],
        }
    )
    print(
        f"calibration: T={cal['temperature']:.3f} ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; "
        f"{cal['threshold_message']}; {reason}"
    )
    for line in verdict_lines(bounds, blessed, plan):
        print(line)
    return namedtuple("Outputs", ["blessed", "reason"])(blessed, reason)
