"""The teacher configs of the plan (config/teacher_global.yaml,
teacher_regional.yaml, teacher_eu_core.yaml), accepted as written there.

Sections and keys are the plan's; a key that is not below is an error naming
it (with a suggestion), and a missing key takes the default below (the plan's
global-teacher values). Keys we add to the plan's, all optional:
  model.name                 a timm name, optionally with its pretrained tag
                             (vit_base_patch16_384.augreg_in21k_ft_in1k), or hf-hub:org/repo
  model.revision             hub branch, tag or commit of the weights ("" = default)
  model.pretrained_path      the weights file instead of the hub: a volume path, gs:// URI
                             or http(s) URL (then model.sha256 is required)
  model.sha256               the weights file's sha256 (pins any source; offline clusters)
  model.class_names          the weights' head class names (one per line), so rows of
                             species we share are copied (a plant checkpoint)
  `pretrained: true` weights are staged by the stage_weights step (shared/train/pretrained.py)
  and a run fails when they cannot be had; `pretrained: false` trains from scratch.
  training.per_gpu_batch_size  the batch each GPU trains at (0 = training.batch_size, the
                             plan's 4, sized for its 4 GB GPU); config/cluster.yaml sets it
  training.grad_accum_steps  micro-batches per optimizer step: effective batch =
                             per-GPU batch x grad_accum_steps x GPUs
  training.lr_scaling        none | linear | sqrt: the learning rate applied is the plan's
                             learning_rate x (effective batch / the plan's batch_size)^(1 | 1/2),
                             or as written (none). batch_plan() computes it; the manifest shows it
  training.plan_exact        true: the plan's numbers (batch_size per step over all GPUs, no
                             accumulation, learning_rate as written), whatever the keys above say
  training.min_lr            floor of the cosine decay
  training.amp               auto | bf16 | fp16 | off (auto: bf16/fp16 on CUDA, off on CPU)
  training.channels_last, training.compile, training.seed
  training.weighted_sampling class-balanced sampling (each class drawn about equally often),
                             one global weighted draw per epoch shared out between DDP ranks
  training.max_steps_per_epoch  cap for smoke runs (0 = no cap)
  training.deterministic     true (default, the plan's 7.3): the same seed gives the same weights
                             bit for bit (same hardware and versions): torch deterministic
                             algorithms, cuDNN benchmark off, RNGs seeded per epoch and per
                             sample (augmentation independent of data.num_workers). Its cost on a
                             GPU is unmeasured here (deterministic attention backward, cuDNN and
                             cuBLAS choices)
  training.deterministic_ops strict (teachers' default) | warn: with strict, an op with no
                             deterministic kernel is an error at the first step that runs it
                             (seconds into a run, naming the op), and SDPA attention uses its
                             deterministic backward, which torch picks only in strict mode: a
                             timm ViT is expected to need no other op (no adaptive pooling).
                             warn (torch's warn_only): such ops run nondeterministically and the
                             manifest names them (the student's default: its CNN head's
                             adaptive_avg_pool2d backward has no deterministic CUDA kernel)
  callbacks.min_epochs       epochs after warm-up before early stopping or a best checkpoint can
                             happen (0): neither ever happens inside warm-up
  callbacks.min_delta        the smallest change of callbacks.early_stopping_metric that counts
                             as an improvement (0.0)
  training.photometric_on_gpu auto | true | false: colour jitter, blur and normalisation of
                             the train batches on the GPU (the loader only decodes and crops;
                             shared/vision/augment.py DevicePhotometric). auto: on when CUDA is there;
                             true without CUDA is an error at training time
`data.train_jsonl`/`val_jsonl` are the plan's local paths; in the pipeline the
split step's outputs are used instead, so they need not exist. `data.cache_size_gb`
sizes the cache volume (manifests) and is checked against the cache's usage.
`callbacks.checkpoint_dir` is replaced by the pipeline's per-run working directory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from shared.config.schema import ConfigError, merge_checked, merge_dotted, read_config_source
from shared.config.weights import request_from_section
from shared.data.regions import region_list

_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

TEACHER_DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "vit_base_patch16_384",
        "pretrained": True,
        "init_from": "",
        "revision": "",
        "pretrained_path": "",
        "sha256": "",
        "class_names": "",
    },
    "training": {
        "learning_rate": 3.0e-5,
        "batch_size": 4,
        "epochs": 10,
        "warmup_epochs": 2,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "gradient_clip": 1.0,
        "label_smoothing": 0.1,
        "grad_accum_steps": 1,
        "per_gpu_batch_size": 0,
        "lr_scaling": "none",
        "plan_exact": False,
        "min_lr": 1.0e-7,
        "amp": "auto",
        "channels_last": True,
        "compile": False,
        "seed": 42,
        "weighted_sampling": False,
        "max_steps_per_epoch": 0,
        "deterministic": True,
        "deterministic_ops": "strict",
        "photometric_on_gpu": "auto",
    },
    "data": {
        "train_jsonl": "",
        "val_jsonl": "",
        "image_size": 384,
        "cache_size_gb": 220,
        "num_workers": 6,
        "smart_crop": True,
        "region_filter": "",
    },
    "augmentation": {
        "train": {
            "resize": 448,
            "crop": 384,
            "horizontal_flip": 0.5,
            "vertical_flip": 0.2,
            "rotation": 20,
            "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.15},
            "blur": 0.1,
            "normalize": _NORMALIZE,
        },
        "val": {"resize": 448, "center_crop": 384, "normalize": _NORMALIZE},
    },
    "regularization": {"dropout": 0.3, "mixup_alpha": 1.0, "cutmix_alpha": 1.2, "mixup_prob": 0.5},
    "callbacks": {
        "early_stopping": True,
        "early_stopping_patience": 3,
        "early_stopping_metric": "top1_acc",
        "min_epochs": 0,
        "min_delta": 0.0,
        "save_best": True,
        "save_checkpoint_every": 1,
        "checkpoint_dir": "./checkpoints/teacher",
    },
}

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb", "lion")
METRICS = ("top1_acc", "top5_acc", "loss")
LR_SCALING_RULES = ("none", "linear", "sqrt")
DETERMINISTIC_OPS = ("strict", "warn")  # shared/train/loop.py deterministic_algorithms


def check_deterministic_ops(value: str) -> None:
    if value not in DETERMINISTIC_OPS:
        raise ConfigError(f"training.deterministic_ops: {value!r} is not one of {', '.join(DETERMINISTIC_OPS)}")


def batch_plan(training: dict, world: int = 1) -> dict[str, Any]:
    """The batch a run trains at and the learning rate it applies, against the plan's numbers
    (training.batch_size and learning_rate as the plan's file writes them), for `world` GPUs:
    plan_batch, per_gpu_batch, grad_accum_steps, gpus, effective_batch, lr_scaling, plan_lr,
    lr, lr_factor, plan_exact and a one-line `deviation`. Shared by teachers and the student.

    plan_exact keeps the plan's optimizer step: batch_size images over all GPUs (it must
    divide by them), no accumulation, the plan's learning rate."""
    plan_batch, plan_lr, world = int(training["batch_size"]), float(training["learning_rate"]), max(1, int(world))
    if training["plan_exact"]:
        if plan_batch % world:
            raise ConfigError(f"training.plan_exact: the plan's batch {plan_batch} does not divide over {world} GPUs")
        per_gpu, accum, rule = plan_batch // world, 1, "none"
    else:
        per_gpu = int(training["per_gpu_batch_size"]) or plan_batch
        accum, rule = int(training["grad_accum_steps"]), training["lr_scaling"]
    effective = per_gpu * accum * world
    ratio = effective / plan_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]
    plan = {
        "plan_batch": plan_batch,
        "per_gpu_batch": per_gpu,
        "grad_accum_steps": accum,
        "gpus": world,
        "effective_batch": effective,
        "lr_scaling": rule,
        "plan_lr": plan_lr,
        "lr_factor": factor,
        "lr": plan_lr * factor,
        "plan_exact": bool(training["plan_exact"]),
    }
    gpus = f"{world} GPU" + ("s" if world > 1 else "")
    plan["deviation"] = (
        "the plan's batch and learning rate"
        if effective == plan_batch and factor == 1.0
        else f"effective batch {effective} ({per_gpu} per GPU x {accum} accumulation x {gpus}) instead of the "
        f"plan's {plan_batch}; learning rate {plan_lr:g} x {factor:.4g} ({rule} scaling) = {plan_lr * factor:.4g}"
    )
    return plan


