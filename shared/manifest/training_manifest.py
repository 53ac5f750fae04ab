"""Phase 7: the reproducibility manifest (TRAINING_MANIFEST.yaml) in the shape of
the plan's section 7.1: when and from which commit, the data snapshot and split
sizes, each phase's status and figures (with the plan's success criteria checked),
the software environment, the seed and every hyperparameter of the configs.

A phase without a result is `status: skipped` with the reason (e.g. the export
was not blessed by the quality gates); nothing is invented.

build_training_manifest composes one builder per section (data, phase_0 ... phase_6,
environment, models, hyperparameters); the collect_* functions turn the manifest step's
artifacts (path, uri, metadata) into its inputs, and write_training_manifest writes the
manifest and its summary table (components/training_manifest.py only wires them)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from shared import artifact_keys as K
from shared.data.regions import region_list
from shared.evaluate.plan_criteria import PLAN_BOUNDS as PLAN_GATE_BOUNDS
from shared.evaluate.plan_criteria import gate_bounds, plan_verdict, verdict_lines
from shared.io.atomic import write_text
from shared.io.environment import environment_versions
from shared.manifest.release_section import release_section

# The plan's success criteria (sections 0.2, 1.4, 2.4, 4.3, 5.4, 6.4); the
# pipeline config's gates replace the ones it also defines.
PLAN_CRITERIA = {
    "max_fetch_fail_rate": 0.05,
    "teacher_min_top1": 0.70,
    "teacher_min_top5": 0.85,
    "regional_min_top1": 0.80,
    "regional_min_gain_vs_global": 0.10,
    "student_min_top1": 0.70,
    "max_ece": 0.10,
    "min_coverage": 0.80,
    "min_precision_at_threshold": 0.95,
    "max_model_size_mb": 150.0,
    "min_parity_correlation": 0.995,
    "student_max_bundle_mb": 20.0,
    "max_latency_ms_cpu_browser": 5000.0,
}

MANIFEST_NAME = "TRAINING_MANIFEST.yaml"

PHASES = (
    "baseline",
    "global_teacher",
    "regional_teachers",
    "soft_labels",
    "student",
    "calibration",
    "export",
    "export_validation",
)


class ManifestError(ValueError):
    """The inputs of the manifest are malformed (named in the message)."""


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """The checked-out commit (env GIT_COMMIT first, as images bake it in), or None."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _num(d: dict | None, *keys: str) -> float | None:
    """The first of `keys` in `d` holding a finite number."""
    for k in keys:
        v = (d or {}).get(k)
        # numbers.Real: numpy scalars too (np.float32 is no float subclass)
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def _count(v: Any) -> Any:
    """A count that crossed KFP's JSON (where 10 arrives as 10.0) back to an int."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer():  # numpy scalars too
        return int(v)
    return v


def _get(d: Any, dotted: str) -> Any:
    """d["a"]["b"] for "a.b"; None where a part is missing."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _first(d: Any, *paths: str) -> Any:
    """The first of the dotted `paths` in `d` that is not None."""
    for p in paths:
        v = _get(d, p)
        if v is not None:
            return v
    return None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"a.b.c": value} (empty mappings kept as values)."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _plain(x: Any) -> Any:
    """Numpy scalars/arrays, tuples and paths -> YAML-safe Python values."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist"):
        return _plain(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _skipped(result: Any, default_reason: str) -> dict | None:
    """The skipped/failed record for an absent or explicitly skipped result, else None."""
    if result is None or result == {} or result == []:
        return {"status": "skipped", "reason": default_reason}
    if isinstance(result, dict) and result.get("status") in ("skipped", "failed"):
        return {"status": result["status"], "reason": result.get("reason") or default_reason}
    return None


def _check(value: float | None, op: str, bound: float) -> bool | None:
    """`value op bound`; None when the value is unknown (the criterion was not measured)."""
    if value is None:
        return None
    ops = {">=": value >= bound, "<=": value <= bound, "<": value < bound, ">": value > bound}
    return ops[op]


def _criteria(config: dict) -> dict[str, float]:
    """The plan's success criteria, always: a run's own gate thresholds (e.g. the local smoke-test
    ones) are reported separately by _gate_section, never under the plan's name."""
    return dict(PLAN_CRITERIA)


# calibrate's gate table rows -> the gate parameter each row's bound came from
_GATE_ROW_BOUND = {
    "val_top1": "min_val_top1",
    "ece_after": "max_ece",
    "test_ece_after": "max_ece",
    "coverage": "min_coverage",
    "test_coverage": "min_coverage",
    "precision_at_threshold": "min_precision",
    "test_precision_at_threshold": "min_precision",
}


def _gate_section(config: dict, cal: dict | None) -> dict:
    """The bounds this run's export gate used (calibrate's table where it ran: a bound passed as
    a run parameter shows there; the config's otherwise), labelled from the bounds themselves:
    "the plan's criteria" only when every bound equals the plan's (plan_criteria.gate_bounds)."""
    gates = _get(config.get("pipeline") or {}, "export.gates") or {}
    profile = gates.get("profile")
    used = {k: v for k, v in gates.items() if k in PLAN_GATE_BOUNDS}
    for row in (cal or {}).get("gates") or []:
        if isinstance(row, dict) and row.get("name") in _GATE_ROW_BOUND and row.get("bound") is not None:
            used[_GATE_ROW_BOUND[row["name"]]] = row["bound"]
    bounds = gate_bounds(used, profile)
    out = {
        "profile": profile or "not set",
        "bounds": bounds["kind"],
        "label": bounds["label"],
        "thresholds": bounds["used"],
        "plan_thresholds": bounds["plan"],
        "deviations": bounds["deviations"],
    }
    if cal and isinstance(cal.get("gates"), list):
        out["table"] = cal["gates"]
        out["blessed"] = cal.get(K.BLESSED)
        out["reason"] = cal.get(K.REASON)
    return out


