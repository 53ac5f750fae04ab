"""Image transforms from the plan's `augmentation` config sections.

train: resize, crop (random), horizontal_flip / vertical_flip (probabilities),
rotation (degrees), color_jitter {brightness, contrast, saturation, hue}, blur
(probability of a Gaussian blur), normalize {mean, std}. val: resize,
center_crop, normalize. With `smart_crop` the saliency crop (shared/smart_crop)
runs first. Unknown keys are an error naming the key."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from shared.smart_crop import SmartCrop

TRAIN_KEYS = {"resize", "crop", "horizontal_flip", "vertical_flip", "rotation", "color_jitter",
              "blur", "normalize"}
VAL_KEYS = {"resize", "center_crop", "normalize"}
JITTER_KEYS = {"brightness", "contrast", "saturation", "hue"}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _check(section: dict, allowed: set, where: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(section).__name__}")
    for key in section:
        if key not in allowed:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(sorted(allowed))})")


def _number(section: dict, key: str, where: str, default: float, lo: float, hi: float = float("inf")) -> float:
    """section[key] as a float in [lo, hi]; the error names the key."""
    v = section.get(key, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{key}: expected a number, got {v!r}") from None
    if not lo <= f <= hi:
        raise ValueError(f"{where}.{key}: {f} is outside [{lo}, {hi}]")
    return f


def _normalize(aug: dict, where: str) -> T.Normalize:
    norm = aug.get("normalize") or IMAGENET
    _check(norm, {"mean", "std"}, f"{where}.normalize")
    mean, std = list(norm.get("mean", IMAGENET["mean"])), list(norm.get("std", IMAGENET["std"]))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{where}.normalize: need 3 means and 3 positive stds, got mean={mean} std={std}")
    return T.Normalize(mean=mean, std=std)


def _sizes(aug: dict, where: str, crop_key: str, image_size: int) -> tuple[int, int]:
    """(resize, crop); resize scales the short side and must leave room for the crop."""
    crop = int(_number(aug, crop_key, where, image_size, 1))
    resize = int(_number(aug, "resize", where, _resize_for(crop), 1))
    if resize < crop:
        raise ValueError(f"{where}.resize: {resize} is smaller than {where}.{crop_key} {crop}")
    return resize, crop


def _resize_for(size: int) -> int:
    return int(round(size * 448 / 384))  # the plan's resize:crop ratio


def build_train_transform(aug: dict | None, image_size: int, smart_crop: bool = False
                          ) -> Callable[[Image.Image], torch.Tensor]:
    aug = dict(aug or {})
    where = "augmentation.train"
    _check(aug, TRAIN_KEYS, where)
    resize, crop = _sizes(aug, where, "crop", image_size)
    hflip = _number(aug, "horizontal_flip", where, 0, 0, 1)
    vflip = _number(aug, "vertical_flip", where, 0, 0, 1)
    rotation = _number(aug, "rotation", where, 0, 0, 180)
    blur = _number(aug, "blur", where, 0, 0, 1)
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [T.Resize(resize), T.RandomCrop(crop)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if vflip > 0:
        steps.append(T.RandomVerticalFlip(vflip))
    if rotation > 0:
        steps.append(T.RandomRotation(rotation))
    cj = aug.get("color_jitter")
    if cj:
        _check(cj, JITTER_KEYS, f"{where}.color_jitter")
        jitter = {k: _number(cj, k, f"{where}.color_jitter", 0, 0, 0.5 if k == "hue" else float("inf"))
                  for k in cj}
        steps.append(T.ColorJitter(**jitter))
    if blur > 0:
        k = max(3, (crop // 32) | 1)  # odd kernel that scales with the crop
        # sigma from 0.5: below that a 'blurred' image is barely changed
        steps.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.5, 2.0))], p=blur))
    steps += [T.ToTensor(), _normalize(aug, "augmentation.train")]
    return T.Compose(steps)


def build_eval_transform(aug: dict | None, image_size: int, smart_crop: bool = False
                         ) -> Callable[[Image.Image], torch.Tensor]:
    aug = dict(aug or {})
    _check(aug, VAL_KEYS, "augmentation.val")
    resize, crop = _sizes(aug, "augmentation.val", "center_crop", image_size)
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [T.Resize(resize), T.CenterCrop(crop), T.ToTensor(),
              _normalize(aug, "augmentation.val")]
    return T.Compose(steps)


def aggressive_train_aug(image_size: int, normalize: dict | None = None, smart_crop: bool = False
                         ) -> Callable[[Image.Image], torch.Tensor]:
    """The plan's "augmentation aggressive" for student fine-tuning: random resized
    crops, flips, rotation, strong colour jitter, RandAugment (timm) and erasing."""
    from timm.data.auto_augment import rand_augment_transform

    norm = normalize or IMAGENET
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [
        T.RandomResizedCrop(image_size, scale=(0.35, 1.0)),
        T.RandomHorizontalFlip(0.5), T.RandomVerticalFlip(0.2), T.RandomRotation(30),
        T.ColorJitter(0.4, 0.4, 0.4, 0.1),
        rand_augment_transform("rand-m9-mstd0.5", {"translate_const": max(1, int(image_size * 0.45))}),
        T.ToTensor(), T.Normalize(norm["mean"], norm["std"]), T.RandomErasing(p=0.25),
    ]
    return T.Compose(steps)
