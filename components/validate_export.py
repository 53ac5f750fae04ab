"""Phase 6.3 / 6.4: run the TF.js bundle with the real TF.js runtime, compare with PyTorch, and gate it."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import EXPORT_IMAGE


@dsl.component(base_image=EXPORT_IMAGE, install_kfp_package=False)
def validate_export(
    bundle: Input[Artifact],
    model: Input[Model],
    test: Input[Dataset],
    cache_dir: str,
    images: int,
    min_correlation: float,
    max_size_mb: float,
    report: Output[Artifact],
    metrics: Output[Metrics],
    max_latency_ms: float = 5000.0,
    latency_runtime: str = "node-wasm",
    latency_runs: int = 20,
    min_agreement: float = 0.99,
) -> dict:
    """The plan's 6.4 gates, strict: logits correlation > min_correlation, top-1 agreement >= min_agreement
    (99 %) on `images` test images (all of test when fewer; >= 1,000 is plan-sized, fewer is labelled
    local; the agreement's 95 % Wilson interval and each model's test top-1 are reported),
    model size < max_size_mb, single-image latency median < max_latency_ms. latency_runtime:
    chromium-wasm (headless Chromium, WASM backend: the browser figure; fails the latency gate
    with the reason where the image has no Chromium) or node-wasm (TF.js WASM in Node, reported
    as Node: the default, as the export image has no browser). The report lists every gate
    (value, operator, bound, passed); any failed gate fails the step with every reason.

    Args:
        bundle: The TF.js bundle (export_tfjs).
        model: The calibrated PyTorch checkpoint the bundle was exported from (the reference).
        test: The test split (the compared images are sampled from it).
        cache_dir: The image cache.
        images: How many test images are compared (export.validation_images).
        min_correlation: Gate: logits correlation, TF.js vs PyTorch, > this.
        max_size_mb: Gate: bundle size < this.
        max_latency_ms: Gate: median single-image latency < this.
        latency_runtime: chromium-wasm or node-wasm (see above).
        latency_runs: Timed runs the latency median is taken over.
        min_agreement: Gate: top-1 agreement, TF.js vs PyTorch, >= this (export.min_top1_agreement).

    Returns:
        report: Parity figures, size, latency and the gate table (JSON).
        metrics: Logits correlation, top-1 agreement and flips, max abs diff, size, latency, each model's
            test top-1, passed.
        Output: The export's figures for the training manifest (uri, quantization, size, parity,
            latency, gates, passed).
    """
    from shared import artifact_keys as K
    from shared.export.tfjs import parity_sample, validate_tfjs_bundle, validation_summary
    from shared.io.atomic import write_json
    from shared.io.checkpoint import load_checkpoint
    from shared.io.records import load_jsonl

    test_records = load_jsonl(test.path)
    classes = list(load_checkpoint(model.path)["classes"])
    paths, labels = parity_sample(test_records, cache_dir, images, classes)
    r = validate_tfjs_bundle(
        bundle.path,
        model.path,
        paths,
        min_corr=min_correlation,
        min_agreement=min_agreement,
        labels=labels,
        test_images=len(test_records),
        max_size_mb=max_size_mb,
        max_latency_ms=max_latency_ms,
        latency_runtime=latency_runtime,
        latency_runs=latency_runs,
    )
    write_json(report.path, r)
    report.metadata.update({K.PASSED: r["passed"], K.LATENCY_RUNTIME: r["latency_runtime"]})
    for key in K.VALIDATION_METRICS:
        if r.get(key) is not None:
            metrics.log_metric(key, r[key])
    for g in r["gates"]:
        unit = f" {g['unit']}" if g["unit"] else ""
        print(
            f"gate {g['gate']}: {g['value']}{unit} {g['operator']} {g['bound']}{unit}: "
            f"{'passed' if g['passed'] else 'FAILED, ' + g['reason']}"
        )
    metrics.log_metric(K.PASSED, float(r["passed"]))
    if not r["passed"]:
        raise RuntimeError("the TF.js export fails its gates: " + "; ".join(r["reasons"]))
    # The export's figures for the training manifest (a parameter: dsl.OneOf over the gate's If/Else).
    return validation_summary(r, bundle.uri, bundle.metadata)
