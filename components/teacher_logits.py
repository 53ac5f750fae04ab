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
    student_config: dict,
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
        student_config: The student config (the plan's student.yaml, loaded): its distillation
            temperature is the one, beside T=1, whose log-sum-exp is stored, so the soft labels'
            top-k probabilities at that temperature are exact.

    Returns:
        logits: The sparse top-k logits per sample; its metadata names the teacher, regions, weight
            and the temperatures whose log-sum-exp is stored.
        metrics: Samples, classes, k, bytes per sample, mean confidence and the teacher's train top-1.
    """
    from shared import artifact_keys as K
    from shared.config.student import load_student_config
    from shared.distill.teacher_logits import logits_temperatures, run_teacher_logits
    from shared.io.records import load_jsonl

    temperatures = logits_temperatures(load_student_config(student_config)["distillation"]["temperature"])
    s = run_teacher_logits(
        model.path,
        load_jsonl(train.path),
        cache_dir,
        logits.path,
        top_k,
        name,
        regions,
        temperatures=temperatures,
    )
    # combine_soft_labels reads who this teacher is from the artifact's metadata.
    logits.metadata.update({K.TEACHER: name, K.REGIONS: regions, K.WEIGHT: weight, K.TEMPERATURES: temperatures, **s})
    for key, value in s.items():
        metrics.log_metric(key, value)