# Which phase a task of the DAG belongs to (kfp.local's task names: a component's second use is
# numbered, "train-teacher-2"; the global teacher's tasks are the unnumbered ones).
TASK_PHASES = {
    "ingest": "phase_0",
    "cache-images": "phase_0",
    "split": "phase_0",
    "stage-weights": "phase_0",
    "baseline": "phase_0",
    "train-teacher": "phase_1",
    "evaluate-teacher": "phase_1",
    "teacher-logits": "phase_1",
    "regional-split": "phase_2",
    "combine-soft-labels": "phase_3",
    "train-student": "phase_4",
    "calibrate": "phase_5",
    "export-tfjs": "phase_6",
    "validate-export": "phase_6",
    "export-skipped": "phase_6",
    "publish": "release",
    "training-manifest": "phase_7",
}
# build_training_manifest's phase results -> the manifest phase they fill
_RESULT_PHASE = {
    "baseline": "phase_0",
    "global_teacher": "phase_1",
    "regional_teachers": "phase_2",
    "soft_labels": "phase_3",
    "student": "phase_4",
    "calibration": "phase_5",
    "export": "phase_6",
    "export_validation": "phase_6",
}


def phase_of_task(task: str) -> str | None:
    """The manifest phase of a DAG task ("train-teacher-2" -> phase_2: the regional teachers')."""
    name = task.split(" [", 1)[0].rsplit("/", 1)[-1]
    base = name.rstrip("0123456789").rstrip("-") if name[-1:].isdigit() else name
    phase = TASK_PHASES.get(base)
    if phase == "phase_1" and base != name:  # the same components, used again in the regional fan-out
        return "phase_2"
    return phase


def _run_section(failure: dict | None, phase_results: dict, phases: dict) -> dict:
    """Whether the run completed, and if not which task (and phase) failed and why. Given
    `failure` (the local runner knows the failed task and its error's last line) it is
    recorded as is; without it (the cluster's manifest runs after any upstream failure) a
    phase that should have a result and has none names where the run stopped."""
    if failure:
        task = str(failure.get("task") or "unknown")
        return {
            "status": "failed",
            "failed_task": task,
            "failed_phase": failure.get("phase") or phase_of_task(task),
            "error": failure.get("error") or "not recorded",
        }
    for key in PHASES:
        result = phase_results.get(key)
        if isinstance(result, dict) and result.get("status") == "failed":
            return {
                "status": "failed",
                "failed_task": f"the {key} step",
                "failed_phase": _RESULT_PHASE[key],
                "error": result.get("reason") or "not recorded",
            }
        if result in (None, {}, []) and not (key.startswith("export") and _export_not_expected(phases)):
            return {
                "status": "failed",
                "failed_task": "not known here (see the run's task states)",
                "failed_phase": _RESULT_PHASE[key],
                "error": f"{key}: no result, although every step before it delivered",
                "inferred": True,
            }
    return {"status": "completed", "failed_task": None, "failed_phase": None, "error": None}


def _export_not_expected(phases: dict) -> bool:
    """No export is due when the student was not blessed (or never calibrated)."""
    return (phases.get("phase_5", {}).get("gate") or {}).get("blessed") is not True


def _mark_not_run(phases: dict, phase_results: dict, run: dict) -> None:
    """After a failure, a phase with no result says it did not run because of it (not 'skipped')."""
    if run["status"] != "failed" or run.get("inferred"):
        return  # inferred from absent results: each phase keeps its own 'skipped' reason
    for key in PHASES:
        phase = phases.get(_RESULT_PHASE[key])
        if phase_results.get(key) in (None, {}, []) and phase and phase.get("status") == "skipped":
            if key.startswith("export") and (phases["phase_5"].get("gate") or {}).get("blessed") is False:
                continue  # not blessed: the gate's reason stands
            phase["status"] = "not_run"
            phase["reason"] = f"the run failed at {run['failed_task']} ({run['failed_phase']}): {run['error']}"
    failed = phases.get(run["failed_phase"] or "")
    if failed is not None:  # its figures (if any) stay: e.g. the export's failed gates
        failed["status"] = "failed"


def _verdict_section(phases: dict, run: dict, cal: dict | None) -> dict:
    """One verdict: the run's outcome, the gate (its bounds labelled against the plan's) and the
    plan's criteria for the student, each value/bound/met, and the lines the console ends with."""
    p5 = phases.get("phase_5") or {}
    gate = p5.get("gate") or {}
    figures = None
    if p5.get("status") == "completed":  # calibrate's figures; val top-1 from phase 4 where they lack it
        figures = {"val_top1": (phases.get("phase_4") or {}).get("final_top1"), **(cal or {})}
    plan = plan_verdict(figures)
    bounds = {"kind": gate.get("bounds"), "deviations": gate.get("deviations") or {}}
    lines = verdict_lines(bounds, gate.get("blessed"), plan)
    if run["status"] == "failed":
        lines.append(f"run: FAILED at {run['failed_task']} ({run['failed_phase']}): {run['error']}")
    return {
        "run_status": run["status"],
        "gate_bounds": gate.get("bounds"),
        "gate_label": gate.get("label"),
        "blessed": gate.get("blessed"),
        "plan_criteria_met": plan["met"],
        "plan_criteria": plan["criteria"],
        "lines": lines,
    }


def _data_section(data_stats: dict) -> dict:
    """The data snapshot: its source, sizes per split, the ingest audit's counts, the leakage
    check and the cache's fetch figures (only those known)."""
    for name in ("split", "ingest", "cache"):
        part = data_stats.get(name)
        if part is not None and not isinstance(part, dict):
            raise ManifestError(f"data_stats.{name}: expected a mapping, got {type(part).__name__}")
    split = data_stats.get("split") or {}
    images = split.get("images") or {}
    classes = split.get("classes") or {}
    audit = data_stats.get("ingest") or {}
    cache = data_stats.get("cache") or {}
    total = sum(int(images[s]) for s in ("train", "val", "test") if s in images) if images else None
    out = {
        "snapshot": data_stats.get("snapshot_id"),
        "source": audit.get("source") or data_stats.get("source"),
        "total_samples": total,
        "total_species": split.get("classes_total", audit.get("classes")),
        "train_samples": images.get("train"),
        "val_samples": images.get("val"),
        "test_samples": images.get("test"),
        "train_species": classes.get("train"),
        "val_species": classes.get("val"),
        "test_species": classes.get("test"),
        "records_read": audit.get(K.RECORDS_READ),
        "records_kept": audit.get(K.RECORDS_KEPT),
        "permissive_license_share": audit.get(K.PERMISSIVE_SHARE_OF_VALID),
        "train_val_class_overlap": split.get(K.TRAIN_VAL_CLASS_OVERLAP),
        "leak_free": _get(split, "leakage.leak_free"),
    }
    if cache:
        out["cached_images"] = cache.get(K.CACHED)
        out["fetch_fail_rate"] = cache.get(K.FAIL_RATE)
    return {k: _count(v) for k, v in out.items() if v is not None}


