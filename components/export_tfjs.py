"""Phase 6: the blessed, calibrated student to a TF.js bundle (fp16, uint8, or auto)."""

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
):
    """PyTorch -> ONNX (checked with onnxruntime) -> SavedModel -> TF.js graph model + demo page.
    quantization fp16 / uint8 (int8 = uint8) / none, or auto: fp16 if its bundle is < max_size_mb,
    else uint8 (then validate_export's size gate decides). The bundle's metadata records the
    quantization used, quantization_reason and the size of every bundle built.

    Args:
        model: The blessed, calibrated student checkpoint (calibrate).
        calibration: calibration.json (temperature and threshold, written into the bundle).
        test: The test split (sample images for the ONNX check and onnx2tf's calibration).
        cache_dir: The image cache.
        quantization: fp16, uint8 (int8 = uint8), none, or auto.
        sample_images: How many test images are sampled (the checks use at most 8).
        max_size_mb: The bundle size bound auto chooses against (the export gate's max_bundle_mb).

    Returns:
        bundle: The TF.js graph model, its labels and calibration, and the demo page.
        metrics: Bundle size (and each quantization's size built), ONNX max abs diff, export seconds.
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
