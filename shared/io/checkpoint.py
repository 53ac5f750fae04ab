"""Model checkpoints: one torch file holding the weights together with everything
needed to rebuild and use the model (timm name and kwargs, class list, input
preprocessing, config, metrics). Written atomically with a checksum beside it, and
copied with it. Also where a training job keeps its resumable checkpoints: a working
directory per run and model on the checkpoint volume (work_dir)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from shared.io.atomic import CHECKSUM_SUFFIX, atomic_open, path_safe_name, verify_checksum

FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, or does not match what it claims."""


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    model_name: str,
    classes: list[str],
    image_size: int,
    model_kwargs: dict | None = None,
    mean: tuple = IMAGENET_MEAN,
    std: tuple = IMAGENET_STD,
    config: dict | None = None,
    metrics: dict | None = None,
    **extra: Any,
) -> None:
    """Save `model` (unwrapped from DDP/compile) with its metadata, atomically."""
    model = unwrap_model(model)
    # Metadata as plain JSON types (a numpy float in the metrics would make the file unreadable
    # with torch.load(weights_only=True), which is how every checkpoint is read).
    plain = json.loads(
        json.dumps(
            {
                "model_kwargs": dict(model_kwargs or {}),
                "config": config or {},
                "metrics": metrics or {},
                "extra": extra,
            },
            default=_json_value,
        )
    )
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_kwargs": plain["model_kwargs"],
        "classes": list(classes),
        "image_size": int(image_size),
        "mean": list(mean),
        "std": list(std),
        "config": plain["config"],
        "metrics": plain["metrics"],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **plain["extra"],
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_open(path, "wb", checksum=True) as f:
        f.write(buf.getvalue())


def _json_value(x: Any) -> Any:
    """numpy scalars/arrays and tuples in metadata -> plain values."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"checkpoint metadata value of type {type(x).__name__} is not plain data: {x!r}"[:200])


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by save_checkpoint; clear errors for missing or
    truncated files (checked against the recorded sha256)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best_model.pt", "model.pt", "last_checkpoint.pt"):
            if (path / name).exists():
                path = path / name
                break
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not verify_checksum(path):
        raise CheckpointError(
            f"checkpoint {path} does not match its recorded sha256 (truncated or corrupt); re-create it"
        )
    try:  # weights_only: a checkpoint is data; one that needs pickled code (a planted payload) is refused
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    for key in ("model_name", "classes", "state_dict", "image_size"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks field '{key}'")
    return ckpt


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint and its recorded sha256 (the `.sha256` file beside it): load_checkpoint
    refuses a checkpoint whose checksum file is missing or does not match."""
    shutil.copyfile(src, dst)
    shutil.copyfile(str(src) + CHECKSUM_SUFFIX, str(dst) + CHECKSUM_SUFFIX)


def work_dir(checkpoint_dir: str, run_id: str, name: str) -> Path:
    """<checkpoint_dir>/<run_id>/<name>, with both parts made path-safe: where one training job
    keeps its resumable checkpoints, so a pod restarted by a KFP retry finds them again."""
    if "://" in str(checkpoint_dir):  # Path("gs://b/x") would quietly become a local dir "gs:/b/x"
        raise ValueError(
            f"checkpoint_dir {checkpoint_dir!r}: must be a mounted path (the checkpoint "
            "volume), not a URI; resumable checkpoints are not kept in object storage"
        )
    safe = [path_safe_name(s) for s in (run_id, name)]
    return Path(checkpoint_dir) / safe[0] / safe[1]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def build_model(ckpt: dict) -> torch.nn.Module:
    """Rebuild the timm model of a checkpoint and load its weights (eval mode)."""
    import timm

    num_classes = len(ckpt["classes"])
    model = timm.create_model(
        ckpt["model_name"], pretrained=False, num_classes=num_classes, **ckpt.get("model_kwargs", {})
    )
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear) and head.out_features != num_classes:
        raise CheckpointError(
            f"class list has {num_classes} classes but the model head has {head.out_features} outputs"
        )
    try:
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:  # shape mismatch, e.g. a class list that does not fit the head
        raise CheckpointError(
            f"weights do not fit model '{ckpt['model_name']}' with "
            f"{num_classes} classes: {str(e).splitlines()[-1].strip()}"
        ) from e
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not match model '{ckpt['model_name']}' with {num_classes} classes: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
