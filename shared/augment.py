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


def _normalize(aug: dict, where: str) -> T.Normalize:
    norm = aug.get("normalize") or IMAGENET
    _check(norm, {"mean", "std"}, f"{where}.normalize")
    return T.Normalize(mean=list(norm.get("mean", IMAGENET["mean"])), std=list(norm.get("std", IMAGENET["std"])))


def _resize_for(size: int) -> int:
    return int(round(size * 448 / 384))  # the plan's resize:crop ratio


def build_train_transform(aug: dict | None, image_size: int, smart_crop: bool = False
                          ) -> Callable[[Image.Image], torch.Tensor]:
    aug = dict(aug or {})
    _check(aug, TRAIN_KEYS, "augmentation.train")
    crop = int(aug.get("crop", image_size))
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [T.Resize(int(aug.get("resize", _resize_for(crop)))), T.RandomCrop(crop)]
    if float(aug.get("horizontal_flip", 0)) > 0:
        steps.append(T.RandomHorizontalFlip(float(aug["horizontal_flip"])))
    if float(aug.get("vertical_flip", 0)) > 0:
        steps.append(T.RandomVerticalFlip(float(aug["vertical_flip"])))
    if float(aug.get("rotation", 0)) > 0:
        steps.append(T.RandomRotation(float(aug["rotation"])))
    cj = aug.get("color_jitter")
    if cj:
        _check(cj, JITTER_KEYS, "augmentation.train.color_jitter")
        steps.append(T.ColorJitter(**{k: float(v) for k, v in cj.items()}))
    if float(aug.get("blur", 0)) > 0:
        k = max(3, (crop // 32) | 1)  # odd kernel that scales with the crop
        steps.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=float(aug["blur"])))
    steps += [T.ToTensor(), _normalize(aug, "augmentation.train")]
    return T.Compose(steps)


def build_eval_transform(aug: dict | None, image_size: int, smart_crop: bool = False
                         ) -> Callable[[Image.Image], torch.Tensor]:
    aug = dict(aug or {})
    _check(aug, VAL_KEYS, "augmentation.val")
    crop = int(aug.get("center_crop", image_size))
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [T.Resize(int(aug.get("resize", _resize_for(crop)))), T.CenterCrop(crop), T.ToTensor(),
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
