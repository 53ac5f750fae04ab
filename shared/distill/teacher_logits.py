"""Teacher logits on the train split for distillation (plan 1.5 / 2.5 / 2b.3),
stored sparse: the top-k logits (fp16) and their class indices per sample, the
log-sum-exp over all classes (so top-k probabilities are exact at T=1), the
top-1 confidence, the true label, and the teacher's class list. Never a dense
N x C array: at the plan's 850k x 9,000 that would be 30 GB of float32."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from shared.io.atomic import load_npz, save_npz
from shared.io.progress import Progress


@dataclass
class TeacherLogits:
    image_ids: np.ndarray  # (N,) str
    indices: np.ndarray  # (N, k) int32 into classes, by descending logit
    values: np.ndarray  # (N, k) float16 logits
    logsumexp: np.ndarray  # (N,) float32 over all classes
    confidences: np.ndarray  # (N,) float32 top-1 softmax probability
    labels: np.ndarray  # (N,) int32 true class index in `classes`, -1 if unknown
    classes: list[str]
    name: str = ""
    regions: str = ""  # the regions this teacher speaks for ("" = all)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        for field_name in ("indices", "values"):
            a = getattr(self, field_name)
            if a.ndim != 2 or a.shape[0] != n:
                raise ValueError(f"teacher logits: {field_name} has shape {a.shape}, expected ({n}, k)")
        if self.indices.shape != self.values.shape:
            raise ValueError(f"teacher logits: indices {self.indices.shape} and values {self.values.shape} differ")
        for field_name in ("logsumexp", "confidences", "labels"):
            if getattr(self, field_name).shape != (n,):
                raise ValueError(f"teacher logits: {field_name} has shape {getattr(self, field_name).shape}")
        if n and (self.indices.min() < 0 or self.indices.max() >= len(self.classes)):
            raise ValueError("teacher logits: class index out of range of the class list")
        unsorted = (np.diff(self.values.astype(np.float32), axis=1) > 0).any(axis=1) if n else []
        if np.any(unsorted):
            row = int(np.flatnonzero(unsorted)[0])
            raise ValueError(
                f"teacher logits: values of sample {self.image_ids[row]} are not sorted in descending order"
            )

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        save_npz(
            path,
            image_ids=np.asarray(self.image_ids, dtype=str),
            indices=self.indices.astype(np.int32),
            values=self.values.astype(np.float16),
            logsumexp=self.logsumexp.astype(np.float32),
            confidences=self.confidences.astype(np.float32),
            labels=self.labels.astype(np.int32),
            classes=np.asarray(self.classes, dtype=str),
            name=np.asarray(self.name),
            regions=np.asarray(self.regions),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherLogits:
        try:
            z = load_npz(path, "teacher logits")
        except zipfile.BadZipFile as e:  # a damaged file whose checksum was rewritten, or none recorded
            raise ValueError(f"teacher logits {path} is not readable: {e}") from e
        try:
            return cls(
                image_ids=z["image_ids"],
                indices=z["indices"],
                values=z["values"],
                logsumexp=z["logsumexp"],
                confidences=z["confidences"],
                labels=z["labels"],
                classes=[str(c) for c in z["classes"]],
                name=str(z["name"]),
                regions=str(z["regions"]),
            )
        except KeyError as e:
            raise ValueError(f"teacher logits {path} lack the array {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def sparsify(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indices, fp16 values, logsumexp, top-1 confidence) of a batch of dense logits."""
    logits = logits.float()
    k = min(k, logits.shape[1])
    vals, idx = logits.topk(k, dim=1)
    lse = torch.logsumexp(logits, dim=1)
    conf = torch.exp(vals[:, 0] - lse)
    return (
        idx.to(torch.int32).numpy(),
        vals.to(torch.float16).numpy(),
        lse.numpy().astype(np.float32),
        conf.numpy().astype(np.float32),
    )


