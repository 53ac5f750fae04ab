"""Phase 6: the blessed, calibrated student to a TF.js bundle (fp16, mixed, uint8, or auto)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import DATA_IMAGE, EXPORT_IMAGE


@dsl.component(base_image=EXPORT_IMAGE, install_kfp_package=False)
def export_tfjs(
    model: Input[Model],
    calibration: Input[Artifact],
    test: Input[Dataset],
    cache_dir: str,
    quantization: str,
    sample_images: int,
    bundle: Output[Artifact],
    metrics: Output[Metrics],
    max_size_mb: float = 150.0,
    min_correlation: float = 0.995,
    min_agreement: float = 0.99,
    weight_shard_mb: float = 30.0,
):
    """PyTorch -> ONNX (checked with onnxruntime) -> SavedModel -> TF.js graph model + demo page.
    quantization fp16 / mixed (fp16 backbone, uint8 classifier head) / uint8 (int8 = uint8) / none,
    or auto: the first of fp16, mixed, uint8 whose bundle is < max_size_mb and whose parity with
    PyTorch on the sampled test images passes (correlation > min_correlation, top-1 agreement >=
    min_agreement); when none does, uint8 is kept and validate_export's gates fail. The bundle's
    metadata records the quantization used, quantization_reason (with why each earlier mode was
    rejected), auto_trials and the size of every bundle built.

    Args:
        model: The blessed, calibrated student checkpoint (calibrate).
        calibration: calibration.json (temperature and threshold, written into the bundle).
        test: The test split (sample images for the ONNX check and onnx2tf's calibration).
        cache_dir: The image cache.
        quantization: fp16, uint8 (int8 = uint8), none, or auto.
        sample_images: How many test images are sampled (all of test when fewer): auto's parity
            sample (export.validation_images); the ONNX check uses the first 8.
        max_size_mb: The bundle size bound auto chooses against (the export gate's max_bundle_mb).
        min_correlation: auto's parity bound: logits correlation > this (export.min_correlation).
        min_agreement: auto's parity bound: top-1 agreement >= this (export.min_top1_agreement).
        weight_shard_mb: The largest weight shard in MB (export.weight_shard_mb).

    Returns:
        bundle: The TF.js graph model, its labels and calibration, and the demo page.
        metrics: Bundle size (and each quantization's size built), shards, ONNX max abs diff, export seconds.
    """
    from shared import artifact_keys as K
    from shared.export.tfjs import run_export
    from shared.io.records import load_jsonl

    r = run_export(
        model.path,
        calibration.path,
        load_jsonl(test.path),
        cache_dir,
        bundle.path,
        quantization,
        sample_images,
        max_size_mb,
        min_correlation,
        min_agreement,
        weight_shard_mb,
    )
    bundle.metadata.update({k: v for k, v in r.items() if k != "bundle"})
    for key in K.EXPORT_METRICS:
        if key in r:
            metrics.log_metric(key, r[key])
    print(f"quantization: {r['quantization']} ({r['quantization_reason']})")
    print("exported:", r)


# the small data image: pulling the TensorFlow export image to print a reason would cost minutes
@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def export_skipped(reason: str) -> dict:
    """The gate's Else branch: no export, and why (the run still ends green).

    Args:
        reason: Why the student was not blessed (calibrate's reason).

    Returns:
        Output: {"status": "skipped", "reason": ...}, the training manifest's export entry.
    """
    print("export skipped:", reason)
    return {"status": "skipped", "reason": reason}
