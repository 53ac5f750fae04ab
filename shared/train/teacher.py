"""Teacher training (phases 1, 2, 2b): build the timm model a teacher config
names, start it from the staged pretrained weights (shared/train/pretrained.py) or from
another teacher (`init_from`, head rows mapped by class name), or from scratch only
when the config says `pretrained: false`, and train it with the shared loop.
`python -m shared.train.teacher ...` is what torchrun launches."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shared.config.teacher import batch_plan, load_teacher_config
from shared.data.regions import region_list
from shared.io.atomic import write_json
from shared.io.checkpoint import load_checkpoint
from shared.io.records import load_jsonl
from shared.train.distributed import distributed_env, shutdown_distributed
from shared.train.loop import TrainSettings, fit, seed_everything
from shared.train.pretrained import (
    WeightsUnavailable,
    classifier_prefix,
    copy_head_rows,
    create_model,
    model_kwargs_for,
    preprocessing_mismatches,
    read_staged,
    require_staged,
    staged_summary,
)
from shared.vision.augment import build_eval_transform, build_train_transform, photometric_on_gpu
from shared.vision.image_dataset import CachedImageDataset, class_balanced_sample_weights, class_list


def map_head_by_class(
    model: torch.nn.Module, src_state: dict, src_classes: list[str], dst_classes: list[str]
) -> dict[str, int]:
    """Initialise `model` (classes dst_classes) from another model's weights: all
    body weights are copied; head rows are copied by class name, and classes the
    source does not know keep their fresh rows. Returns counts."""
    prefix = classifier_prefix(model)
    own = model.state_dict()
    body = {
        k: v for k, v in src_state.items() if not k.startswith(prefix + ".") and k in own and own[k].shape == v.shape
    }
    missing_body = [k for k in own if not k.startswith(prefix + ".") and k not in body]
    if missing_body:
        raise ValueError(
            f"init_from: the checkpoint's architecture does not match: {len(missing_body)} "
            f"tensors missing, e.g. {missing_body[:3]}"
        )
    model.load_state_dict(body, strict=False)
    mapped = copy_head_rows(model, src_state, src_classes, dst_classes)
    return {"head_rows_mapped": mapped, "head_rows_new": len(dst_classes) - mapped}


def settings_from_config(cfg: dict, num_classes: int, world: int = 1) -> TrainSettings:
    """The loop's settings for a teacher config on `world` GPUs: the batch and learning rate
    from batch_plan (the plan's, or the cluster's per-GPU batch with accumulation and scaling)."""
    t, r, c = cfg["training"], cfg["regularization"], cfg["callbacks"]
    batch = batch_plan(t, world)
    return TrainSettings(
        epochs=t["epochs"],
        batch_size=batch["per_gpu_batch"],
        grad_accum_steps=batch["grad_accum_steps"],
        lr=batch["lr"],
        min_lr=t["min_lr"],
        warmup_epochs=t["warmup_epochs"],
        optimizer=t["optimizer"],
        weight_decay=t["weight_decay"],
        grad_clip=t["gradient_clip"],
        label_smoothing=t["label_smoothing"],
        mixup_alpha=r["mixup_alpha"],
        cutmix_alpha=r["cutmix_alpha"],
        mixup_prob=r["mixup_prob"],
        num_classes=num_classes,
        early_stopping=c["early_stopping"],
        patience=c["early_stopping_patience"],
        early_stopping_metric=c["early_stopping_metric"],
        min_epochs=c["min_epochs"],
        min_delta=c["min_delta"],
        save_best=c["save_best"],
        checkpoint_every=c["save_checkpoint_every"],
        amp=t["amp"],
        channels_last=t["channels_last"],
        compile=t["compile"],
        num_workers=cfg["data"]["num_workers"],
        seed=t["seed"],
        weighted_sampling=t["weighted_sampling"],
        max_steps_per_epoch=t["max_steps_per_epoch"],
        deterministic=t["deterministic"],
        deterministic_ops=t["deterministic_ops"],
    )


def cache_usage_gb(cache_dir: str) -> float:
    total = sum(p.stat().st_size for p in Path(cache_dir).rglob("*.jpg"))
    return total / 1e9


def create_arch(name: str) -> str:
    """The timm name to build for a model id trained from scratch (hf-hub ids need their staged config)."""
    if name.startswith("hf-hub:"):
        raise WeightsUnavailable(
            f"{name}: an hf-hub model id needs its staged config.json even with "
            "pretrained: false; use the timm architecture name instead"
        )
    return name


def train_teacher(
    config: dict,
    train_records: list[dict],
    val_records: list[dict],
    cache_dir: str,
    out_dir: str,
    *,
    init_from: str | None = None,
    classes: list[str] | None = None,
    weights: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one teacher; returns a summary (best metrics, epochs, checkpoint paths).
    `weights` is the staged record of model.name (needed when model.pretrained is true).

    Long: the plan's teacher steps in order (data, model, weights, fit, evaluation, outputs), each a few lines.
    """
    cfg = load_teacher_config(config)
    m, d, aug = cfg["model"], cfg["data"], cfg["augmentation"]
    region = d["region_filter"]
    if region:
        keep = set(region_list(region))
        train_records = [r for r in train_records if r.get("region") in keep]
        val_records = [r for r in val_records if r.get("region") in keep]
    if not train_records:
        raise ValueError(f"no training records (region_filter={region!r})")
    classes = classes or class_list(train_records)
    size = d["image_size"]
    seed_everything(cfg["training"]["seed"])  # the same seed gives the same initial weights
    dropout = cfg["regularization"]["dropout"]
    init = init_from or m["init_from"]
    init_info: dict[str, Any] = {}
    mean, std = aug["val"]["normalize"]["mean"], aug["val"]["normalize"]["std"]
    warnings: list[str] = []
    if init:  # a regional teacher: the global teacher's architecture and weights, no download
        src = load_checkpoint(init)
        arch, model_args = (
            src["model_name"],
            {k: v for k, v in src.get("model_kwargs", {}).items() if k not in ("drop_rate", "img_size")},
        )
        model = create_model(arch, len(classes), dropout, size, model_args=model_args)
        init_info = map_head_by_class(model, src["state_dict"], src["classes"], classes)
        log(f"initialised from {init}: {init_info}")
    elif m["pretrained"]:
        weights = require_staged(weights, m["name"], "teacher")
        arch, model_args = weights["architecture"], dict(weights.get("model_args") or {})
        model = create_model(m["name"], len(classes), dropout, size, weights=weights, classes=classes, log=log)
        warnings = preprocessing_mismatches(weights, mean, std, size)
    else:
        arch, model_args = create_arch(m["name"]), {}
        model = create_model(arch, len(classes), dropout, size)
        log(f"{m['name']}: training from scratch (model.pretrained: false)")
    for w in warnings:
        log(f"WARNING: {w}")
    pretrained_info = staged_summary(weights) if m["pretrained"] and not init else {}
    used = cache_usage_gb(cache_dir) if Path(cache_dir).is_dir() else 0.0
    if used > d["cache_size_gb"]:
        log(f"WARNING: the image cache uses {used:.1f} GB, more than data.cache_size_gb={d['cache_size_gb']}")
    # jitter/blur/normalisation on the GPU when training.photometric_on_gpu says so (the trainer
    # finishes the deferred batches); the teacher always reads the main (448) cache
    defer = photometric_on_gpu(cfg["training"]["photometric_on_gpu"])
    log(f"train photometric augmentation on the {'GPU (deferred)' if defer else 'CPU loader'}")
    train_ds = CachedImageDataset(
        train_records,
        cache_dir,
        classes,
        build_train_transform(aug["train"], size, d["smart_crop"], defer_photometric=defer),
    )
    val_ds = CachedImageDataset(
        val_records, cache_dir, classes, build_eval_transform(aug["val"], size, d["smart_crop"]), label_missing="ignore"
    )
    world = distributed_env()[1]
    settings = settings_from_config(cfg, len(classes), world)
    batch = batch_plan(cfg["training"], world)
    log(f"batch: {batch['deviation']}")
    meta = {
        "model_name": arch,
        "model_id": m["name"],
        "classes": classes,
        "image_size": size,
        "model_kwargs": {**model_args, **model_kwargs_for(arch, dropout, size)},
        "mean": mean,
        "std": std,
        "pretrained": pretrained_info,
        "config": cfg,
        "smart_crop": d["smart_crop"],
        "eval_resize": aug["val"]["resize"],
    }
    sample_weights = class_balanced_sample_weights(train_records, classes) if settings.weighted_sampling else None
    result = fit(
        model, train_ds, val_ds, settings, out_dir, checkpoint_meta=meta, sampler_weights=sample_weights, log=log
    )
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    return {
        "model_name": m["name"],
        "num_classes": len(classes),
        "train_images": len(train_records),
        "val_images": len(val_records),
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "global_step": result.global_step,
        "resumed_from_epoch": result.resumed_from_epoch,
        "trained_from_scratch": not init and not m["pretrained"],
        "init": init_info,
        "pretrained": pretrained_info,
        "preprocessing_warnings": warnings,
        "best_metrics": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
        "history": result.history,
        "best_checkpoint": result.best_path,
        "last_checkpoint": result.last_path,
        "stop_reason": result.stop_reason,
        "batch_plan": batch,
        "determinism": result.determinism(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="train one teacher (launched in-process or by torchrun)")
    ap.add_argument("--config", help="teacher YAML")
    ap.add_argument("--config-json", help="a JSON file {config: {...}, overrides: {...}}")
    ap.add_argument("--train-jsonl", required=True)
    ap.add_argument("--val-jsonl", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--init-from")
    ap.add_argument("--weights-json", help="the staged weights record (stage_weights)")
    ap.add_argument("--override", action="append", default=[], help="dotted.key=value (YAML value)")
    ap.add_argument("--summary-json")
    a = ap.parse_args(argv)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in a.override)}
    if a.config_json:
        job = json.loads(Path(a.config_json).read_text())
        cfg = load_teacher_config(job["config"], {**job.get("overrides", {}), **overrides})
    else:
        cfg = load_teacher_config(a.config, overrides)
    summary = train_teacher(
        cfg,
        load_jsonl(a.train_jsonl),
        load_jsonl(a.val_jsonl),
        a.cache_dir,
        a.out_dir,
        init_from=a.init_from,
        weights=read_staged(a.weights_json),
    )
    if a.summary_json and distributed_env()[0] == 0:
        write_json(a.summary_json, summary)
    return summary


if __name__ == "__main__":
    main()
    shutdown_distributed()
