"""Phase 0 / 1.0 / 2.0 split component: stratified train/val/test, optionally per region."""
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def split(cached: Input[Dataset], regions: str, seed: int, train: Output[Dataset],
          val: Output[Dataset], test: Output[Dataset], stats: Output[Artifact],
          histogram: Output[HTML], metrics: Output[Metrics]):
    """Stratified split (1 -> train; 2 -> 1/1; 3+ -> 80/10/10) with a leakage check."""
    from shared.split import run_split

    s = run_split(cached.path, regions, seed, {"train": train.path, "val": val.path, "test": test.path},
                  stats.path, histogram.path, title=f"Class balance ({regions or 'all regions'})")
    for name, art in (("train", train), ("val", val), ("test", test)):
        art.metadata.update({"regions": regions, "images": s["images"][name],
                             "classes": s["classes"][name]})
        metrics.log_metric(f"{name}_images", s["images"][name])
        metrics.log_metric(f"{name}_classes", s["classes"][name])
    metrics.log_metric("train_val_class_overlap", s["train_val_class_overlap"])
    metrics.log_metric("leak_free", float(s["leakage"]["leak_free"]))
