"""Phases 1 / 2 / 2b: train one ViT teacher (global, or regional initialised from
the global one). Used once for the global teacher and once per region in the
ParallelFor."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_teacher(name: str, regions: str, train: Input[Dataset], val: Input[Dataset],
                  cache_dir: str, config: dict, overrides: dict, checkpoint_dir: str, run_id: str,
                  gpus: int, model: Output[Model], metrics: Output[Metrics], logs: Output[Artifact],
                  init_from: Input[Model] = None):
    """Fine-tune a teacher; resumes from its last checkpoint when the pod is retried."""
    import shutil

    from shared.teacher_job import run_teacher_job
    from shared.training_manifest import environment_versions

    s = run_teacher_job(name, config, overrides, train.path, val.path, cache_dir, checkpoint_dir,
                        run_id, gpus, init_from.path if init_from is not None else None, model.path)
    model.metadata.update({"teacher": name, "regions": regions, "model_name": s.get("model_name", ""),
                           "classes": s.get("num_classes", 0),
                           "environment": environment_versions()})  # the training image's, for the manifest
    for key, value in sorted(s.get("best_metrics", {}).items()):
        if isinstance(value, (int, float)):
            metrics.log_metric(f"val_{key}", value)
    metrics.log_metric("epochs_run", s.get("epochs_run", 0))
    metrics.log_metric("trained_from_scratch", float(bool(s.get("trained_from_scratch"))))
    if s.get("tensorboard_logs"):
        shutil.copytree(s["tensorboard_logs"], logs.path, dirs_exist_ok=True)
    else:
        shutil.os.makedirs(logs.path, exist_ok=True)
