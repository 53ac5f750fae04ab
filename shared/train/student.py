"""Phase 4: the student, in two stages through the shared trainer.

Stage 1, distillation: the plan's KD loss against the teachers' soft labels
(read on the fly by sample index). Stage 2, fine-tuning: cross-entropy only, a
lower learning rate and aggressive augmentation, from stage 1's best
checkpoint. With no soft labels the same two stages run on CE alone: the
control that shows what distillation adds."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shared.config.student import load_student_config, timm_model_name
from shared.config.teacher import batch_plan
from shared.data.image_cache import student_records
from shared.distill.losses import SoftLabelLookup, make_kd_loss_fn
from shared.distill.soft_labels import SoftLabels
from shared.io.atomic import write_json
from shared.io.checkpoint import copy_checkpoint, load_checkpoint
from shared.io.records import load_jsonl
from shared.train.distributed import distributed_env, launch, shutdown_distributed
from shared.train.loop import TrainSettings, fit, seed_everything
from shared.train.pretrained import create_model, preprocessing_mismatches, read_staged, require_staged, staged_summary
from shared.vision.augment import aggressive_train_aug, build_eval_transform, build_train_transform, photometric_on_gpu
from shared.vision.image_dataset import CachedImageDataset, class_list


def model_size(model: torch.nn.Module) -> dict[str, float]:
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"parameters": params, "size_mb_fp32": nbytes / 1e6, "size_mb_fp16": nbytes / 2e6}


def stage_settings(cfg: dict, stage: str, num_classes: int, world: int = 1) -> TrainSettings:
    """A stage's loop settings on `world` GPUs; batch and learning-rate factor from batch_plan."""
    t = cfg["training"]
    distill = stage == "distillation"
    batch = batch_plan(t, world)
    return TrainSettings(
        epochs=t["distillation_epochs"] if distill else t["finetune_epochs"],
        batch_size=batch["per_gpu_batch"],
        grad_accum_steps=batch["grad_accum_steps"],
        lr=(t["learning_rate"] if distill else cfg["finetune"]["learning_rate"]) * batch["lr_factor"],
        warmup_epochs=t["warmup_epochs"] if distill else 0,
        optimizer=t["optimizer"],
        weight_decay=t["weight_decay"],
        grad_clip=t["gradient_clip"],
        label_smoothing=0.0 if distill else cfg["finetune"]["label_smoothing"],
        num_classes=num_classes,
        patience=t["early_stopping_patience"],
        min_epochs=t["min_epochs"],
        min_delta=t["min_delta"],
        amp=t["amp"],
        channels_last=t["channels_last"],
        num_workers=t["num_workers"],
        seed=t["seed"],
        deterministic=t["deterministic"],
        deterministic_ops=t["deterministic_ops"],
    )


def rendition_records(
    cfg: dict, train_records: list[dict], val_records: list[dict], log: Callable[[str], None] = print
) -> tuple[list[dict], list[dict]]:
    """The train and val records as the student's datasets read them: with
    data.student_rendition (the pipeline sets it from cache.student_resize) each one's
    student rendition, an error naming any record without it (never the main file
    instead); without it, the records as they are (the main cache).

    What the rendition loses: nothing for the plan's student, whose train and val
    transforms both resize the short side to 256 first (Resize 256 -> RandomCrop /
    CenterCrop 224). The fine-tuning stage's aggressive augmentation is a
    RandomResizedCrop(224, scale 0.35-1): a crop of fewer than 224 x 224 of the
    rendition's pixels (under 57 % of a 4:3 image's area, 77 % of a square one) is
    upsampled, by up to 1.28x (4:3) or 1.48x (square) at scale 0.35, where the 448 file
    had the pixels for it: its zoomed-in crops are softer. With smart crop (off for the
    student) the 0.8 saliency box would be upsampled 1.25x to 256."""
    short = int(cfg["data"]["student_rendition"])
    if short <= 0:
        return train_records, val_records
    aug = cfg["augmentation"]
    need = max(aug["train"]["resize"], aug["val"]["resize"])
    if cfg["data"]["smart_crop"]:
        from shared.vision.smart_crop import SmartCrop

        need = math.ceil(need / SmartCrop().crop_fraction)
    if short < need:
        log(
            f"WARNING: data.student_rendition {short} px is below the {need} px the student's resize needs: "
            "its crops are upsampled from the rendition"
        )
    log(f"student: reading the cache's {short} px student rendition (data.student_rendition)")
    return (
        student_records(train_records, short, "student train records"),
        student_records(val_records, short, "student val records"),
    )


