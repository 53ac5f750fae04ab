"""Container images the components run in. The registry and tag come from the
environment (pipeline.py sets them from the config before importing components),
so the same code compiles for any registry; images/ defines each one."""
from __future__ import annotations

import os

REGISTRY = os.environ.get("PLANTID_IMAGE_REGISTRY", "ghcr.io/plantid")
TAG = os.environ.get("PLANTID_IMAGE_TAG", "0.1.0")

# name -> the Dockerfile under images/ that builds it
IMAGES = {"data": "images/data/Dockerfile", "train": "images/train/Dockerfile",
          "export": "images/export/Dockerfile"}


def image(name: str) -> str:
    if name not in IMAGES:
        raise KeyError(f"unknown image {name!r}; images/ defines {sorted(IMAGES)}")
    return f"{REGISTRY}/plantid-{name}:{TAG}"


DATA_IMAGE = image("data")
TRAIN_IMAGE = image("train")
EXPORT_IMAGE = image("export")