def load_teacher_config(source: str | Path | dict | None, overrides: dict | None = None) -> dict:
    """Validated teacher config (a nested dict with every key present)."""
    raw, overrides = photometric_words(read_config_source(source, "teacher config"), overrides)
    cfg = merge_dotted(merge_checked(TEACHER_DEFAULTS, raw), overrides)
    _check_values(cfg)
    return cfg


PHOTOMETRIC_SETTINGS = ("auto", "true", "false")


def photometric_words(raw: Any, overrides: dict | None) -> tuple[Any, dict | None]:
    """training.photometric_on_gpu written as YAML true/false (booleans) turned into the
    words the setting takes ("true"/"false"), in a config and in dotted overrides."""

    def word(v: Any) -> Any:
        return ("true" if v else "false") if isinstance(v, bool) else v

    tr = raw.get("training") if isinstance(raw, dict) else None
    if isinstance(tr, dict) and "photometric_on_gpu" in tr:
        raw = {**raw, "training": {**tr, "photometric_on_gpu": word(tr["photometric_on_gpu"])}}
    if overrides and "training.photometric_on_gpu" in overrides:
        overrides = {**overrides, "training.photometric_on_gpu": word(overrides["training.photometric_on_gpu"])}
    return raw, overrides


def check_photometric_setting(value: str) -> None:
    if value not in PHOTOMETRIC_SETTINGS:
        raise ConfigError(f"training.photometric_on_gpu: {value!r} is not one of {', '.join(PHOTOMETRIC_SETTINGS)}")