def _student_model(
    cfg: dict, name: str, classes: list[str], weights: dict | None, log: Callable[[str], None]
) -> tuple[Any, str, dict, dict | None]:
    """(model, timm architecture, model args, staged weights) of the student: from the staged
    weights when model.pretrained is true (warning where their preprocessing differs from the
    config's), else randomly initialised."""
    size, dropout = cfg["model"]["image_size"], cfg["model"]["dropout_rate"]
    norm = cfg["augmentation"]["val"]["normalize"]
    if cfg["model"]["pretrained"]:
        weights = require_staged(weights, name, "student")
        model = create_model(name, len(classes), dropout, size, weights=weights, classes=classes, log=log)
        for w in preprocessing_mismatches(weights, norm["mean"], norm["std"], size):
            log(f"WARNING: {w}")
        return model, weights["architecture"], dict(weights.get("model_args") or {}), weights
    model = create_model(name, len(classes), dropout, size)
    log(f"student {name}: training from scratch (model.pretrained: false)")
    return model, name, {}, weights


def _distillation_loss(
    cfg: dict, soft: SoftLabels, train_records: list[dict], classes: list[str]
) -> tuple[Callable, float]:
    """(the distillation stage's KD loss, soft-label coverage of the train records); refuses
    soft labels that miss train records."""
    lookup = SoftLabelLookup(soft, [r["image_id"] for r in train_records], classes)
    if lookup.coverage < 1.0:  # combine_soft_labels covers every train record or fails
        raise ValueError(
            f"soft labels cover {lookup.coverage:.1%} of the train records: distillation "
            "would run partly or wholly on CE alone; re-run combine_soft_labels"
        )
    d = cfg["distillation"]
    if abs(soft.temperature - d["temperature"]) > 1e-6 * max(1.0, d["temperature"]):
        raise ValueError(  # their probabilities are at another temperature than the student's KD term
            f"soft labels were made at T={soft.temperature:g}, the student distils at "
            f"T={d['temperature']:g}: re-run teacher_logits and combine_soft_labels with this student config"
        )
    w = d["loss_weights"]
    return make_kd_loss_fn(
        lookup, d["temperature"], w["kl_divergence"], w["cross_entropy"], d["target"]
    ), lookup.coverage