def _teacher_entry(r: dict, cfg: dict | None) -> dict:
    """A teacher's test figures (evaluate_teacher's results) and its checkpoint."""
    return {
        "teacher": r.get(K.MODEL_NAME) or _get(cfg, "model.name"),
        "regions": r.get(K.REGIONS, ""),
        "top1": _num(r, K.TOP1_ACCURACY, "top1"),
        "top5": _num(r, K.TOP5_ACCURACY, "top5"),
        "loss": _num(r, K.LOSS),
        "per_region": r.get("per_region") or {},
        "share_classes_recall_above_threshold": _num(r, K.SHARE_CLASSES_RECALL_ABOVE_THRESHOLD),
        "checkpoint": r.get("checkpoint"),
        **_training_record(r),
    }


def _training_record(r: dict) -> dict:
    """How a model trained, from its model's metadata: why it stopped (and which epoch is its
    best checkpoint), its batch and learning rate against the plan's, and whether it trained in
    torch's deterministic mode (plan 7.3) with the ops that had no deterministic kernel."""
    out = {}
    if r.get(K.STOP_REASON):
        out["stop_reason"] = r[K.STOP_REASON]
    batch = r.get(K.BATCH_PLAN)
    if isinstance(batch, dict) and batch:
        out["batch"] = {
            k: batch.get(k)
            for k in (
                "deviation",
                "plan_batch",
                "effective_batch",
                "per_gpu_batch",
                "grad_accum_steps",
                "gpus",
                "lr_scaling",
                "plan_lr",
                "lr",
                "plan_exact",
            )
        }
    if isinstance(r.get(K.DETERMINISM), dict) and r[K.DETERMINISM]:
        out["determinism"] = r[K.DETERMINISM]
    return out


def _check_phase_results(phase_results: dict) -> None:
    """Refuse unknown phases and results of the wrong shape, naming them."""
    unknown = set(phase_results) - set(PHASES)
    if unknown:
        raise ManifestError(f"phase_results: unknown phase(s) {sorted(unknown)}; known: {list(PHASES)}")
    for key, value in phase_results.items():
        if value is not None and not isinstance(value, (list if key == "regional_teachers" else dict)):
            raise ManifestError(
                f"phase_results.{key}: expected "
                f"{'a list' if key == 'regional_teachers' else 'a mapping'}, "
                f"got {type(value).__name__}"
            )


def _phase_0(base: dict | None, data: dict, crit: dict) -> dict:
    """Phase 0: the baseline (pretrained, not fine-tuned) and the data audit's criteria (0.2)."""
    p0 = _skipped(base, "baseline step produced no report") or {
        "status": "completed",
        "baseline_model": base.get(K.MODEL_NAME),
        "baseline_weights": base.get(K.WEIGHTS),
        "baseline_top1": _num(base, K.TOP1_ACCURACY, "top1"),
        "baseline_top5": _num(base, K.TOP5_ACCURACY, "top5"),
    }
    p0["criteria"] = {
        "fetch_fail_rate_below_max": _check(data.get("fetch_fail_rate"), "<", crit["max_fetch_fail_rate"]),
        "split_leak_free": data.get("leak_free"),
    }
    return p0


def _phase_1(g: dict | None, gcfg: dict | None, crit: dict) -> dict:
    """Phase 1: the global teacher on the common test set, against the plan's 1.4."""
    p1 = _skipped(g, "global teacher was not evaluated")
    if p1 is None:
        p1 = {"status": "completed", **_teacher_entry(g, gcfg)}
        p1["criteria"] = {
            f"top1>={crit['teacher_min_top1']}": _check(p1["top1"], ">=", crit["teacher_min_top1"]),
            f"top5>={crit['teacher_min_top5']}": _check(p1["top5"], ">=", crit["teacher_min_top5"]),
        }
    return p1


def _phase_2(regional: list | None, config: dict, global_per_region: dict, crit: dict) -> dict:
    """Phase 2 / 2b: the regional teachers by name (two results under one name are both kept,
    the second as name#index), each matched to its config entry."""
    p2 = _skipped(regional, "no regional teacher was evaluated")
    if p2 is not None:
        return p2
    cfg_by_name = {t.get("teacher"): t for t in config.get("regional_teachers") or []}
    teachers = {}
    for i, r in enumerate(regional):
        if not isinstance(r, dict):
            raise ManifestError(f"phase_results.regional_teachers[{i}]: expected a mapping")
        name = r.get(K.TEACHER) or f"regional_{i}"
        if name in teachers:  # two results under one name: keep both, visibly
            name = f"{name}#{i}"
        teachers[name] = _regional_teacher(r, cfg_by_name.get(name, {}), global_per_region, crit)
    return {"status": "completed", "teachers": teachers}


def _regional_teacher(r: dict, item: dict, global_per_region: dict, crit: dict) -> dict:
    """One regional teacher: its figures, its top-1 on each of its own regions and the gain over
    the global teacher there, and the plan's 2.4 criteria."""
    e = _teacher_entry(r, item.get("config"))
    e["regions"] = e["regions"] or item.get("regions", "")
    # Every teacher is scored on the common (global) test set: the plan's 2.4 figures
    # are on the images of the teacher's own regions, the same images for both teachers.
    gains, by_region = {}, {}
    own = region_list(str(e["regions"]))
    for region in own:
        mine = _num(e["per_region"], region)
        theirs = _num(global_per_region, region)
        by_region[region] = mine  # its own key: a region's name never becomes one of the entry's keys
        if mine is not None and theirs is not None:
            gains[region] = round(mine - theirs, 6)
    e["top1_by_own_region"] = by_region
    e["gain_vs_global"] = gains
    e["top1_own_regions"] = _own_regions_top1(r, own)
    e["test_set"] = "the common global test set (per_region: the same images for every teacher)"
    e["criteria"] = {
        f"top1_own_regions>={crit['regional_min_top1']}": _check(
            e["top1_own_regions"], ">=", crit["regional_min_top1"]
        ),
        f"gain_vs_global>={crit['regional_min_gain_vs_global']}": (
            all(v >= crit["regional_min_gain_vs_global"] for v in gains.values()) if gains else None
        ),
    }
    return e


