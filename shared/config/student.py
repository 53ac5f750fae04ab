"""The student config of the plan (config/student.yaml), accepted as written
there: model (name mobilenetv2, width multiplier `alpha`, num_classes,
dropout_rate), distillation (temperature, loss_weights kl_divergence /
cross_entropy), teachers (path, weight, region_filter), training (learning_rate,
batch_size, epochs, warmup_epochs, optimizer). Unknown keys are errors naming
the key; numeric strings ("1e-4", which YAML reads as text) are accepted.

Keys we add, all optional (defaults below): distillation.target (topk_with_rest |
topk_renormalised, KD_TARGETS); model.image_size; model.pretrained
(true: an ImageNet MobileNetV2 from timm/the hub, staged by stage_weights), model.revision,
pretrained_path, sha256, class_names (as in the teacher configs); training
distillation_epochs / finetune_epochs (the plan's 10 + 10; default: half of
`epochs` each), weight_decay, gradient_clip, grad_accum_steps, amp, seed,
channels_last, num_workers, early_stopping_patience, deterministic (true, the plan's 7.3:
the same seed gives the same weights bit for bit, as training.deterministic in the teacher
configs; deterministic_ops warn by default: the CNN head's adaptive_avg_pool2d backward has no
deterministic CUDA kernel, and with its 1x1 output each gradient is still summed once),
min_epochs / min_delta (as callbacks.* in the teacher configs), per_gpu_batch_size /
lr_scaling / plan_exact (as in the teacher configs: shared/config/teacher.batch_plan; the
scaling factor applies to both stages' learning rates), ship (finetuned: the plan's
fine-tuned model, the fine-tuning stage's best checkpoint, is shipped; best_val: whichever
stage's best checkpoint has the higher val top-1); finetune.learning_rate
(5e-5), finetune.augmentation (aggressive | standard), finetune.label_smoothing;
augmentation train/val sections as in the teacher configs; data.smart_crop;
data.student_rendition (0; set by the pipeline from cache.student_resize: the short side
of the cache's student rendition, which the student's train and val datasets then read
instead of the main cached files, failing on a record that lacks it); training.photometric_on_gpu
(auto | true | false: colour jitter, blur and normalisation on the GPU, shared/vision/augment.py).

`model.num_classes` is the plan's expected class count: the real count is the
soft labels' union class space, which wins (the difference is logged)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shared.config.schema import ConfigError, merge_checked, merge_dotted, read_config_source
from shared.config.teacher import (
    LR_SCALING_RULES,
    TEACHER_DEFAULTS,
    check_augmentation,
    check_deterministic_ops,
    check_photometric_setting,
    photometric_words,
)
from shared.config.weights import request_from_section
from shared.data.regions import region_list

MOBILENETV2_WIDTHS = {
    0.5: "mobilenetv2_050",
    0.75: "mobilenetv2_075",
    1.0: "mobilenetv2_100",
    1.1: "mobilenetv2_110d",
    1.2: "mobilenetv2_120d",
    1.4: "mobilenetv2_140",
}

STUDENT_DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "mobilenetv2",
        "alpha": 1.0,
        "num_classes": 9000,
        "dropout_rate": 0.2,
        "image_size": 224,
        "pretrained": True,
        "revision": "",
        "pretrained_path": "",
        "sha256": "",
        "class_names": "",
    },
    "distillation": {
        "temperature": 3.0,
        "loss_weights": {"kl_divergence": 0.7, "cross_entropy": 0.3},
        "target": "topk_with_rest",
    },
    "teachers": [],
    "training": {
        "learning_rate": 1e-4,
        "batch_size": 128,
        "epochs": 20,
        "warmup_epochs": 1,
        "optimizer": "adam",
        "distillation_epochs": 0,
        "finetune_epochs": 0,
        "weight_decay": 0.0,
        "gradient_clip": 0.0,
        "grad_accum_steps": 1,
        "amp": "auto",
        "seed": 42,
        "channels_last": True,
        "num_workers": 6,
        "early_stopping_patience": 5,
        "min_epochs": 0,
        "min_delta": 0.0,
        "per_gpu_batch_size": 0,
        "lr_scaling": "none",
        "plan_exact": False,
        "ship": "finetuned",
        "deterministic": True,
        "deterministic_ops": "warn",
        "photometric_on_gpu": "auto",
    },
    "finetune": {"learning_rate": 5e-5, "augmentation": "aggressive", "label_smoothing": 0.0},
    "augmentation": {
        "train": {
            "resize": 256,
            "crop": 224,
            "horizontal_flip": 0.5,
            "vertical_flip": 0.0,
            "rotation": 10,
            "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05},
            "blur": 0.0,
            "normalize": copy.deepcopy(TEACHER_DEFAULTS["augmentation"]["val"]["normalize"]),
        },
        "val": {
            "resize": 256,
            "center_crop": 224,
            "normalize": copy.deepcopy(TEACHER_DEFAULTS["augmentation"]["val"]["normalize"]),
        },
    },
    "data": {"smart_crop": False, "student_rendition": 0},
}
TEACHER_ENTRY = {"path": "", "weight": 1.0, "region_filter": ""}
# distillation.target: what the KD loss compares (shared/distill/losses.py). topk_with_rest: the
# plan's T distribution over the k kept classes plus one bin for the rest; topk_renormalised: the
# kept classes renormalised to sum to 1 (the target before the rest bin, much sharper at 9,000 classes).
KD_TARGETS = ("topk_with_rest", "topk_renormalised")
SHIP_RULES = ("finetuned", "best_val")


def load_student_config(source: str | Path | dict | None, overrides: dict | None = None) -> dict:
    raw, overrides = photometric_words(read_config_source(source, "student config"), overrides)
    teachers = raw.pop("teachers", None) if isinstance(raw, dict) else None
    cfg = merge_dotted(merge_checked({k: v for k, v in STUDENT_DEFAULTS.items() if k != "teachers"}, raw), overrides)
    if teachers is not None and not isinstance(teachers, list):
        raise ConfigError("teachers: expected a list of {path, weight, region_filter}")
    cfg["teachers"] = [merge_checked(TEACHER_ENTRY, t, f"teachers[{i}]") for i, t in enumerate(teachers or [])]
    t = cfg["training"]
    if not t["distillation_epochs"] and not t["finetune_epochs"]:
        t["distillation_epochs"] = (t["epochs"] + 1) // 2
        t["finetune_epochs"] = t["epochs"] - t["distillation_epochs"]
    if t["ship"] not in SHIP_RULES:
        raise ConfigError(f"training.ship: {t['ship']!r} is not one of {', '.join(SHIP_RULES)}")
    if t["lr_scaling"] not in LR_SCALING_RULES:
        raise ConfigError(f"training.lr_scaling: {t['lr_scaling']!r} is not one of {', '.join(LR_SCALING_RULES)}")
    check_deterministic_ops(t["deterministic_ops"])
    if cfg["finetune"]["augmentation"] not in ("aggressive", "standard"):
        raise ConfigError("finetune.augmentation: must be aggressive or standard")
    if cfg["distillation"]["temperature"] <= 0:
        raise ConfigError("distillation.temperature: must be positive")
    if cfg["distillation"]["target"] not in KD_TARGETS:
        raise ConfigError(
            f"distillation.target: {cfg['distillation']['target']!r} is not one of {', '.join(KD_TARGETS)}"
        )
    _check_values(cfg)
    return cfg


def _check_values(cfg: dict) -> None:
    """Ranges the trainer relies on: out of them a run would crash late or train wrongly."""
    try:
        request_from_section("student", cfg["model"]).check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    t, f, m, w = cfg["training"], cfg["finetune"], cfg["model"], cfg["distillation"]["loss_weights"]
    for where, v, lo, hi in (
        ("training.learning_rate", t["learning_rate"], 0, 1),
        ("finetune.learning_rate", f["learning_rate"], 0, 1),
        ("finetune.label_smoothing", f["label_smoothing"], 0, 0.99),
        ("model.dropout_rate", m["dropout_rate"], 0, 0.99),
    ):
        if not lo <= v <= hi:
            raise ConfigError(f"{where}: {v} is outside [{lo}, {hi}]")
    at_least = [(f"training.{k}", t[k], 1) for k in ("batch_size", "grad_accum_steps", "early_stopping_patience")]
    at_least += [(f"model.{k}", m[k], 1) for k in ("image_size", "num_classes")]
    at_least += [
        (f"training.{k}", t[k], 0)
        for k in (
            "distillation_epochs",
            "finetune_epochs",
            "warmup_epochs",
            "num_workers",
            "weight_decay",
            "gradient_clip",
            "min_epochs",
            "min_delta",
            "per_gpu_batch_size",
        )
    ]
    at_least.append(("data.student_rendition", cfg["data"]["student_rendition"], 0))
    at_least += [(f"distillation.loss_weights.{k}", w[k], 0) for k in ("kl_divergence", "cross_entropy")]
    for i, e in enumerate(cfg["teachers"]):
        if not e["weight"] > 0:  # a 0 weight silences a teacher; a negative one inverts it
            raise ConfigError(f"teachers[{i}].weight: must be > 0, got {e['weight']}")
    for where, v, least in at_least:
        if v < least:
            raise ConfigError(f"{where}: must be at least {least}, got {v}")
    if t["distillation_epochs"] + t["finetune_epochs"] < 1:
        raise ConfigError("training.epochs: no epoch to train (distillation_epochs + finetune_epochs is 0)")
    if w["kl_divergence"] + w["cross_entropy"] <= 0:
        raise ConfigError("distillation.loss_weights: kl_divergence and cross_entropy are both 0")
    check_augmentation(cfg["augmentation"], m["image_size"])
    check_photometric_setting(t["photometric_on_gpu"])


def timm_model_name(model: dict) -> str:
    """mobilenetv2 + alpha -> timm's name (mobilenetv2_100 for 1.0); other names as is."""
    name = model["name"]
    if name.replace("_", "").lower() != "mobilenetv2":
        return name  # a timm name as is, pretrained tag included (mobilenetv2_100.ra_in1k)
    alpha = float(model["alpha"])
    if alpha not in MOBILENETV2_WIDTHS:
        raise ConfigError(f"model.alpha: {alpha} has no timm MobileNetV2; use one of {sorted(MOBILENETV2_WIDTHS)}")
    return MOBILENETV2_WIDTHS[alpha]


def teacher_weight(cfg: dict, regions: str, fallback: float) -> float:
    """The weight student.yaml gives the teacher for `regions` ("" = the global one);
    teachers are matched by their region_filter as a set of regions."""
    want = frozenset(region_list(regions))
    for entry in cfg["teachers"]:
        have = frozenset(region_list(entry["region_filter"]))
        if have == want:
            return float(entry["weight"])
    return float(fallback)
