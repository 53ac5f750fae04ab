"""shared/evaluate/plan_criteria.py: the plan's criteria for the student apart from the run's own
gate, and the gate labelled from the bounds it actually used."""

import pytest

from shared.evaluate.calibration import export_gate
from shared.evaluate.plan_criteria import PLAN_BOUNDS, gate_bounds, plan_verdict, verdict_lines

GOOD = {
    "val_top1": 0.81,
    "ece_after": 0.04,
    "coverage": 0.86,
    "precision_at_threshold": 0.96,
    "test_ece_after": 0.05,
    "test_coverage": 0.84,
    "test_precision_at_threshold": 0.955,
}
PLAN = {k: PLAN_BOUNDS[k] for k in ("min_val_top1", "max_ece", "min_coverage", "min_precision")}


def test_the_plans_bounds_are_labelled_the_plans_and_only_they():
    g = gate_bounds(dict(PLAN), profile="plan")
    assert (g["kind"], g["label"], g["deviations"]) == ("plan", "the plan's criteria", {})
    # a relaxed bound passed as a run parameter, under a config that says profile: plan
    g = gate_bounds({**PLAN, "min_coverage": 0.0}, profile="plan")
    assert g["kind"] == "custom" and "not the plan's criteria" in g["label"]
    assert g["deviations"] == {"min_coverage": {"used": 0.0, "plan": 0.8}}
    assert "min_coverage 0 (plan 0.8)" in g["label"]
    # a stricter one is not the plan's either; local smoke-test bounds are worded as local
    assert gate_bounds({"max_bundle_mb": 0.001}, profile="plan")["kind"] == "custom"
    g = gate_bounds({**PLAN, "min_val_top1": 0.3}, profile="local")
    assert g["kind"] == "local" and g["label"].startswith("LOCAL smoke-test thresholds")
    # profile: local with the plan's very bounds is the plan's gate: derived, not declared
    assert gate_bounds(dict(PLAN), profile="local")["kind"] == "plan"
    with pytest.raises(ValueError, match="min_coverage"):
        gate_bounds({"min_coverage": "0.8"})


def test_plan_verdict_checks_every_criterion_with_the_plans_inequalities():
    v = plan_verdict(GOOD)
    assert v["met"] is True and len(v["criteria"]) == 7 and all(r["met"] for r in v["criteria"])
    # ECE < 0.10 is strict: exactly 0.10 fails; top-1 >= 0.70 is not strict
    v = plan_verdict({**GOOD, "test_ece_after": 0.10, "val_top1": 0.70})
    rows = {r["name"]: r for r in v["criteria"]}
    assert v["met"] is False and rows["test_ece_after"]["met"] is False and rows["val_top1"]["met"] is True
    assert rows["test_ece_after"] == {
        "name": "test_ece_after",
        "split": "test",
        "value": 0.10,
        "op": "<",
        "bound": 0.10,
        "met": False,
    }
    # not measured is neither met nor failed
    partial = plan_verdict({k: v for k, v in GOOD.items() if k != "test_coverage"})
    assert partial["met"] is None
    assert plan_verdict(None)["met"] is None


def test_the_gate_and_the_plan_are_two_verdicts():
    """A student blessed by relaxed bounds while the plan's criteria are unmet says both."""
    cal = {**GOOD, "val_top1": 0.58, "coverage": 0.41, "test_coverage": 0.39}
    blessed, _, table = export_gate(cal, 0.30, 0.35, 0.0, 0.0)
    assert blessed and all(row["passed"] for row in table)
    gate = gate_bounds({**PLAN, "min_val_top1": 0.30, "max_ece": 0.35, "min_coverage": 0.0, "min_precision": 0.0})
    lines = verdict_lines(gate, blessed, plan_verdict(cal))
    assert lines[0].startswith("gate (NON-plan bounds): blessed (min_val_top1 0.3, plan 0.7")
    assert lines[1] == (
        "plan criteria: NOT met (student val top-1 0.580 < 0.7, val coverage 0.410 < 0.8, test coverage 0.390 < 0.8)"
    )
    local = gate_bounds({**PLAN, "min_val_top1": 0.30}, profile="local")
    assert verdict_lines(local, True, plan_verdict(cal))[0] == "gate (local bounds): blessed"
    ok = verdict_lines(gate_bounds(dict(PLAN)), True, plan_verdict(GOOD))
    assert ok[0] == "gate (plan bounds): blessed" and ok[1].startswith("plan criteria: met (student val top-1 0.810")
    assert verdict_lines(None, None, plan_verdict(None)) == [
        "gate (bounds unknown): not run",
        "plan criteria: not measured (the student was not calibrated)",
    ]