def _effective_weights(table: Any) -> Any:
    """combine_soft_labels' coverage-pattern table with its sample counts back to ints (KFP's
    JSON turns 173 into 173.0)."""
    if not isinstance(table, list):
        return table
    return [{**row, "samples": _count(row.get("samples"))} if isinstance(row, dict) else row for row in table]


def _default_kd_target() -> str:
    from shared.config.student import STUDENT_DEFAULTS

    return STUDENT_DEFAULTS["distillation"]["target"]


def _phase_3(sl: dict | None, scfg: dict) -> dict:
    """Phase 3: the combined soft labels, and the student architecture the config names."""
    p3 = _skipped(sl, "soft labels were not combined")
    arch = _first(scfg, "model.name")
    alpha = _first(scfg, "model.alpha")
    if p3 is None:
        p3 = {
            "status": "completed",
            "samples": _count(sl.get(K.SAMPLES, sl.get("n_samples"))),
            "classes": _count(sl.get(K.CLASSES, sl.get("n_classes"))),
            "temperature": _num(sl, K.TEMPERATURE),
            "teacher_weights": sl.get("teacher_weights") or sl.get(K.WEIGHTS),
            # what each sample's soft label actually uses: the weights renormalised per coverage pattern
            "effective_teacher_weights": _effective_weights(sl.get(K.EFFECTIVE_WEIGHTS)),
            # the probability mass at T the kept classes hold (the rest is one bin of the target)
            "topk_mass_at_T": {
                "mean": _num(sl, K.TOPK_MASS_MEAN),
                "min": _num(sl, K.TOPK_MASS_MIN),
                "shortfall_bound_max": _num(sl, K.KEPT_MASS_SHORTFALL_BOUND_MAX),
            },
            "distillation_target": _first(scfg, "distillation.target") or _default_kd_target(),
            "bytes_per_sample": _num(sl, K.BYTES_PER_SAMPLE),
            "uri": sl.get("uri"),
        }
    p3["student_architecture"] = f"{arch}_{alpha}" if arch and alpha is not None else arch
    return p3


def _phase_4(st: dict | None, scfg: dict, crit: dict) -> dict:
    """Phase 4: the student (distillation + fine-tuning): the shipped stage's figures, every
    stage's on val and test, the CE-only control, per-region test top-1, the plan's 4.3."""
    p4 = _skipped(st, "student was not trained")
    if p4 is not None:
        return p4
    p4 = {
        "status": "completed",
        # What ran (the results) before what was configured (shared/config/student.py).
        "distillation_epochs": _count(_first(st, "distillation_epochs", "epochs_distillation")),
        "finetuning_epochs": _count(_first(st, "finetune_epochs", "finetuning_epochs")),
        "final_top1": _num(st, "final_top1", K.TOP1_ACCURACY, "val_top1_accuracy", K.VAL_TOP1, "top1"),
        "final_top5": _num(st, "final_top5", K.TOP5_ACCURACY, "val_top5_accuracy", K.VAL_TOP5, "top5"),
        "checkpoint": st.get("checkpoint"),
    }
    for key, path in (
        ("distillation_epochs", "training.distillation_epochs"),
        ("finetuning_epochs", "training.finetune_epochs"),
    ):
        if p4[key] is None:
            p4[key] = _count(_get(scfg, path))
    # Which student shipped (and by which rule), and every stage's figures on val and test.
    p4["final_stage"] = st.get(K.FINAL_STAGE)
    if st.get(K.SHIP_RULE):
        p4["ship_rule"] = st[K.SHIP_RULE]
    p4.update(_training_record(st))
    p4["final_test_top1"] = _num(st, K.TEST_TOP1)
    p4["stages"] = {
        s: {"val_top1": _num(st, f"{s}_{K.VAL_TOP1}"), "test_top1": _num(st, f"{s}_{K.TEST_TOP1}")}
        for s in K.STUDENT_STAGES
        if _num(st, f"{s}_{K.VAL_TOP1}") is not None
    }
    if _num(st, K.CE_CONTROL_VAL_TOP1) is not None:
        p4["ce_control"] = {
            "val_top1": _num(st, K.CE_CONTROL_VAL_TOP1),
            "test_top1": _num(st, K.CE_CONTROL_TEST_TOP1),
            "distillation_gain_val_top1": _num(st, K.DISTILLATION_GAIN_TOP1),
            "distillation_gain_test_top1": _num(st, K.DISTILLATION_GAIN_TEST_TOP1),
        }
    prefix = K.TEST_REGION_TOP1_PREFIX
    p4["test_per_region"] = {
        k[len(prefix) :]: float(v)
        for k, v in sorted(st.items())
        if k.startswith(prefix) and isinstance(v, (int, float))
    }
    p4["criteria"] = {f"top1>={crit['student_min_top1']}": _check(p4["final_top1"], ">=", crit["student_min_top1"])}
    return p4


