"""Phases 1 / 2 / 2b: train one ViT teacher (global, or regional initialised from
the global one). Used once for the global teacher and once per region in the
ParallelFor."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_teacher(
    name: str,
    regions: str,
    train: Input[Dataset],
    val: Input[Dataset],
    cache_dir: str,
    config: dict,
    overrides: dict,
    checkpoint_dir: str,
    run_id: str,
    gpus: int,
    model: Output[Model],
    metrics: Output[Metrics],
    logs: Output[Artifact],
    init_from: Input[Model] = None,
    weights: Input[Model] = None,
):
    """Fine-tune a teacher; resumes from its last checkpoint when the pod is retried.

    Args:
        name: The teacher's name ("global", or the regional teacher's name).
        regions: Its regions, comma-separated ("" for the global teacher).
        train: The train split (JSONL records).
        val: The val split (early stopping, best checkpoint).
        cache_dir: The image cache (volume path or gs://).
        config: The teacher config (the plan's teacher_*.yaml, loaded).
        overrides: Dotted overrides applied on top of `config` (e.g. training.epochs).
        checkpoint_dir: Where resumable checkpoints live (on the volume), per run and teacher.
        run_id: The pipeline run id (keys the checkpoint directory).
        gpus: GPUs of the pod; more than 1 runs torchrun DDP.
        init_from: Another teacher's checkpoint to start from (regional teachers: the global one).
        weights: The staged pretrained weights (stage_weights) when model.pretrained is true.

    Returns:
        model: The best checkpoint (weights, classes, preprocessing, config, metrics).
        metrics: Best val figures, epochs run, and whether it trained from scratch.
        logs: TensorBoard logs.
    """
    import shutil

    from shared import artifact_keys as K
    from shared.io.environment import environment_versions
    from shared.train.job import run_teacher_job

    s = run_teacher_job(
        name,
        config,
        overrides,
        train.path,
        val.path,
        cache_dir,
        checkpoint_dir,
        run_id,
        gpus,
        init_from.path if init_from is not None else None,
        model.path,
        weights_path=weights.path if weights is not None else None,
    )
    model.metadata.update(
        {
            K.TEACHER: name,
            K.REGIONS: regions,
            K.MODEL_NAME: s.get("model_name", ""),
            K.CLASSES: s.get("num_classes", 0),
            K.STOP_REASON: s.get("stop_reason", ""),
            K.BATCH_PLAN: s.get("batch_plan", {}),
            K.DETERMINISM: s.get("determinism", {}),
            **{K.PRETRAINED_PREFIX + k: str(v) for k, v in s.get("pretrained", {}).items()},
            K.ENVIRONMENT: environment_versions(),
        }
    )  # the training image's, for the manifest
    for key, value in sorted(s.get("best_metrics", {}).items()):
        if isinstance(value, (int, float)):
            metrics.log_metric(K.TEACHER_VAL_PREFIX + key, value)
    metrics.log_metric(K.EPOCHS_RUN, s.get("epochs_run", 0))
    metrics.log_metric(K.TRAINED_FROM_SCRATCH, float(bool(s.get("trained_from_scratch"))))
    if s.get("tensorboard_logs"):
        shutil.copytree(s["tensorboard_logs"], logs.path, dirs_exist_ok=True)
    else:
        shutil.os.makedirs(logs.path, exist_ok=True)
