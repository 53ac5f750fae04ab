"""Phase 0 / 1.0 / 2.0 split components: the global stratified train/val/test split, and
each regional teacher's split as the region's part of it (nested)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def split(
    cached: Input[Dataset],
    regions: str,
    seed: int,
    train: Output[Dataset],
    val: Output[Dataset],
    test: Output[Dataset],
    stats: Output[Artifact],
    histogram: Output[HTML],
    metrics: Output[Metrics],
):
    """Stratified split (1 -> train; 2 -> 1/1; 3+ -> 80/10/10) with a leakage check.

    Args:
        cached: The cached records (cache_images).
        regions: Comma-separated regions to keep ("" = all: the global split).
        seed: The split seed (deterministic for records + seed).

    Returns:
        train: Train records.
        val: Val records.
        test: Test records (the common test set).
        stats: Counts per split, class and region, the leakage check.
        histogram: Class balance (HTML).
        metrics: Images and classes per split, class overlap, leak_free.
    """
    from shared import artifact_keys as K
    from shared.data.split import run_split, split_metrics

    s = run_split(
        cached.path,
        regions,
        seed,
        {"train": train.path, "val": val.path, "test": test.path},
        stats.path,
        histogram.path,
        title=f"Class balance ({regions or 'all regions'})",
    )
    for name, art in (("train", train), ("val", val), ("test", test)):
        art.metadata.update({K.REGIONS: regions, K.IMAGES: s["images"][name], K.CLASSES: s["classes"][name]})
    for key, value in split_metrics(s).items():
        metrics.log_metric(key, value)


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def regional_split(
    global_train: Input[Dataset],
    global_val: Input[Dataset],
    global_test: Input[Dataset],
    regions: str,
    train: Output[Dataset],
    val: Output[Dataset],
    test: Output[Dataset],
    stats: Output[Artifact],
    histogram: Output[HTML],
    metrics: Output[Metrics],
):
    """A regional teacher's split: the region's records of the global train/val/test (nested),
    so nothing one teacher holds out is trained on by another; fails on any leakage.

    Args:
        global_train: The global train split.
        global_val: The global val split.
        global_test: The global test split.
        regions: The teacher's regions, comma-separated (e.g. "EU_NORTH,EU_EAST").

    Returns:
        train: The region's train records.
        val: Its val records (species it can learn).
        test: Its test records.
        stats: Counts, nesting/leakage check, species unlearnable in the region.
        histogram: Class balance (HTML).
        metrics: Images and classes per split, leak_free.
    """
    from shared import artifact_keys as K
    from shared.data.split import run_regional_split, split_metrics

    s = run_regional_split(
        {"train": global_train.path, "val": global_val.path, "test": global_test.path},
        regions,
        {"train": train.path, "val": val.path, "test": test.path},
        stats.path,
        histogram.path,
        title=f"Class balance ({regions}, nested in the global split)",
    )
    for name, art in (("train", train), ("val", val), ("test", test)):
        art.metadata.update({K.REGIONS: regions, K.IMAGES: s["images"][name], K.CLASSES: s["classes"][name]})
    for key, value in split_metrics(s).items():
        metrics.log_metric(key, value)
