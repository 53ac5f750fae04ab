"""Phase 0 cache component: fetch, validate, dedupe and resize images into the
content-addressed cache (a PVC mount on the cluster)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def cache_images(
    records: Input[Dataset],
    cache_dir: str,
    resize: int,
    min_side: int,
    max_fail_rate: float,
    workers: int,
    fetch_policy: dict,
    cached: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
    student_resize: int = 0,
):
    """Cache every record's image; fails when the failure rate exceeds max_fail_rate.

    Args:
        records: The ingested records (ingest), JSONL.
        cache_dir: The content-addressed image cache (volume path or gs://bucket/prefix).
        resize: The short side, in pixels, each cached image is resized to.
        min_side: Images whose short side is below this many pixels are dropped.
        max_fail_rate: The step fails when a larger share of the records cannot be cached.
        workers: Parallel fetch and resize workers.
        fetch_policy: The config's cache.fetch section (host allowlist, sizes, timeouts, retries,
            per-host rate and concurrency).
        student_resize: > 0 also stores the student's smaller rendition with this short side
            (cache.student_resize); 0 stores none.

    Returns:
        cached: The records whose image is cached, with its cache key (JSONL).
        report: Counts (cached, fetched, reused, failed, too small, duplicates, label conflicts) and
            the failures with their reasons (JSON).
        metrics: The report's counts, the fail rate and images per second.
    """
    from shared import artifact_keys as K
    from shared.data.image_cache import run_cache_images

    r = run_cache_images(
        records.path,
        cache_dir,
        resize=resize,
        min_side=min_side,
        max_fail_rate=max_fail_rate,
        workers=workers,
        fetch_policy=fetch_policy,
        out_cached=cached.path,
        out_report=report.path,
        student_resize=student_resize,
    )
    cached.metadata.update({K.CACHE_DIR: cache_dir, K.IMAGES: r["cached"], K.STUDENT_RESIZE: student_resize})
    for key in K.CACHE_METRICS:
        metrics.log_metric(key, r[key])
