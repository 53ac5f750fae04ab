"""Phase 4: the student, distillation then fine-tuning (and, optionally, the same
student on CE alone as a control, so runs show what distillation adds)."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_student(train: Input[Dataset], val: Input[Dataset], soft_labels: Input[Artifact], cache_dir: str,
                  student_config: dict, checkpoint_dir: str, run_id: str, train_ce_control: bool, gpus: int,
                  model: Output[Model], metrics: Output[Metrics], summary: Output[Artifact],
                  weights: Input[Model] = None):
    """Two-stage student; resumes from its checkpoints when the pod is retried; torchrun
    DDP when the pod has several GPUs.

    Args:
        train: The train split (JSONL records).
        val: The val split (early stopping, the shipped stage).
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
        metrics: Val figures per stage, size, the CE control and the distillation gain.
        summary: Both runs' full summaries (JSON).
    """
    import shutil

    from shared.atomic import write_json
    from shared.student_training import run_student_job
    from shared.teacher_job import work_dir
    from shared.training_manifest import environment_versions

    wd = work_dir(checkpoint_dir, run_id, "student")
    weights_path = weights.path if weights is not None else None
    r = run_student_job(student_config, train.path, val.path, cache_dir, str(wd / "distilled"), soft_labels.path,
                        gpus, weights_path=weights_path)
    shutil.copyfile(r["final_checkpoint"], model.path)
    shutil.copyfile(r["final_checkpoint"] + ".sha256", model.path + ".sha256")
    out = {"distilled": r}
    for key in ("val_top1", "val_top5", "val_loss", "train_top1", "parameters", "size_mb_fp32"):
        metrics.log_metric(key, r[key])
    for stage in ("distillation", "finetuning"):
        if stage in r:
            metrics.log_metric(f"{stage}_val_top1", r[stage]["val_top1"])
    if train_ce_control:
        from shared.soft_labels import SoftLabels

        classes = SoftLabels.load(soft_labels.path).classes  # same output units as the distilled one
        c = run_student_job(student_config, train.path, val.path, cache_dir, str(wd / "ce_control"), None, gpus,
                            classes=list(classes), weights_path=weights_path)
        out["ce_control"] = c
        metrics.log_metric("ce_control_val_top1", c["val_top1"])
        metrics.log_metric("distillation_gain_top1", r["val_top1"] - c["val_top1"])
    write_json(summary.path, out)
    model.metadata.update({"model_name": r["model_name"], "classes": r["num_classes"],
                           "image_size": r["image_size"], "val_top1": r["val_top1"],
                           **{f"pretrained_{k}": str(v) for k, v in r.get("pretrained", {}).items()},
                           "environment": environment_versions()})  # the training image's, for the manifest
