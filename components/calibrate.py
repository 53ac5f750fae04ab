"""Phase 5: calibrate the student (ECE, temperature, "no concluyente" threshold)
and decide whether it is blessed for export (the quality gate)."""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def calibrate(model: Input[Model], val: Input[Dataset], test: Input[Dataset], cache_dir: str,
              ece_threshold: float, target_precision: float, calibration_objective: str,
              min_val_top1: float, max_ece: float,
              calibrated: Output[Model], calibration: Output[Artifact], reliability: Output[HTML],
              reliability_png: Output[Artifact], metrics: Output[Metrics]
              ) -> NamedTuple("Outputs", [("blessed", bool), ("reason", str)]):
    """Calibration metrics and the export gate (blessed only when the gates pass)."""
    from collections import namedtuple

    from shared.atomic import write_bytes, write_text
    from shared.calibration import export_gate, reliability_diagram_png, report_html, run_calibrate
    from shared.records import load_jsonl

    cal = run_calibrate(model.path, load_jsonl(val.path), load_jsonl(test.path), cache_dir, calibrated.path,
                        calibration.path, ece_threshold, target_precision, calibration_objective)
    write_text(reliability.path, report_html(cal))
    write_bytes(reliability_png.path, reliability_diagram_png(cal["bins_before"], cal["bins_after"]))
    blessed, reason = export_gate(cal, min_val_top1, max_ece)
    for key in ("temperature", "ece_before", "ece_after", "mce_before", "mce_after", "threshold", "coverage",
                "val_top1", "test_top1", "test_ece_after"):
        if isinstance(cal.get(key), (int, float)):
            metrics.log_metric(key, cal[key])
    metrics.log_metric("threshold_reached", float(cal["threshold_reached"]))
    metrics.log_metric("blessed", float(blessed))
    calibration.metadata.update({"blessed": blessed, "reason": reason, "threshold_message": cal["threshold_message"]})
    print(f"calibration: T={cal['temperature']:.3f} ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; "
          f"{cal['threshold_message']}; {reason}")
    return namedtuple("Outputs", ["blessed", "reason"])(blessed, reason)
