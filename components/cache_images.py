"""Phase 0 cache component: fetch, validate, dedupe and resize images into the
content-addressed cache (a PVC mount on the cluster)."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def cache_images(records: Input[Dataset], cache_dir: str, resize: int, min_side: int,
                 max_fail_rate: float, workers: int, fetch_policy: dict,
                 cached: Output[Dataset], report: Output[Artifact], metrics: Output[Metrics]):
    """Cache every record's image; fails when the failure rate exceeds max_fail_rate."""
    from shared.image_cache import run_cache_images

    r = run_cache_images(records.path, cache_dir, resize=resize, min_side=min_side,
                         max_fail_rate=max_fail_rate, workers=workers, fetch_policy=fetch_policy,
                         out_cached=cached.path, out_report=report.path)
    cached.metadata.update({"cache_dir": cache_dir, "images": r["cached"]})
    for key in ("cached", "fetched", "reused", "failed", "fail_rate", "too_small",
                "duplicates", "label_conflicts", "images_per_second"):
        metrics.log_metric(key, r[key])