@torch.no_grad()
def compute_teacher_logits(
    model: torch.nn.Module,
    loader: Iterable,
    image_ids: list[str],
    classes: list[str],
    k: int = 32,
    device: str = "cpu",
    amp: bool = False,
    name: str = "",
    regions: str = "",
) -> TeacherLogits:
    """Stream the loader (items (x, label, sample_index)) through the model batch by batch."""
    model.eval().to(device)
    n = len(image_ids)
    k = min(k, len(classes))
    indices = np.zeros((n, k), np.int32)
    values = np.zeros((n, k), np.float16)
    lse = np.zeros(n, np.float32)
    conf = np.zeros(n, np.float32)
    labels = np.full(n, -1, np.int32)
    seen = np.zeros(n, bool)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    # the whole train split through a teacher: at the plan's size an hour or more, so say it is moving
    progress = Progress(
        len(loader) if hasattr(loader, "__len__") else None,
        "batch",  # type: ignore[arg-type]
        label=f"teacher logits {name}".rstrip(),
        rate_unit="img",
    )
    for x, y, idx in loader:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=amp):
            out = model(x.to(device))
        i = np.asarray(idx)
        if out.ndim != 2 or out.shape[1] != len(classes):
            raise ValueError(f"teacher logits: the model gives {tuple(out.shape)} outputs for {len(classes)} classes")
        if len(i) and (i.min() < 0 or i.max() >= n):
            raise ValueError(f"teacher logits: the loader gave sample index {int(i.max())} for {n} image_ids")
        finite = torch.isfinite(out).all(dim=1).cpu().numpy()
        if not finite.all():
            raise ValueError(f"teacher logits: non-finite logits for image {image_ids[int(i[~finite][0])]}")
        indices[i], values[i], lse[i], conf[i] = sparsify(out.cpu(), k)
        labels[i] = np.asarray(y)
        seen[i] = True
        progress.update(1, work=len(i))
    progress.finish()
    if not seen.all():
        raise ValueError(f"teacher logits: {int((~seen).sum())} samples were not scored")
    return TeacherLogits(
        np.asarray(image_ids, dtype=str), indices, values, lse, conf, labels, list(classes), name, regions
    )


def topk_probs(tl: TeacherLogits, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the kept classes. At T=1 they are exact (softmax over all
    classes, via logsumexp; they sum to <= 1). At T != 1 only the top-k logits
    are known, so this is softmax(top-k / T) renormalised over the kept classes:
    an approximation that ignores the tail (small for k=32 on peaked teachers)."""
    if not temperature > 0:
        raise ValueError(f"topk_probs: temperature must be > 0, got {temperature}")
    v = tl.values.astype(np.float32)
    if temperature == 1.0:
        return tl.indices, np.exp(v - tl.logsumexp[:, None])
    z = v / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return tl.indices, p / p.sum(axis=1, keepdims=True)


def bytes_per_sample(tl: TeacherLogits) -> float:
    """Storage per sample of the arrays that grow with N (ids excluded)."""
    k = tl.k
    return k * (4 + 2) + 4 + 4 + 4


def run_teacher_logits(
    checkpoint_path: str,
    records: list[dict],
    cache_dir: str,
    out_path: str,
    k: int = 32,
    name: str = "",
    regions: str = "",
    batch_size: int = 64,
) -> dict:
    """Score `records` (the train split, filtered to `regions` when given) with a
    teacher checkpoint and save the sparse logits."""
    from shared.data.regions import parse_regions
    from shared.evaluate.evaluation import eval_transform_for
    from shared.evaluate.inference import inference_dtype, inference_loader
    from shared.io.checkpoint import build_model, load_checkpoint
    from shared.vision.image_dataset import CachedImageDataset

    keep = parse_regions(regions)
    recs = [r for r in records if keep is None or r.get("region") in keep]
    if not recs:
        raise ValueError(f"teacher {name}: no train records in regions {regions!r}")
    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    ds = CachedImageDataset(recs, cache_dir, list(ckpt["classes"]), eval_transform_for(ckpt), label_missing="ignore")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tl = compute_teacher_logits(  # decoding on worker processes; fp16 autocast on CUDA, float32 on the CPU
        model,
        inference_loader(ds, batch_size, device),
        [r["image_id"] for r in recs],
        list(ckpt["classes"]),
        k,
        device,
        amp=inference_dtype(device) is not None,
        name=name,
        regions=regions,
    )
    tl.save(out_path)
    return {
        "samples": len(recs),
        "classes": len(tl.classes),
        "k": tl.k,
        "bytes_per_sample": bytes_per_sample(tl),
        "mean_confidence": float(tl.confidences.mean()),
        "train_top1": float((tl.indices[:, 0] == tl.labels).mean()),
    }
