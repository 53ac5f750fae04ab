"""The runtime environment a step ran in: Python, platform, the versions of the packages
that decide a run's results, and the GPU as torch sees it. Training steps record it in
their model's metadata and the manifest step records its own (shared/manifest/training_manifest.py
merges them: each image has only some of the packages)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

# The oldest Linux NVIDIA driver each CUDA major release runs on (NVIDIA's CUDA compatibility
# table; minor-version compatibility inside a major). PyPI's torch 2.14.1 wheels are CUDA 13.
MIN_DRIVER_FOR_CUDA = {"13": "580", "12": "525.60.13", "11": "450.80.02"}

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "kfp",
    "kfp-kubernetes",
    "numpy",
    "pillow",
    "onnx",
    "onnxruntime",
    "tensorflow",
    "tensorflowjs",
    "onnx2tf",
)


def environment_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """Python, platform, installed package versions (None when absent), and the GPU
    as torch sees it (only when torch is installed)."""
    env: dict[str, Any] = {"python_version": platform.python_version(), "platform": platform.platform()}
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    env["gpu"] = "none"
    if versions.get("torch"):
        import torch

        env["cuda"] = torch.version.cuda
        if torch.version.cuda:
            env["nvidia_driver_required"] = f">= {MIN_DRIVER_FOR_CUDA.get(torch.version.cuda.split('.')[0], '?')}"
        if torch.cuda.is_available():
            env["gpu"] = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}))
            env["gpu_count"] = torch.cuda.device_count()
    return env