def check_augmentation(aug: dict, image_size: int, where: str = "augmentation") -> None:
    """Augmentation values in their ranges, and crops equal to the model's input size (a ViT
    is built for data.image_size; a different crop fails or trains at a size nobody asked for).
    Shared by the teacher and student loaders."""
    tr, va = aug["train"], aug["val"]
    ranges = [(f"{where}.train.{k}", tr[k], 0, 1) for k in ("horizontal_flip", "vertical_flip", "blur")]
    ranges += [
        (f"{where}.train.rotation", tr["rotation"], 0, 180),
        (f"{where}.train.color_jitter.hue", tr["color_jitter"]["hue"], 0, 0.5),
    ]
    ranges += [
        (f"{where}.train.color_jitter.{k}", tr["color_jitter"][k], 0, 10)
        for k in ("brightness", "contrast", "saturation")
    ]
    for part, sec in (("train", tr), ("val", va)):
        norm = sec["normalize"]
        for key in ("mean", "std"):
            v = norm[key]
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                raise ConfigError(f"{where}.{part}.normalize.{key}: expected 3 numbers (RGB), got {v!r}")
        ranges += [
            (f"{where}.{part}.normalize.mean", min(norm["mean"]), 0, 1),
            (f"{where}.{part}.normalize.mean", max(norm["mean"]), 0, 1),
            (f"{where}.{part}.normalize.std", max(norm["std"]), 1e-6, 10),
            (f"{where}.{part}.normalize.std", min(norm["std"]), 1e-6, 10),
        ]
    for key, v, lo, hi in ranges:
        if not lo <= v <= hi:
            raise ConfigError(f"{key}: {v} is outside [{lo}, {hi}]")
    for key, crop, resize in (
        (f"{where}.train.crop", tr["crop"], tr["resize"]),
        (f"{where}.val.center_crop", va["center_crop"], va["resize"]),
    ):
        if int(crop) != int(image_size):
            raise ConfigError(f"{key}: {crop} differs from the model's image size {image_size}; they must match")
        if int(resize) < int(crop):
            raise ConfigError(f"{key}: {crop} is larger than its resize {resize}")


def _check_values(cfg: dict) -> None:
    try:
        request_from_section("teacher", cfg["model"]).check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    t, r, c = cfg["training"], cfg["regularization"], cfg["callbacks"]
    if t["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"training.optimizer: {t['optimizer']!r} is not one of {OPTIMIZERS}")
    if c["early_stopping_metric"] not in METRICS:
        raise ConfigError(f"callbacks.early_stopping_metric: {c['early_stopping_metric']!r} is not one of {METRICS}")
    if t["lr_scaling"] not in LR_SCALING_RULES:
        raise ConfigError(f"training.lr_scaling: {t['lr_scaling']!r} is not one of {', '.join(LR_SCALING_RULES)}")
    check_deterministic_ops(t["deterministic_ops"])
    if t["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"training.amp: {t['amp']!r} is not one of auto, bf16, fp16, off")
    for where, v, lo, hi in (
        ("training.learning_rate", t["learning_rate"], 0, 1),
        ("training.label_smoothing", t["label_smoothing"], 0, 0.99),
        ("regularization.dropout", r["dropout"], 0, 0.99),
        ("regularization.mixup_prob", r["mixup_prob"], 0, 1),
    ):
        if not lo <= v <= hi:
            raise ConfigError(f"{where}: {v} is outside [{lo}, {hi}]")
    for where, v in (
        ("training.batch_size", t["batch_size"]),
        ("training.epochs", t["epochs"]),
        ("training.grad_accum_steps", t["grad_accum_steps"]),
        ("data.image_size", cfg["data"]["image_size"]),
        ("callbacks.early_stopping_patience", c["early_stopping_patience"]),
        ("callbacks.save_checkpoint_every", c["save_checkpoint_every"]),
        ("data.cache_size_gb", cfg["data"]["cache_size_gb"]),
    ):
        if int(v) < 1:
            raise ConfigError(f"{where}: must be at least 1, got {v}")
    non_negative = [
        (f"training.{k}", t[k])
        for k in (
            "min_lr",
            "weight_decay",
            "gradient_clip",
            "warmup_epochs",
            "max_steps_per_epoch",
            "per_gpu_batch_size",
        )
    ]
    non_negative += [(f"callbacks.{k}", c[k]) for k in ("min_epochs", "min_delta")]
    non_negative += [(f"regularization.{k}", r[k]) for k in ("mixup_alpha", "cutmix_alpha")]
    non_negative.append(("data.num_workers", cfg["data"]["num_workers"]))
    for where, v in non_negative:
        if v < 0:
            raise ConfigError(f"{where}: must be at least 0, got {v}")
    region = cfg["data"]["region_filter"]
    if region.strip() and not region_list(region):
        raise ConfigError(f"data.region_filter: {region!r} names no region")
    check_augmentation(cfg["augmentation"], cfg["data"]["image_size"])
    check_photometric_setting(t["photometric_on_gpu"])
