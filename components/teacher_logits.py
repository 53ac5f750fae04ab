"""Phases 1.5 / 2.5 / 2b.3: a teacher's sparse top-k logits on the train split."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def teacher_logits(
    name: str,
    regions: str,
    weight: float,
    model: Input[Model],
    train: Input[Dataset],
    cache_dir: str,
    top_k: int,
    logits: Output[Artifact],
    metrics: Output[Metrics],
):
    """Top-k logits of `model` on the train samples of `regions` ("" = all).

    Args:
        name: The teacher's name ("global", or the regional teacher's name).
        regions: The regions whose train samples are scored, comma-separated ("" = all).
        weight: The teacher's weight in the soft labels (combine_soft_labels reads it from the metadata).
        model: The teacher checkpoint (train_teacher).
        train: The train split (JSONL records).
        cache_dir: The image cache (volume path or gs://).
        top_k: Logits kept per sample (the largest k, with the full log-sum-exp).

    Returns:
        logits: The sparse top-k logits per sample; its metadata names the teacher, regions and weight.
        metrics: Samples, classes, k, bytes per sample, mean confidence and the teacher's train top-1.
    """
    from shared import artifact_keys as K
    from shared.distill.teacher_logits import run_teacher_logits
    from shared.io.records import load_jsonl

    s = run_teacher_logits(model.path, load_jsonl(train.path), cache_dir, logits.path, top_k, name, regions)
    # combine_soft_labels reads who this teacher is from the artifact's metadata.
    logits.metadata.update({K.TEACHER: name, K.REGIONS: regions, K.WEIGHT: weight, **s})
    for key, value in s.items():
        metrics.log_metric(key, value)
