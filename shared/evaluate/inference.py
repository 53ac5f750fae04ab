"""Batch inference as evaluation, teacher logits, the baseline and calibration run it: one
DataLoader shape (decoding on several worker processes, pinned memory on CUDA) and one
autocast rule (fp16 on CUDA; float32 on the CPU unless asked). At the plan's size these
steps push ~1 M images through a model: one decoding thread and fp32 matmuls would leave
a GPU pod's accelerator idle most of the time."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_AUTO_WORKERS = 8  # enough to keep one GPU fed at inference; more only costs pod memory


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (a pod's cpu limit, which the affinity mask does not show)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return max(1, n)


def inference_workers(device: str | torch.device, num_workers: int | None = None) -> int:
    """The loader's worker processes: num_workers when given; else on CUDA one per usable CPU
    up to MAX_AUTO_WORKERS, and 0 on the CPU (the forward pass already uses every core
    through torch's threads; workers would compete with it for them)."""
    if num_workers is not None:
        if num_workers < 0:
            raise ValueError(f"num_workers: must be at least 0, got {num_workers}")
        return int(num_workers)
    if torch.device(device).type != "cuda":
        return 0
    return min(MAX_AUTO_WORKERS, usable_cpus())


def inference_loader(
    dataset: Dataset, batch_size: int, device: str | torch.device, num_workers: int | None = None
) -> DataLoader:
    """An in-order loader over `dataset` for inference: inference_workers worker processes,
    pinned memory on CUDA, workers not kept between passes (each step makes one pass)."""
    workers = inference_workers(device, num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
    )


def inference_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: float32). auto: fp16 on CUDA,
    float32 on the CPU. fp16 rather than bf16 for inference: no gradients need bf16's range,
    and the logits these steps keep need fp16's precision (bf16's 8-bit mantissa rounds a logit
    of 10 to steps of 1/16, fp16 to 1/128: ties at top-1, a coarser temperature fit). A
    non-finite logit (fp16 overflow) is an error in every caller, never silently kept.
    bf16/fp16 asked for on the CPU are used (CPU autocast supports both)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and torch.device(device).type != "cuda"):
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def inference_autocast(device: str | torch.device, precision: str = "auto") -> AbstractContextManager:
    """torch.autocast for inference_dtype(device, precision); a no-op context for float32."""
    dev = torch.device(device)
    dtype = inference_dtype(dev, precision)
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)
