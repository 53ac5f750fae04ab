"""One run's headline figures as one flat mapping with stable keys: the `run_summary`
Metrics artifact of the manifest step, which KFP's compare page shows as one row per run.

The per-step Metrics artifacts (about 20 of them, the regional teachers' under one display
name inside the ParallelFor) cannot be compared run by run; these keys carry the teacher's
name instead (teacher_EU_SW_top1_own_regions), so two runs line up key by key. A figure the
run did not reach (a failed or skipped phase) is absent, never 0. Keys are built only from
fixed names and teacher names (checked by the config: path-safe, unique), joined by "_" to
a fixed prefix "teacher_", so no teacher name can produce a fixed key."""

from __future__ import annotations

import math
import re
from typing import Any

from shared import artifact_keys as K

RUN_SUMMARY_KEYS = (
    "run_completed",
    K.PLAN_CRITERIA_MET,
    K.BLESSED,
    "baseline_test_top1",
    "teacher_global_test_top1",
    "teacher_global_test_top5",
    "soft_labels_topk_mass_mean",
    "student_val_top1",
    "student_test_top1",
    "ce_control_test_top1",
    "distillation_gain_test_top1",
    "student_val_ece",
    "student_test_ece",
    "val_coverage",
    "test_coverage",
    "test_precision_at_threshold",
    "bundle_mb",
    "parity_correlation",
    "parity_top1_agreement",
    "latency_ms",
    K.RELEASE_PUBLISHED,
)
# teacher_<name>_<figure> for each regional teacher
REGIONAL_TEACHER_FIGURES = ("test_top1", "top1_own_regions", "min_gain_vs_global")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _completed(phases: dict, name: str) -> dict:
    p = phases.get(name) or {}
    return p if p.get("status") == "completed" else {}


def regional_teacher_keys(name: str) -> dict[str, str]:
    """figure -> metric key for one regional teacher (its name made key-safe)."""
    safe = _UNSAFE.sub("_", str(name)).strip("_") or "unnamed"
    return {f: f"teacher_{safe}_{f}" for f in REGIONAL_TEACHER_FIGURES}


def _regional_figures(phases: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, t in (_completed(phases, "phase_2").get("teachers") or {}).items():
        gains = [g for g in (t.get("gain_vs_global") or {}).values() if _num(g) is not None]
        figures = {
            "test_top1": t.get("top1"),
            "top1_own_regions": t.get("top1_own_regions"),
            "min_gain_vs_global": min(gains) if gains else None,
        }
        out.update({key: _num(figures[f]) for f, key in regional_teacher_keys(name).items()})
    return out


def run_summary_metrics(manifest: dict) -> dict[str, float]:
    """The manifest's headline figures under RUN_SUMMARY_KEYS and each regional teacher's
    teacher_<name>_<figure>; 1/0 for the verdicts; absent figures left out."""
    ph = manifest.get("phases") or {}
    verdict, run = manifest.get("verdict") or {}, manifest.get("run") or {}
    p0, p1, p3, p4, p5, p6 = (_completed(ph, f"phase_{i}") for i in (0, 1, 3, 4, 5, 6))
    parity = p6.get("parity") or {}
    ce = p4.get("ce_control") or {}
    figures: dict[str, Any] = {
        "run_completed": run.get("status") == "completed",
        K.PLAN_CRITERIA_MET: verdict.get("plan_criteria_met") is True,
        K.BLESSED: verdict.get("blessed") is True,
        "baseline_test_top1": p0.get("baseline_top1"),
        "teacher_global_test_top1": p1.get("top1"),
        "teacher_global_test_top5": p1.get("top5"),
        "soft_labels_topk_mass_mean": (p3.get("topk_mass_at_T") or {}).get("mean"),
        "student_val_top1": p4.get("final_top1"),
        "student_test_top1": p4.get("final_test_top1"),
        "ce_control_test_top1": ce.get("test_top1"),
        "distillation_gain_test_top1": ce.get("distillation_gain_test_top1"),
        "student_val_ece": p5.get("ece"),
        "student_test_ece": p5.get("test_ece"),
        "val_coverage": p5.get("coverage"),
        "test_coverage": p5.get("test_coverage"),
        "test_precision_at_threshold": p5.get("test_precision_at_threshold"),
        "bundle_mb": p6.get("model_size_mb"),
        "parity_correlation": parity.get("correlation"),
        "parity_top1_agreement": parity.get("top1_agreement"),
        "latency_ms": p6.get("latency_ms_median"),
        # 1 published, 0 refused or skipped; absent when the manifest has no release section
        K.RELEASE_PUBLISHED: (manifest.get("release") or {}).get("published"),
    }
    figures.update(_regional_figures(ph))
    return {k: v for k, v in ((k, _num(v)) for k, v in figures.items()) if v is not None}
