"""Phase 0 baseline component: a generic pretrained model without fine-tuning on the test split."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def baseline(
    train: Input[Dataset],
    test: Input[Dataset],
    cache_dir: str,
    settings: dict,
    report: Output[Artifact],
    metrics: Output[Metrics],
    weights: Input[Model] = None,
):
    """Top-1/top-5 of a frozen generic backbone (nearest class centroid), against the plan's 30-40 %.

    Args:
        train: The train split (class centroids).
        test: The test split (scored).
        cache_dir: The image cache (volume path or gs://).
        settings: The pipeline config's baseline section (model_name, pretrained, image_size, ...).
        weights: The staged pretrained weights (stage_weights) when baseline.pretrained is true.

    Returns:
        report: The figures, the weights used and the verdict against the plan's expectation (JSON).
        metrics: top1_accuracy, top5_accuracy, chance_top1, pretrained.
    """
    from shared import artifact_keys as K
    from shared.io.atomic import write_json
    from shared.train.baseline import run_baseline
    from shared.train.pretrained import read_staged

    r = run_baseline(
        train.path,
        test.path,
        cache_dir,
        settings["model_name"],
        bool(settings.get("pretrained", True)),
        read_staged(weights.path) if weights is not None else None,
        int(settings["image_size"]),
    )
    write_json(report.path, r)
    report.metadata.update({K.WEIGHTS: r["weights"], K.MODEL_NAME: r["model_name"], K.VERSUS_PLAN: r["versus_plan"]})
    for key in K.BASELINE_METRICS:
        metrics.log_metric(key, r[key])
    metrics.log_metric(K.PRETRAINED, float(r["pretrained"]))
    print(
        f"baseline {r['model_name']} ({r['weights']}) on {r['device']}: top1={r['top1_accuracy']:.3f} "
        f"top5={r['top5_accuracy']:.3f} chance={r['chance_top1']:.3f}; {r['versus_plan']}"
    )
