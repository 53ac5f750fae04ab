"""Release: the blessed, validated TF.js bundle published where the web app loads it, unless the
current release is better (champion / challenger). A thin shell over shared/release/."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def publish(
    bundle: Input[Artifact],
    model: Input[Model],
    calibration: Input[Artifact],
    test: Input[Dataset],
    cache_dir: str,
    export_summary: dict,
    pipeline_settings: dict,
    run_id: str,
    report: Output[Artifact],
    metrics: Output[Metrics],
    git_commit: str = "",
) -> dict:
    """Compare this run's student with the current release's on this run's test images (the
    classes both know; new classes reported apart), and publish the bundle under
    <release.uri>/models/<version>/ with release.json, then repoint current.json, only when it is
    not worse by more than release.margins (or release.force with release.reason). A refused
    candidate ends the step green with the decision; a pointer changed meanwhile by another
    publish fails it. release.uri "" publishes nothing.

    Args:
        bundle: The validated TF.js bundle (export_tfjs, after validate_export passed).
        model: The calibrated student checkpoint the bundle was exported from (calibrate).
        calibration: calibration.json (the candidate's headline test figures).
        test: This run's test split (both models are scored on it).
        cache_dir: The image cache.
        export_summary: validate_export's figures (bundle size); also orders this step after it.
        pipeline_settings: The compiled config's sections; its `release` section (uri, margins, force, reason).
        run_id: The pipeline run's id, recorded in release.json.
        git_commit: The code's commit; "" reads GIT_COMMIT (baked into the images) or the checkout.

    Returns:
        report: The decision, both models' figures on the same images and what was published (JSON).
        metrics: release_published (1/0) and both models' top-1, ECE and coverage on the shared classes.
        Output: The release for the training manifest: decision, candidate, current, published, version.
    """
    import json

    from shared import artifact_keys as K
    from shared.io.atomic import write_json
    from shared.io.records import load_jsonl
    from shared.manifest.training_manifest import git_commit as checkout_commit
    from shared.release.publish import publish_release, without_none

    settings = dict((pipeline_settings or {}).get("release") or {})
    if not settings.get("uri"):
        result = {"status": "skipped", "reason": "release.uri is empty: nothing is published", "published": False}
        write_json(report.path, result)
        metrics.log_metric(K.RELEASE_PUBLISHED, 0.0)
        print(result["reason"])
        return result
    cal = json.loads(open(calibration.path).read())
    headline = {
        "test_top1": cal.get("test_top1"),
        "test_ece": cal.get("test_ece_after"),
        "test_coverage": cal.get("test_coverage"),
        "target_precision": cal.get("target_precision"),
        "bundle_mb": (export_summary or {}).get("model_size_mb"),
    }
    headline = {k: v for k, v in headline.items() if v is not None}  # a figure not measured is absent
    record = {
        "run": run_id,
        "git_commit": git_commit or checkout_commit() or "",
        "headline": headline,
        "student_checkpoint": model.uri,
        "bundle_source": bundle.uri,
        "onnx": None,  # export_tfjs converts through a temporary ONNX file and keeps none
        "quantization": (export_summary or {}).get("quantization"),
    }
    result = publish_release(
        uri=settings["uri"],
        bundle_dir=bundle.path,
        candidate_ckpt=model.path,
        test_records=load_jsonl(test.path),
        cache_dir=cache_dir,
        settings=settings,
        record=record,
        target_precision=float(cal.get("target_precision") or 0.95),
    )
    write_json(report.path, result)
    metrics.log_metric(K.RELEASE_PUBLISHED, float(result["published"]))
    comparison = result.get("comparison") or {}
    for who in ("candidate", "current"):
        for figure in ("top1", "ece", "coverage"):
            value = (comparison.get(who) or {}).get(figure)
            if value is not None:
                metrics.log_metric(f"{who}_shared_{figure}", float(value))
    # plain JSON without None: KFP passes it on to the manifest step as a parameter
    return without_none(json.loads(json.dumps(result, default=str)))
