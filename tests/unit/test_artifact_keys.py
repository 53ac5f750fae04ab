"""shared/artifact_keys.py: the metadata keys and metric names steps share. Metric names are
what the KFP UI shows and runs are compared by: their values are frozen here, and components
name them only through the module (never as string literals)."""

import ast
from pathlib import Path

from shared import artifact_keys as K

ROOT = Path(__file__).resolve().parents[2]

# The names whose value is not simply the constant's name in lower case.
IRREGULAR = {
    "TOP_K": "k",
    "TEACHER_VAL_TOP1": "val_top1_acc",
    "REGION_TOP1_PREFIX": "region_top1:",
    "TEST_REGION_TOP1_PREFIX": "test_region_top1:",
    "COVERAGE_PREFIX": "coverage:",
    "TEACHER_VAL_PREFIX": "val_",
}

# The metric lists the components logged before the constants existed, in their order.
LOGGED = {
    "INGEST_METRICS": (
        "records_read",
        "records_valid",
        "records_kept",
        "unique_images",
        "classes",
        "permissive_share_of_valid",
    ),
    "CACHE_METRICS": (
        "cached",
        "fetched",
        "reused",
        "failed",
        "fail_rate",
        "too_small",
        "duplicates",
        "label_conflicts",
        "images_per_second",
    ),
    "BASELINE_METRICS": ("top1_accuracy", "top5_accuracy", "chance_top1"),
    "TEACHER_TEST_METRICS": ("top1_accuracy", "top5_accuracy", "loss", "share_classes_recall_above_threshold"),
    "SOFT_LABEL_METRICS": (
        "samples",
        "classes",
        "mean_entropy",
        "teacher_agreement",
        "max_row_sum_error",
        "bytes_per_sample",
        "temperature",
    ),
    "SOFT_LABEL_MASS_METRICS": (
        "topk_mass_mean",
        "topk_mass_min",
        "kept_mass_shortfall_bound_mean",
        "kept_mass_shortfall_bound_max",
    ),
    "STUDENT_METRICS": (
        "val_top1",
        "val_top5",
        "val_loss",
        "test_top1",
        "test_top5",
        "train_top1",
        "parameters",
        "size_mb_fp32",
    ),
    "STUDENT_STAGES": ("distillation", "finetuning"),
    "METRIC_NAMESPACES": ("region_top1:", "coverage:", "test_region_top1:"),
    "CALIBRATION_METRICS": (
        "temperature",
        "ece_before",
        "ece_after",
        "mce_before",
        "mce_after",
        "threshold",
        "coverage",
        "precision_at_threshold",
        "val_top1",
        "test_top1",
        "test_ece_after",
        "test_coverage",
        "test_precision_at_threshold",
    ),
    "EXPORT_METRICS": (
        "model_size_mb",
        "fp16_size_mb",
        "uint8_size_mb",
        "onnx_max_abs_diff",
        "export_seconds",
        "mixed_size_mb",
        "shards",
    ),
    "VALIDATION_METRICS": (
        "logits_correlation",
        "top1_agreement",
        "max_abs_diff",
        "model_size_mb",
        "node_latency_ms_median",
        "latency_ms_median",
        "top1_flips",
        "pytorch_test_top1",
        "exported_test_top1",
    ),
}


def test_every_name_keeps_its_value():
    for name, value in vars(K).items():
        if not name.isupper() or name in LOGGED:
            continue
        if name in IRREGULAR:
            want = IRREGULAR[name]
        elif name.endswith("_PREFIX"):
            want = name[: -len("PREFIX")].lower()
        elif name.endswith("_SUFFIX"):
            want = "_" + name[: -len("_SUFFIX")].lower()
        else:
            want = name.lower()
        assert value == want, f"{name} = {value!r}: a metric or metadata name changed (expected {want!r})"


def test_no_region_or_teacher_name_can_overwrite_a_fixed_metric():
    """A region called "accuracy" once logged top1_accuracy over the teacher's headline figure."""
    from shared.manifest.run_summary import RUN_SUMMARY_KEYS, regional_teacher_keys

    fixed = [v for n, v in vars(K).items() if n.isupper() and isinstance(v, str) and n not in IRREGULAR]
    fixed += [v for n, v in vars(K).items() if n.isupper() and isinstance(v, tuple) and n != "METRIC_NAMESPACES"]
    fixed = [x for v in fixed for x in (v if isinstance(v, tuple) else (v,)) if isinstance(x, str)]
    fixed += list(RUN_SUMMARY_KEYS)
    assert all(p.endswith(":") for p in K.METRIC_NAMESPACES)
    assert not [f for f in fixed if ":" in f], "a fixed metric name uses the namespaces' separator"
    for hostile in ("accuracy", "top1_accuracy", "", "a:b"):
        for prefix in K.METRIC_NAMESPACES:
            assert prefix + hostile not in fixed
    # run_summary: teacher_<name>_<figure> never equals a fixed key ("global" is refused as a
    # regional teacher's name by the config: RESERVED_TEACHER_DIRS)
    from shared.config.pipeline import RESERVED_TEACHER_DIRS

    assert "global" in RESERVED_TEACHER_DIRS
    for name in ("Global", "global_test", "student", "x", "EU SW", "a/b", "val"):
        assert set(regional_teacher_keys(name).values()).isdisjoint(RUN_SUMMARY_KEYS)


def test_the_logged_metric_lists_are_unchanged():
    assert {n: getattr(K, n) for n in LOGGED} == LOGGED


# Components another change is editing: they still spell some names out (switch them to K).
NOT_YET: set[str] = set()


def _literal_names(tree: ast.AST) -> list[str]:
    """String literals used as a metric name (log_metric's first argument) or as a metadata key
    (metadata.update({...}) keys, metadata.get(...) / metadata[...] keys)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            on_metadata = isinstance(target, ast.Attribute) and target.attr == "metadata"
            if node.func.attr == "log_metric" and node.args:
                args = [node.args[0]]
            elif on_metadata and node.func.attr == "update" and node.args and isinstance(node.args[0], ast.Dict):
                args = [k for k in node.args[0].keys if k is not None]
            elif on_metadata and node.func.attr == "get" and node.args:
                args = [node.args[0]]
            else:
                continue
            found += [
                f"line {a.lineno}: {a.value!r}"
                for a in args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "metadata"
            and isinstance(node.slice, ast.Constant)
        ):
            found.append(f"line {node.lineno}: {node.slice.value!r}")
    return found


def test_components_name_metrics_and_metadata_keys_through_the_module():
    bad = {}
    for path in sorted((ROOT / "components").glob("*.py")):
        if path.name in NOT_YET:
            continue
        names = _literal_names(ast.parse(path.read_text()))
        if names:
            bad[path.name] = names
    assert not bad, f"metric names / metadata keys spelt out (use shared.artifact_keys): {bad}"
