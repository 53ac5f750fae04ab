"""Phase 0 baseline component: a generic model without fine-tuning on the test split."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def baseline(train: Input[Dataset], test: Input[Dataset], cache_dir: str, model_name: str,
             weights_path: str, image_size: int, report: Output[Artifact], metrics: Output[Metrics]):
    """Top-1/top-5 of a frozen generic backbone (nearest class centroid)."""
    from shared.atomic import write_json
    from shared.baseline import run_baseline

    r = run_baseline(train.path, test.path, cache_dir, model_name, weights_path, image_size)
    write_json(report.path, r)
    report.metadata.update({"weights": r["weights"], "model_name": model_name})
    for key in ("top1_accuracy", "top5_accuracy", "chance_top1"):
        metrics.log_metric(key, r[key])
    print(f"baseline {model_name} ({r['weights']}): top1={r['top1_accuracy']:.3f} "
          f"top5={r['top5_accuracy']:.3f} chance={r['chance_top1']:.3f}")
