"""Phase 4: the student, distillation then fine-tuning (and, optionally, the same
student on CE alone as a control, so runs show what distillation adds)."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_student(
    train: Input[Dataset],
    val: Input[Dataset],
    test: Input[Dataset],
    soft_labels: Input[Artifact],
    cache_dir: str,
    student_config: dict,
    checkpoint_dir: str,
    run_id: str,
    train_ce_control: bool,
    gpus: int,
    model: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Artifact],
    confusion: Output[ClassificationMetrics],
    logs: Output[Artifact],
    weights: Input[Model] = None,
):
    """Two-stage student; resumes from its checkpoints when the pod is retried; torchrun
    DDP when the pod has several GPUs.

    Args:
        train: The train split (JSONL records).
        val: The val split (early stopping, the shipped stage).
        test: The held-out test split (the common test set): each stage, the shipped student and the
            CE control are scored on it.
        soft_labels: The combined teachers' soft labels (phase 3).
        cache_dir: The image cache (volume path or gs://).
        student_config: The student config (the plan's student.yaml, loaded).
        checkpoint_dir: Where resumable checkpoints live (on the volume), per run.
        run_id: The pipeline run id (keys the checkpoint directory).
        train_ce_control: Also train the same student on CE alone (what distillation adds).
        gpus: GPUs of the pod; more than 1 runs torchrun DDP.
        weights: The staged pretrained weights (stage_weights) when model.pretrained is true;
            the CE control starts from the same weights.

    Returns:
        model: The shipped student checkpoint.
        metrics: Val and test figures per stage and of the shipped student, final_stage_finetuning
            (1 when the fine-tuned stage shipped, 0 for the distilled one), per-region test top-1, size,
            the CE control and the distillation gain.
        summary: Both runs' full summaries (JSON), with final_stage.
        confusion: The shipped student's confusion matrix on test (the most frequent classes).
        logs: TensorBoard logs of both stages (plan 4.4).
    """
    import os
    import shutil

    from shared import artifact_keys as K
    from shared.evaluate.evaluation import confusion_matrix_top
    from shared.io.atomic import write_json
    from shared.io.checkpoint import copy_checkpoint, work_dir
    from shared.io.environment import environment_versions
    from shared.io.records import load_jsonl
    from shared.train.student import evaluate_on_test, run_student_job, tensorboard_dirs

    wd = work_dir(checkpoint_dir, run_id, "student")
    weights_path = weights.path if weights is not None else None
    test_records = load_jsonl(test.path)
    r = run_student_job(
        student_config,
        train.path,
        val.path,
        cache_dir,
        str(wd / "distilled"),
        soft_labels.path,
        gpus,
        weights_path=weights_path,
    )
    final, logits, labels, classes = evaluate_on_test(r, test_records, cache_dir, str(wd / "distilled"))
    copy_checkpoint(r["final_checkpoint"], model.path)
    out = {"distilled": r}
    for key in K.STUDENT_METRICS:
        metrics.log_metric(key, r[key])
    metrics.log_metric(K.FINAL_STAGE_FINETUNING, float(r["final_stage"] == "finetuning"))
    for stage in K.STUDENT_STAGES:
        if stage in r:
            metrics.log_metric(f"{stage}_{K.VAL_TOP1}", r[stage]["val_top1"])
            metrics.log_metric(f"{stage}_{K.TEST_TOP1}", r[stage]["test_top1"])
    for region, acc in r["test_per_region"].items():
        metrics.log_metric(K.TEST_REGION_TOP1_PREFIX + region, acc)
    names, matrix = confusion_matrix_top(logits, labels, classes, 20)
    confusion.log_confusion_matrix(names, matrix)
    if train_ce_control:
        from shared.distill.soft_labels import SoftLabels

        soft_classes = SoftLabels.load(soft_labels.path).classes  # same output units as the distilled one
        c = run_student_job(
            student_config,
            train.path,
            val.path,
            cache_dir,
            str(wd / "ce_control"),
            None,
            gpus,
            classes=list(soft_classes),
            weights_path=weights_path,
        )
        evaluate_on_test(c, test_records, cache_dir, str(wd / "ce_control"))
        out["ce_control"] = c
        metrics.log_metric(K.CE_CONTROL_VAL_TOP1, c["val_top1"])
        metrics.log_metric(K.CE_CONTROL_TEST_TOP1, c["test_top1"])
        metrics.log_metric(K.DISTILLATION_GAIN_TOP1, r["val_top1"] - c["val_top1"])
        metrics.log_metric(K.DISTILLATION_GAIN_TEST_TOP1, r["test_top1"] - c["test_top1"])
    os.makedirs(logs.path, exist_ok=True)
    for stage, d in tensorboard_dirs(str(wd / "distilled")).items():
        shutil.copytree(d, os.path.join(logs.path, stage), dirs_exist_ok=True)
    write_json(summary.path, out)
    model.metadata.update(
        {
            K.MODEL_NAME: r["model_name"],
            K.CLASSES: r["num_classes"],
            K.IMAGE_SIZE: r["image_size"],
            K.VAL_TOP1: r["val_top1"],
            K.TEST_TOP1: r["test_top1"],
            K.FINAL_STAGE: r["final_stage"],
            K.SHIP_RULE: r.get("ship_rule", ""),
            K.STOP_REASON: {st: r[st]["stop_reason"] for st in K.STUDENT_STAGES if st in r},
            K.BATCH_PLAN: r.get("batch_plan", {}),
            K.DETERMINISM: {st: r[st]["determinism"] for st in K.STUDENT_STAGES if st in r},
            **{K.PRETRAINED_PREFIX + k: str(v) for k, v in r.get("pretrained", {}).items()},
            K.ENVIRONMENT: environment_versions(),
        }
    )  # the training image's, for the manifest