def train_student(
    config: dict,
    train_records: list[dict],
    val_records: list[dict],
    cache_dir: str,
    out_dir: str,
    soft_labels_path: str | None,
    *,
    classes: list[str] | None = None,
    weights: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both stages; returns per-stage metrics, size and the final checkpoint path.
    `weights`: the staged pretrained weights (needed when model.pretrained is true).

    Long: the plan's phase 4 stages in order (distillation, fine-tuning, CE control, evaluation), each a few lines.
    """
    cfg = load_student_config(config)
    out = Path(out_dir)
    main_proc = distributed_env()[0] == 0
    log = log if main_proc else (lambda *_: None)
    soft = SoftLabels.load(soft_labels_path) if soft_labels_path else None
    if soft is not None:
        soft.check_made_for(train_records, f"soft labels {soft_labels_path}")
    classes = list(soft.classes) if soft else (classes or class_list(train_records))
    if cfg["model"]["num_classes"] != len(classes):
        log(
            f"student: {len(classes)} classes from the data (config model.num_classes="
            f"{cfg['model']['num_classes']} is the plan's expectation)"
        )
    name = timm_model_name(cfg["model"])
    size = cfg["model"]["image_size"]
    aug, smart = cfg["augmentation"], cfg["data"]["smart_crop"]
    seed_everything(cfg["training"]["seed"])
    dropout = cfg["model"]["dropout_rate"]
    model, arch, model_args, weights = _student_model(cfg, name, classes, weights, log)
    meta = {
        "model_name": arch,
        "model_id": name,
        "classes": classes,
        "image_size": size,
        "model_kwargs": {**model_args, "drop_rate": dropout},
        "mean": aug["val"]["normalize"]["mean"],
        "std": aug["val"]["normalize"]["std"],
        "config": cfg,
        "smart_crop": smart,
        "eval_resize": aug["val"]["resize"],
    }
    train_images, val_images = rendition_records(cfg, train_records, val_records, log)
    val_ds = CachedImageDataset(
        val_images, cache_dir, classes, build_eval_transform(aug["val"], size, smart), label_missing="ignore"
    )
    defer = photometric_on_gpu(cfg["training"]["photometric_on_gpu"])  # the trainer finishes deferred batches
    log(f"student: train photometric augmentation on the {'GPU (deferred)' if defer else 'CPU loader'}")
    result: dict[str, Any] = {
        "model_name": name,
        "num_classes": len(classes),
        "image_size": size,
        "distilled": soft is not None,
        "trained_from_scratch": not cfg["model"]["pretrained"],
        "pretrained": staged_summary(weights) if cfg["model"]["pretrained"] else {},
        **model_size(model),
    }
    world = distributed_env()[1]
    result["batch_plan"] = batch_plan(cfg["training"], world)
    log(f"student batch: {result['batch_plan']['deviation']}")
    stages = []
    if cfg["training"]["distillation_epochs"] > 0:
        stages.append("distillation")
    if cfg["training"]["finetune_epochs"] > 0:
        stages.append("finetuning")
    final = None
    for stage in stages:
        if stage == "distillation":
            tf = build_train_transform(aug["train"], size, smart, defer_photometric=defer)
        elif cfg["finetune"]["augmentation"] == "aggressive":  # RandAugment etc.: a CPU Compose, never deferred
            tf = aggressive_train_aug(size, aug["train"]["normalize"], smart)
        else:
            tf = build_train_transform(aug["train"], size, smart, defer_photometric=defer)
        train_ds = CachedImageDataset(train_images, cache_dir, classes, tf, label_missing="ignore")
        loss_fn = None
        if stage == "distillation" and soft is not None:
            loss_fn, result["soft_label_coverage"] = _distillation_loss(cfg, soft, train_records, classes)
        if final is not None:  # fine-tuning starts from the distilled student's best weights
            model.load_state_dict(load_checkpoint(final)["state_dict"])
        r = fit(
            model,
            train_ds,
            val_ds,
            stage_settings(cfg, stage, len(classes), world),
            out / stage,
            checkpoint_meta={**meta, "stage": stage},
            loss_fn=loss_fn,
            log=log,
        )
        best = next((h for h in r.history if h["epoch"] == r.best_epoch), r.history[-1])
        result[stage] = {
            "epochs_run": r.epochs_run,
            "best_epoch": r.best_epoch,
            "val_top1": best["val_top1_acc"],
            "val_top5": best["val_top5_acc"],
            "val_loss": best["val_loss"],
            "train_top1": best["train_top1"],
            "stopped_early": r.stopped_early,
            "stop_reason": r.stop_reason,
            "determinism": r.determinism(),
        }
        final = r.best_path
    if final is None:
        raise ValueError("student: training.distillation_epochs and finetune_epochs are both 0")
    chosen, result["ship_rule"] = shipped_stage(cfg["training"]["ship"], stages, result)
    log(f"student: shipping the {chosen} stage ({result['ship_rule']})")
    src = out / chosen / "best_model.pt"
    if main_proc:  # under torchrun every rank holds the same weights; one copy is shipped
        copy_checkpoint(src, out / "best_model.pt")
    best = result[chosen]
    result.update(
        {
            "final_checkpoint": str(out / "best_model.pt"),
            "final_stage": chosen,
            "val_top1": best["val_top1"],
            "val_top5": best["val_top5"],
            "val_loss": best["val_loss"],
            "train_top1": best["train_top1"],
        }
    )
    return result


def shipped_stage(rule: str, stages: list[str], result: dict[str, Any]) -> tuple[str, str]:
    """(the stage whose best checkpoint ships, the rule in words). finetuned (the default): the
    plan's fine-tuned model, whatever its val top-1 (the distillation stage only when no
    fine-tuning ran); best_val: the stage with the higher val top-1 (the later on a tie)."""
    if rule == "best_val":
        chosen = max(stages, key=lambda st: (result[st]["val_top1"], stages.index(st)))
        return chosen, "ship: best_val (the stage with the best val top-1)"
    if rule != "finetuned":
        raise ValueError(f"training.ship: {rule!r} is not finetuned or best_val")
    if "finetuning" in stages:
        return "finetuning", "ship: finetuned (the plan's fine-tuned model)"
    return stages[-1], "ship: finetuned, but no fine-tuning epochs ran: the distillation stage ships"


def run_student_job(
    config: dict,
    train_path: str,
    val_path: str,
    cache_dir: str,
    out_dir: str,
    soft_labels_path: str | None,
    gpus: int = 1,
    classes: list[str] | None = None,
    weights_path: str | None = None,
) -> dict[str, Any]:
    """The student as the pipeline runs it: in this process on one device, torchrun DDP
    (one process per GPU) on several; returns train_student's summary either way."""
    if int(gpus) <= 1:
        return train_student(
            config,
            load_jsonl(train_path),
            load_jsonl(val_path),
            cache_dir,
            out_dir,
            soft_labels_path,
            classes=classes,
            weights=read_staged(weights_path),
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "job.json",
        {"config": config, "soft_labels": soft_labels_path, "classes": classes, "weights": weights_path},
    )
    launch(
        [
            "--job-json",
            str(out / "job.json"),
            "--train-jsonl",
            train_path,
            "--val-jsonl",
            val_path,
            "--cache-dir",
            cache_dir,
            "--out-dir",
            out_dir,
            "--summary-json",
            str(out / "summary.json"),
        ],
        nproc=int(gpus),
        module="shared.train.student",
    )
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="train the student (launched in-process or by torchrun)")
    ap.add_argument("--job-json", required=True, help="{config: {...}, soft_labels: path|null, classes: [...]|null}")
    ap.add_argument("--train-jsonl", required=True)
    ap.add_argument("--val-jsonl", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--summary-json")
    a = ap.parse_args(argv)
    job = json.loads(Path(a.job_json).read_text())
    summary = train_student(
        job["config"],
        load_jsonl(a.train_jsonl),
        load_jsonl(a.val_jsonl),
        a.cache_dir,
        a.out_dir,
        job.get("soft_labels"),
        classes=job.get("classes"),
        weights=read_staged(job.get("weights")),
    )
    if a.summary_json and distributed_env()[0] == 0:
        write_json(a.summary_json, summary)
    return summary


def evaluate_on_test(
    result: dict[str, Any], test_records: list[dict], cache_dir: str, out_dir: str
) -> tuple[dict[str, Any], Any, Any, list[str]]:
    """Score each stage's best checkpoint and the shipped one on the held-out test set (the
    common test set every teacher is scored on); adds test_top1/test_top5 per stage, the shipped
    student's per-region top-1 and says which stage shipped. Returns (figures, logits, labels,
    classes) of the shipped student, for its confusion matrix."""
    from shared.evaluate.evaluation import evaluate_checkpoint

    out = Path(out_dir)
    for stage in ("distillation", "finetuning"):
        if stage in result:
            m = evaluate_checkpoint(str(out / stage / "best_model.pt"), test_records, cache_dir)[0]
            result[stage].update({"test_top1": m["top1_accuracy"], "test_top5": m["top5_accuracy"]})
    final, logits, labels, classes = evaluate_checkpoint(result["final_checkpoint"], test_records, cache_dir)
    result.update(
        {
            "test_top1": final["top1_accuracy"],
            "test_top5": final["top5_accuracy"],
            "test_per_region": final["per_region"],
            "test_per_region_samples": final["per_region_samples"],
            "test_samples": final["samples"],
            "shipped": f"the {result['final_stage']} stage's best checkpoint ({result.get('ship_rule', '')})",
        }
    )
    return final, logits, labels, classes


def tensorboard_dirs(out_dir: str) -> dict[str, str]:
    """Each stage's TensorBoard log directory under a student run."""
    out = Path(out_dir)
    return {
        stage: str(out / stage / "logs") for stage in ("distillation", "finetuning") if (out / stage / "logs").is_dir()
    }


if __name__ == "__main__":
    main()
    shutdown_distributed()
