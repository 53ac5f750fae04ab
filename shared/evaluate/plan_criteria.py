"""One verdict everywhere: whether the PLAN's criteria for the shipped student were met, kept
apart from whether this run's own gate blessed it, and how that gate's bounds compare with
the plan's.

The criteria are the student's (plan 4.3: val top-1 >= 0.70; 5.4: ECE < 0.10, coverage >= 0.80
at precision >= 0.95, on val where temperature and threshold were fitted and on the held-out
test set). The gate checks the same rows with the bounds the run was given; its label is
derived from those bounds ("plan" only when every bound equals the plan's), never taken on
trust from a config's `profile`. calibrate writes both into calibration.json (and so into the
TF.js bundle) and its metrics; the training manifest and the console's last lines read them
from there through verdict_lines. No torch here: the manifest step's image has none."""

from __future__ import annotations

import math
from typing import Any

# The plan's bound for each gate parameter (the pipeline's gate_* parameters and config export.gates).
PLAN_BOUNDS: dict[str, float] = {
    "min_val_top1": 0.70,  # 4.3
    "max_ece": 0.10,  # 5.4 (strict: ECE < 0.10)
    "min_coverage": 0.80,  # 5.4
    "min_precision": 0.95,  # 5.4
    "max_bundle_mb": 20.0,  # 3.3: the student's bundle < 20 MB
    "max_latency_ms": 5000.0,  # 6.4: CPU browser < 5 s
}
CALIBRATION_BOUNDS = ("min_val_top1", "max_ece", "min_coverage", "min_precision")

# How each criterion reads in a sentence, by its row name.
_READABLE = {
    "val_top1": "student val top-1",
    "ece_after": "val ECE",
    "coverage": "val coverage",
    "precision_at_threshold": "val precision at threshold",
    "test_ece_after": "test ECE",
    "test_coverage": "test coverage",
    "test_precision_at_threshold": "test precision at threshold",
}


def criteria_rows(
    cal: dict[str, Any] | None, min_val_top1: float, max_ece: float, min_coverage: float, min_precision: float
) -> list[dict[str, Any]]:
    """The student's criteria on val and on test with the given bounds, in the plan's own
    inequalities: [{name, split, value, op, bound, met}] (met None: not measured)."""
    cal = cal or {}
    rows = [("val_top1", "val", cal.get("val_top1"), ">=", min_val_top1)]
    for split, prefix in (("val", ""), ("test", "test_")):
        rows += [
            (f"{prefix}ece_after", split, cal.get(f"{prefix}ece_after"), "<", max_ece),
            (f"{prefix}coverage", split, cal.get(f"{prefix}coverage"), ">=", min_coverage),
            (f"{prefix}precision_at_threshold", split, cal.get(f"{prefix}precision_at_threshold"), ">=", min_precision),
        ]
    table = []
    for name, split, value, op, bound in rows:
        known = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        met = (value >= bound if op == ">=" else value < bound) if known else None
        table.append(
            {
                "name": name,
                "split": split,
                "value": float(value) if known else None,
                "op": op,
                "bound": float(bound),
                "met": met,
            }
        )
    return table


def plan_verdict(cal: dict[str, Any] | None) -> dict[str, Any]:
    """The plan's criteria for the student, from calibrate's figures (None: not calibrated):
    {met: True | False | None (some criterion not measured, none failed), criteria: rows}."""
    rows = criteria_rows(cal, *(PLAN_BOUNDS[k] for k in CALIBRATION_BOUNDS))
    flags = [r["met"] for r in rows]
    met = False if False in flags else (None if None in flags else True)
    return {"met": met, "criteria": rows}


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def gate_bounds(used: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
    """How the bounds a gate used compare with the plan's: {kind, label, used, plan, deviations}.

    kind is "plan" only when every bound in `used` that the plan defines equals the plan's;
    otherwise "local" when the config marks smoke-test bounds (profile: local), else "custom"
    (e.g. gate_min_coverage=0.0 passed as a run parameter while the config says profile: plan).
    A bound of `used` that is not a number is an error naming it."""
    for key, value in used.items():
        if key in PLAN_BOUNDS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"gate bound {key}: expected a number, got {value!r}")
    deviations = {
        k: {"used": float(v), "plan": PLAN_BOUNDS[k]}
        for k, v in used.items()
        if k in PLAN_BOUNDS and not _same(v, PLAN_BOUNDS[k])
    }
    if not deviations:
        kind, label = "plan", "the plan's criteria"
    else:
        shown = ", ".join(f"{k} {d['used']:g} (plan {d['plan']:g})" for k, d in deviations.items())
        kind = "local" if profile == "local" else "custom"
        head = (
            "LOCAL smoke-test thresholds (small models, bundled data)"
            if kind == "local"
            else "bounds that differ from the plan's"
        )
        label = f"{head}: not the plan's criteria; {shown}"
    return {
        "kind": kind,
        "label": label,
        "used": {k: v for k, v in used.items() if k in PLAN_BOUNDS},
        "plan": {k: PLAN_BOUNDS[k] for k in used if k in PLAN_BOUNDS},
        "deviations": deviations,
    }


def _show(row: dict[str, Any]) -> str:
    what = _READABLE.get(row["name"], row["name"])
    if row["value"] is None:
        return f"{what} not measured"
    failed_op = {">=": "<", "<": ">="}[row["op"]]
    return f"{what} {row['value']:.3f} {failed_op} {row['bound']:g}"


def verdict_lines(gate: dict[str, Any] | None, blessed: bool | None, plan: dict[str, Any] | None) -> list[str]:
    """The two lines every report ends with (the console, the manifest's summary):
    'gate (local bounds): blessed' and 'plan criteria: NOT met (student val top-1 0.580 < 0.7, ...)'."""
    kind = (gate or {}).get("kind")
    bounds = {"plan": "plan bounds", "local": "local bounds", "custom": "NON-plan bounds"}.get(kind, "bounds unknown")
    state = "blessed" if blessed else ("NOT blessed" if blessed is False else "not run")
    if kind == "custom":
        state += " (" + ", ".join(f"{k} {d['used']:g}, plan {d['plan']:g}" for k, d in gate["deviations"].items()) + ")"
    lines = [f"gate ({bounds}): {state}"]
    rows = (plan or {}).get("criteria") or []
    met = (plan or {}).get("met")
    if not rows or all(r["value"] is None for r in rows):
        lines.append("plan criteria: not measured (the student was not calibrated)")
    elif met:
        lines.append("plan criteria: met (" + ", ".join(_show_met(r) for r in rows) + ")")
    else:
        unmet = [r for r in rows if r["met"] is not True]
        lines.append(
            f"plan criteria: {'NOT met' if met is False else 'not all measured'} ("
            + ", ".join(_show(r) for r in unmet)
            + ")"
        )
    return lines


def _show_met(row: dict[str, Any]) -> str:
    return f"{_READABLE.get(row['name'], row['name'])} {row['value']:.3f} {row['op']} {row['bound']:g}"