def _phase_5(cal: dict | None, config: dict, crit: dict) -> dict:
    """Phase 5: calibration (temperature and threshold fitted on val, checked held out on test),
    the plan's 5.4 criteria on both splits, and the export gate this run used."""
    p5 = _skipped(cal, "student was not calibrated")
    if p5 is not None:
        return p5
    ece = _num(cal, K.ECE_AFTER, "ece")
    p5 = {
        "status": "completed",
        "ece": ece,
        "ece_before": _num(cal, K.ECE_BEFORE),
        "mce": _num(cal, K.MCE_AFTER, "mce"),
        "temperature": _num(cal, K.TEMPERATURE),
        "confidence_threshold": _num(cal, K.THRESHOLD, "confidence_threshold"),
        "threshold_reached": cal.get(K.THRESHOLD_REACHED),
        "coverage": _num(cal, K.COVERAGE),
        "precision_at_threshold": _num(cal, K.PRECISION_AT_THRESHOLD),
        # held out: temperature and threshold were fitted on val
        "test_ece": _num(cal, K.TEST_ECE_AFTER),
        "test_coverage": _num(cal, K.TEST_COVERAGE),
        "test_precision_at_threshold": _num(cal, K.TEST_PRECISION_AT_THRESHOLD),
        "test_top1": _num(cal, K.TEST_TOP1),
    }
    p5["criteria"] = {}
    for split, pre in (("val", ""), ("test", "test_")):
        ece_s = ece if split == "val" else p5["test_ece"]
        p5["criteria"].update(
            {
                f"{split}_ece<{crit['max_ece']}": _check(ece_s, "<", crit["max_ece"]),
                f"{split}_coverage>={crit['min_coverage']}": _check(p5[f"{pre}coverage"], ">=", crit["min_coverage"]),
                f"{split}_precision_at_threshold>={crit['min_precision_at_threshold']}": _check(
                    p5[f"{pre}precision_at_threshold"], ">=", crit["min_precision_at_threshold"]
                ),
            }
        )
    p5["gate"] = _gate_section(config, cal)
    return p5


def _phase_6(ex: dict | None, val: dict | None, not_run_reason: str, crit: dict) -> dict:
    """Phase 6: the TF.js export (absent: skipped with `not_run_reason`, e.g. the quality gates
    did not bless it), its parity with PyTorch, size and latency, and the plan's criteria."""
    p6 = _skipped(ex, not_run_reason)
    if p6 is not None:
        return p6
    size_mb = _num(ex, K.MODEL_SIZE_MB)
    if size_mb is None and _num(ex, "size_bytes") is not None:
        size_mb = round(_num(ex, "size_bytes") / 1e6, 3)
    p6 = {
        "status": "completed",
        "quantization": ex.get(K.QUANTIZATION),
        "model_size_mb": size_mb,
        "tfjs_export": ex.get("uri") or ex.get("tfjs_export"),
    }
    parity = _skipped(val, "export was not validated") or {
        "status": "completed",
        "correlation": _num(val, "correlation", "pearson"),
        "max_abs_diff": _num(val, K.MAX_ABS_DIFF),
        "top1_agreement": _num(val, K.TOP1_AGREEMENT),
        "passed": val.get(K.PASSED),
    }
    if parity.get("status") == "completed":  # the sample, the agreement's interval, each model's test top-1
        keys = ("images", K.PARITY_SAMPLE, K.TOP1_FLIPS, K.TOP1_AGREEMENT_CI95, "pass_probability_at_99_5")
        parity.update({k: val[k] for k in (*keys, K.PYTORCH_TEST_TOP1, K.EXPORTED_TEST_TOP1) if k in val})
    p6["parity"] = parity
    if isinstance(ex.get(K.TOOLCHAIN), dict):  # the converter environment's versions
        p6["toolchain"] = {str(k): v for k, v in ex[K.TOOLCHAIN].items()}
    latency = _num(ex, K.LATENCY_MS_MEDIAN)
    built = (K.FP16_SIZE_MB, K.MIXED_SIZE_MB, K.UINT8_SIZE_MB, K.AUTO_TRIALS, K.SHARDS, K.WEIGHT_SHARD_MB)
    for key in (K.QUANTIZATION_REASON, *built, K.LATENCY_RUNTIME, "latency_browser", "gates"):
        if ex.get(key) is not None:
            p6[key] = ex[key]
    p6["latency_ms_median"] = latency
    # the plan's inequalities: 6.4 size <= 150 MB, 3.3 student < 20 MB, parity > 99.5 %, CPU browser < 5 s
    p6["criteria"] = {
        f"model_size_mb<={crit['max_model_size_mb']}": _check(size_mb, "<=", crit["max_model_size_mb"]),
        f"model_size_mb<{crit['student_max_bundle_mb']}": _check(size_mb, "<", crit["student_max_bundle_mb"]),
        f"parity_correlation>{crit['min_parity_correlation']}": _check(
            parity.get("correlation"), ">", crit["min_parity_correlation"]
        ),
        f"latency_ms<{crit['max_latency_ms_cpu_browser']}": _check(latency, "<", crit["max_latency_ms_cpu_browser"]),
    }
    return p6


def _phases_section(config: dict, pr: dict, data: dict, crit: dict) -> dict[str, dict]:
    """phase_0 ... phase_6, each from its step's result (`pr`: every key of PHASES); the
    manifest itself is phase 7."""
    scfg = config.get("student") or {}
    g = pr["global_teacher"]
    phases = {
        "phase_0": _phase_0(pr["baseline"], data, crit),
        "phase_1": _phase_1(g, config.get("global_teacher"), crit),
        "phase_2": _phase_2(pr["regional_teachers"], config, (g or {}).get("per_region") or {}, crit),
        "phase_3": _phase_3(pr["soft_labels"], scfg),
        "phase_4": _phase_4(pr["student"], scfg, crit),
        "phase_5": _phase_5(pr["calibration"], config, crit),
    }
    phases["phase_6"] = _phase_6(
        pr["export"], pr["export_validation"], _not_blessed_reason(phases["phase_4"], phases["phase_5"], crit), crit
    )
    return phases


def _environment_section(environment: dict | None, toolchain: dict | None) -> dict:
    """This step's environment (collected here when not given), completed from the ones the
    training and export steps reported (fill_from_reported)."""
    return fill_from_reported(environment if environment is not None else environment_versions(), toolchain)


