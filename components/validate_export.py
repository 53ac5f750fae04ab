"""Phase 6.3: run the TF.js bundle with the real TF.js runtime and compare with PyTorch."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import EXPORT_IMAGE


@dsl.component(base_image=EXPORT_IMAGE, install_kfp_package=False)
def validate_export(bundle: Input[Artifact], model: Input[Model], test: Input[Dataset], cache_dir: str,
                    images: int, min_correlation: float, max_size_mb: float, report: Output[Artifact],
                    metrics: Output[Metrics]) -> dict:
    """Logits correlation (> 0.995), top-1 agreement (>= 99%), size and Node latency; fails on a mismatch."""
    from shared.atomic import write_json
    from shared.export import sample_image_paths, validate_tfjs_bundle
    from shared.records import load_jsonl

    paths = sample_image_paths(load_jsonl(test.path), cache_dir, images)
    r = validate_tfjs_bundle(bundle.path, model.path, paths, min_corr=min_correlation, max_size_mb=max_size_mb)
    write_json(report.path, r)
    for key in ("logits_correlation", "top1_agreement", "max_abs_diff", "model_size_mb", "node_latency_ms_median"):
        metrics.log_metric(key, r[key])
    metrics.log_metric("passed", float(r["passed"]))
    if not r["passed"]:
        raise RuntimeError("the TF.js export does not match the PyTorch student: " + "; ".join(r["reasons"]))
    # The export's figures for the training manifest (a parameter: dsl.OneOf over the gate's If/Else).
    return {"status": "completed", "uri": bundle.uri, "quantization": bundle.metadata.get("quantization", ""),
            "model_size_mb": r["model_size_mb"], "correlation": r["logits_correlation"],
            "top1_agreement": r["top1_agreement"], "max_abs_diff": r["max_abs_diff"], "passed": r["passed"],
            "node_latency_ms_median": r["node_latency_ms_median"],
            "toolchain": dict(bundle.metadata.get("toolchain") or {})}  # the converters' versions