def build_training_manifest(
    *,
    config: dict,
    phase_results: dict,
    data_stats: dict,
    seed: int,
    git_commit: str | None,
    environment: dict | None,
    timestamp: _dt.datetime | None = None,
    staged_weights: dict | None = None,
    failure: dict | None = None,
    run_parameters: dict | None = None,
    release: dict | None = None,
) -> dict:
    """The manifest as a dict (see module doc).

    config: {"global_teacher": teacher config, "regional_teachers": [{"teacher",
        "regions", "weight", "config"}], "student": student config, "pipeline": the
        pipeline config (calibration/export gates, cache, teachers ...)}; all optional.
    phase_results: keys in PHASES, each a step's result dict (its JSON output merged
        with its artifact metadata, plus "checkpoint"/"uri"), a list for
        "regional_teachers", None when the step did not run, or
        {"status": "skipped"|"failed", "reason": ...}.
    data_stats: {"snapshot_id", "ingest": audit, "split": split stats, "cache": cache report}.
    environment: versions (environment_versions()); None collects them here.
    staged_weights: role -> the stage_weights record of that model's pretrained weights.
    failure: {"task", "error", optional "phase"} when the run failed and the caller knows where
        (the local runner); None infers it from the phases that have no result.
    run_parameters: the run_parameters step's {"values", "overridden"}: the run's parameters as
        submitted, under `parameters` (omitted when None).
    release: the publish step's result ({}/None: it did not run), under `release`."""
    _check_phase_results(phase_results)
    crit = _criteria(config)
    ts = (timestamp or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
    data = _data_section(data_stats)
    results = {k: phase_results.get(k) for k in PHASES}
    phases = _phases_section(config, results, data, crit)
    run = _run_section(failure, results, phases)
    _mark_not_run(phases, results, run)
    manifest = {
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit,
        "seed": int(seed),
        "data": data,
        "run": run,
        "verdict": _verdict_section(phases, run, results["calibration"]),
        "phases": phases,
        "environment": _environment_section(environment, phases["phase_6"].get("toolchain")),
        "models": _models_section(staged_weights, config),
        "hyperparameters": collect_hyperparameters(config),
        "release": release_section(release, phases["phase_6"].get("status") == "completed"),
    }
    if run_parameters is not None:
        manifest["parameters"] = _parameters_section(run_parameters)
    return _plain(manifest)


def _parameters_section(run_parameters: dict) -> dict:
    """The run's parameters as submitted: `overridden` names those that differ from the compiled
    defaults (a `--param` at submit time), `values` every value."""
    if not isinstance(run_parameters, dict) or not isinstance(run_parameters.get("values"), dict):
        raise ManifestError(
            f"run_parameters: expected {{'values': {{...}}, 'overridden': [...]}}, got {run_parameters!r}"
        )
    over = list(run_parameters.get("overridden") or [])
    vals = run_parameters["values"]
    return {
        "overridden": {k: vals.get(k) for k in over},
        "values": dict(sorted(vals.items())),
    }


def _own_regions_top1(result: dict, regions: list[str]) -> float | None:
    """Top-1 over the test images of `regions` (per-region accuracies weighted by their sizes)."""
    acc, n = result.get("per_region") or {}, result.get("per_region_samples") or {}
    pairs = [(float(acc[r]), int(n[r])) for r in regions if r in acc and r in n and n[r]]
    if not pairs:
        return _num(acc, regions[0]) if len(regions) == 1 and regions[0] in acc else None
    return round(sum(a * k for a, k in pairs) / sum(k for _, k in pairs), 6)


def _models_section(staged: dict | None, config: dict) -> dict:
    """Every model's starting weights: id, revision, sha256, source (plan 7.1's reproducibility)."""
    from shared.train.pretrained import staged_summary

    out = {}
    for role, record in sorted((staged or {}).items()):
        if not isinstance(record, dict):
            raise ManifestError(f"staged_weights.{role}: expected a mapping, got {type(record).__name__}")
        out[role] = staged_summary(record)
    for t in config.get("regional_teachers") or []:
        if isinstance(t, dict) and t.get("teacher"):
            out[f"regional_teacher_{t['teacher']}"] = {
                "init_from": "the global teacher's best checkpoint (head rows mapped by species name)",
                "weights_downloaded": False,
            }
    return out


# Where the steps that ran in other images report their own environment (artifact metadata).
REPORTED_ENVIRONMENTS = ("training", "student_training", "export")


def fill_from_reported(env: dict, toolchain: dict | None = None) -> dict:
    """The manifest step runs in the small CPU image: the packages it lacks (None) and
    the GPU come from the environments the training steps reported (env["training"] ...)
    and the export's converter versions (toolchain). Returns a new dict."""
    env = dict(env)
    env["packages"] = dict(env.get("packages") or {})
    reported = [env[k] for k in REPORTED_ENVIRONMENTS if isinstance(env.get(k), dict)]
    sources = [r.get("packages") or {} for r in reported] + [toolchain or {}]
    for name, version in env["packages"].items():
        if version is None:
            env["packages"][name] = next((src[name] for src in sources if src.get(name)), None)
    if env.get("gpu", "none") == "none":
        gpu_env = next((r for r in reported if r.get("gpu") not in (None, "none")), None)
        if gpu_env:
            env.update({k: gpu_env[k] for k in ("gpu", "gpu_count", "cuda", "nvidia_driver_required") if k in gpu_env})
    if not env.get("cuda"):
        # The training image's CUDA runtime and the driver it needs on the nodes, GPU or not.
        cuda_env = next((r for r in reported if r.get("cuda")), None)
        if cuda_env:
            env.update({k: cuda_env[k] for k in ("cuda", "nvidia_driver_required") if k in cuda_env})
    return env


def _not_blessed_reason(p4: dict, p5: dict, crit: dict) -> str:
    """Why the export step did not run, from the gate figures the manifest has."""
    if p4.get("status") != "completed":
        return "export not run: no trained student"
    gate = p5.get("gate") or {}
    if gate.get("blessed") is False and gate.get("reason"):  # the calibrate step's own verdict
        return f"export not blessed by the quality gates ({gate['label']}): {gate['reason']}"
    failed = []
    top1 = p4.get("final_top1")
    if top1 is not None and top1 < crit["student_min_top1"]:
        failed.append(f"student top1 {top1:.4f} < {crit['student_min_top1']}")
    ece = p5.get("ece") if p5.get("status") == "completed" else None
    if ece is not None and ece > crit["max_ece"]:
        failed.append(f"ECE {ece:.4f} > {crit['max_ece']}")
    if failed:
        return "export not blessed by the quality gates: " + "; ".join(failed)
    return "export not run (no export bundle was passed to the manifest step)"


def collect_hyperparameters(config: dict) -> dict:
    """The plan's summary keys (7.1) plus every config value, flattened by config."""
    g = config.get("global_teacher") or {}
    s = config.get("student") or {}
    hp: dict[str, Any] = {
        "teacher_global_lr": _get(g, "training.learning_rate"),
        "student_distill_lr": _first(s, "training.learning_rate"),
        "student_finetune_lr": _first(s, "finetune.learning_rate"),
        "distillation_temperature": _first(s, "distillation.temperature"),
        "kl_weight": _first(s, "distillation.loss_weights.kl_divergence", "distillation.kl_weight"),
        "ce_weight": _first(s, "distillation.loss_weights.cross_entropy", "distillation.ce_weight"),
    }
    configs: dict[str, Any] = {}
    if g:
        configs["teacher_global"] = _flatten(g)
    for item in config.get("regional_teachers") or []:
        name = str(item.get("teacher", "regional")).lower()
        hp[f"teacher_{name}_lr"] = _get(item.get("config"), "training.learning_rate")
        configs[f"teacher_{name}"] = _flatten(item.get("config") or {})
    if s:  # the teachers' weights are shown once, as used: phase_3.teacher_weights
        configs["student"] = _flatten({k: v for k, v in s.items() if k != "teachers"})
    if config.get("pipeline"):
        configs["pipeline"] = _flatten(config["pipeline"])
    hp = {k: v for k, v in hp.items() if v is not None}
    hp["configs"] = configs
    return hp


def write_manifest(path: str | os.PathLike, manifest: dict) -> str:
    """Write the manifest as YAML, atomically; return the path."""
    text = yaml.safe_dump(_plain(manifest), sort_keys=False, allow_unicode=True, width=100)
    write_text(path, text)
    return str(path)


def read_result(path: str | os.PathLike | None, metadata: dict | None = None, uri: str | None = None) -> dict | None:
    """A step's result for build_training_manifest: its JSON file merged with its
    artifact metadata and URI. A TF.js bundle directory (model.json + shards) gives
    its size. None without a path (the step did not run)."""
    if path is None:
        return None
    out: dict[str, Any] = {}
    p = Path(path)
    if p.is_file() and p.stat().st_size < 50_000_000:
        try:
            loaded = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            loaded = None  # a binary artifact (a checkpoint): its metadata says enough
        if isinstance(loaded, dict):
            out.update(loaded)
    elif p.is_dir() and (p / "model.json").is_file():
        files = [p / "model.json", *sorted(p.glob("*.bin"))]
        out["model_size_mb"] = round(sum(f.stat().st_size for f in files) / 1e6, 3)
        out["weight_shards"] = len(files) - 1
    out.update(metadata or {})
    if uri:
        out.setdefault("uri", uri)
    return out


# ---- the manifest step's inputs (components/training_manifest.py) -------------------------


class ArtifactLike(Protocol):
    """What the collectors read of an upstream artifact; a KFP Artifact has these."""

    path: str
    uri: str
    metadata: dict


def artifact_result(art: ArtifactLike | None) -> dict | None:
    """A step's result from its artifact: read_result over its file and metadata, its URI
    under "uri"; None for a step that did not run."""
    if art is None:
        return None
    r = read_result(art.path, dict(art.metadata or {}))
    if r is not None:
        r["uri"] = art.uri
    return r


def _with_checkpoint(result: dict | None, model: ArtifactLike | None) -> dict | None:
    """A teacher's test result with its checkpoint (the model's URI) and, when the result
    does not name it, the model's architecture."""
    if result is not None and model is not None:
        result["checkpoint"] = model.uri
        result.setdefault(K.MODEL_NAME, model.metadata.get(K.MODEL_NAME))
        for key in (K.STOP_REASON, K.BATCH_PLAN, K.DETERMINISM):  # how it trained (train_teacher's model)
            if key in (model.metadata or {}):
                result.setdefault(key, model.metadata[key])
    return result


def collect_phase_results(
    *,
    baseline_report: ArtifactLike | None = None,
    global_teacher_results: ArtifactLike | None = None,
    global_teacher_model: ArtifactLike | None = None,
    regional_teacher_results: list[ArtifactLike] | None = None,
    regional_teacher_models: list[ArtifactLike] | None = None,
    soft_labels: ArtifactLike | None = None,
    student_model: ArtifactLike | None = None,
    student_metrics: ArtifactLike | None = None,
    calibration: ArtifactLike | None = None,
    export_bundle: ArtifactLike | None = None,
    export_validation: ArtifactLike | None = None,
    export_summary: dict | None = None,
) -> dict[str, Any]:
    """build_training_manifest's phase_results from the steps' artifacts (None: the step did
    not run). Regional results meet their checkpoints by teacher name (a ParallelFor collects
    both lists in no guaranteed order); the student is its model's and metrics' metadata;
    export_summary (a parameter, see the component) stands in for the export artifacts."""
    regional = None
    if regional_teacher_results:
        models = {m.metadata.get(K.TEACHER): m for m in (regional_teacher_models or [])}
        regional = []
        for art in regional_teacher_results:
            r = artifact_result(art)
            regional.append(_with_checkpoint(r, models.get(r.get(K.TEACHER))))
    student = None
    if student_model is not None:
        student = {
            **dict(student_model.metadata or {}),
            **(dict(student_metrics.metadata or {}) if student_metrics is not None else {}),
            "checkpoint": student_model.uri,
        }
    results = {
        "baseline": artifact_result(baseline_report),
        "global_teacher": _with_checkpoint(artifact_result(global_teacher_results), global_teacher_model),
        "regional_teachers": regional,
        "soft_labels": artifact_result(soft_labels),
        "student": student,
        "calibration": artifact_result(calibration),
        "export": artifact_result(export_bundle),
        "export_validation": artifact_result(export_validation),
    }
    if export_summary and export_bundle is None:
        results["export"] = dict(export_summary)
        if export_validation is None and export_summary.get("status") not in ("skipped", "failed"):
            results["export_validation"] = dict(export_summary)
    return results


def collect_data_stats(
    snapshot_id: str,
    ingest_audit: ArtifactLike | None,
    split_stats: ArtifactLike | None,
    cache_report: ArtifactLike | None = None,
) -> dict[str, Any]:
    """build_training_manifest's data_stats: the snapshot id and the JSON reports of ingest,
    split and cache_images ({} for a report not passed)."""

    def load(art: ArtifactLike | None) -> dict:
        return json.loads(Path(art.path).read_text()) if art is not None else {}

    return {
        "snapshot_id": snapshot_id,
        "ingest": load(ingest_audit),
        "split": load(split_stats),
        "cache": load(cache_report),
    }


def collect_staged_weights(
    *,
    global_teacher: ArtifactLike | None = None,
    student: ArtifactLike | None = None,
    baseline: ArtifactLike | None = None,
) -> dict[str, dict]:
    """role -> the stage_weights record of that model's pretrained weights (roles passed only)."""
    from shared.train.pretrained import read_staged

    roles = (("global_teacher", global_teacher), ("student", student), ("baseline", baseline))
    return {role: read_staged(art.path) for role, art in roles if art is not None}


def collect_environment(
    *,
    training: ArtifactLike | None = None,
    student_training: ArtifactLike | None = None,
    export: ArtifactLike | None = None,
) -> dict[str, Any]:
    """This step's environment, plus the ones the training and export images reported in their
    artifacts' metadata, under REPORTED_ENVIRONMENTS' keys (fill_from_reported reads them)."""
    env = environment_versions()
    for key, art in (("training", training), ("student_training", student_training), ("export", export)):
        if art is not None and isinstance(art.metadata.get(K.ENVIRONMENT), dict):
            env[key] = art.metadata[K.ENVIRONMENT]
    return env


def write_training_manifest(
    manifest_dir: str | os.PathLike, summary_path: str | os.PathLike, manifest: dict, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write MANIFEST_NAME into `manifest_dir` (a directory, so the file keeps its name when
    downloaded) and the summary table to `summary_path` (Markdown, the table a team compares
    across runs: KFP renders it); return the manifest artifact's metadata: the commit, the
    timestamp and each phase's status."""
    os.makedirs(manifest_dir, exist_ok=True)
    write_manifest(os.path.join(manifest_dir, MANIFEST_NAME), manifest)
    write_text(summary_path, summary_markdown(manifest))
    statuses = {k: v["status"] for k, v in manifest["phases"].items()}
    log(f"training manifest: {statuses}")
    verdict, run = manifest.get("verdict") or {}, manifest.get("run") or {}
    for line in verdict.get("lines") or []:
        log(line)
    return {
        K.GIT_COMMIT: manifest["git_commit"] or "",
        K.TIMESTAMP: manifest["timestamp"],
        K.RUN_STATUS: run.get("status"),
        K.FAILED_TASK: run.get("failed_task") or "",
        K.GATE_BOUNDS: verdict.get("gate_bounds"),
        K.BLESSED: verdict.get("blessed"),
        K.PLAN_CRITERIA_MET: verdict.get("plan_criteria_met"),
        **statuses,
    }


def summary_markdown(manifest: dict) -> str:
    """The one table a team compares across runs (KFP renders it): each phase's headline
    figures beside the plan's criteria, and whether they were met.

    Long: a Markdown template, one section after another.
    """
    ph = manifest.get("phases") or {}
    rows: list[tuple[str, str, Any, str, Any]] = []

    def add(phase: str, figure: str, value: Any, criterion: str = "", met: Any = None) -> None:
        rows.append((phase, figure, value, criterion, met))

    def crit(p: dict, key: str) -> Any:
        return (p.get("criteria") or {}).get(key)

    p0, p1, p2, p4, p5, p6 = (ph.get(f"phase_{i}") or {} for i in (0, 1, 2, 4, 5, 6))
    add("0 baseline", "test top-1", p0.get("baseline_top1"), "~0.30-0.40 (pretrained, no fine-tuning)")
    add("1 global teacher", "test top-1", p1.get("top1"), ">= 0.70", crit(p1, "top1>=0.7"))
    add("1 global teacher", "test top-5", p1.get("top5"), ">= 0.85", crit(p1, "top5>=0.85"))
    for name, t in sorted((p2.get("teachers") or {}).items()):
        add(
            f"2 {name}",
            "test top-1, own regions",
            t.get("top1_own_regions"),
            ">= 0.80",
            crit(t, "top1_own_regions>=0.8"),
        )
        add(
            f"2 {name}",
            "gain vs global, same images",
            t.get("gain_vs_global"),
            ">= +0.10",
            crit(t, "gain_vs_global>=0.1"),
        )
    add("4 student", "shipped stage", p4.get("final_stage"))
    add("4 student", "val top-1", p4.get("final_top1"), ">= 0.70", crit(p4, "top1>=0.7"))
    add("4 student", "test top-1", p4.get("final_test_top1"))
    if p4.get("ce_control"):
        add("4 student", "gain over CE-only control (test)", p4["ce_control"].get("distillation_gain_test_top1"))
    for split in ("val", "test"):
        pre = "" if split == "val" else "test_"
        add(
            "5 calibration",
            f"ECE ({split})",
            p5.get("ece" if split == "val" else "test_ece"),
            "< 0.10",
            crit(p5, f"{split}_ece<0.1"),
        )
        add(
            "5 calibration",
            f"coverage ({split})",
            p5.get(f"{pre}coverage"),
            ">= 0.80",
            crit(p5, f"{split}_coverage>=0.8"),
        )
        add(
            "5 calibration",
            f"precision at threshold ({split})",
            p5.get(f"{pre}precision_at_threshold"),
            ">= 0.95",
            crit(p5, f"{split}_precision_at_threshold>=0.95"),
        )
    add("6 export", "status", p6.get("status"), "", None)
    add("6 export", "bundle MB", p6.get("model_size_mb"))
    add("6 export", "parity correlation", (p6.get("parity") or {}).get("correlation"), "> 0.995")

    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, dict):
            return ", ".join(f"{k} {show(x)}" for k, x in v.items()) or "-"
        return "-" if v is None else str(v)

    gate = p5.get("gate") or {}
    verdict = manifest.get("verdict") or {}
    lines = [
        f"# Training run {manifest.get('timestamp', '')} (commit {manifest.get('git_commit') or 'unknown'})",
        "",
        *[f"- {line}" for line in verdict.get("lines") or []],
        "",
        f"Export gate: {gate.get('label', 'not run')}" + (f"; {gate['reason']}" if gate.get("reason") else ""),
        "",
        "| phase | figure | value | plan criterion | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p} | {f} | {show(v)} | {c or '-'} | {'-' if m is None else ('yes' if m else 'NO')} |"
        for p, f, v, c, m in rows
    ]
    return "\n".join(lines) + "\n"
