"""Teacher logits on the train split for distillation (plan 1.5 / 2.5 / 2b.3),
stored sparse: the top-k logits (fp16) and their class indices per sample, the
log-sum-exp over all classes at T=1 and at every temperature the distillation
uses (so the top-k probabilities softmax(z / T) are exact at those temperatures,
not renormalised over the kept classes), the top-1 confidence, the true label,
and the teacher's class list. Never a dense N x C array: at the plan's
850k x 9,000 that would be 30 GB of float32.

What is exact: the stored numbers describe one distribution per sample exactly,
the softmax at T of the teacher's logits rounded to fp16 (the log-sum-exps are
taken over the rounded logits, so kept probabilities never sum past 1). Against
the unrounded logits each probability is within a relative
expm1(|z|max * 2^-11 / T) (fp16's half-ulp on each logit): 0.3 % at |z| <= 16, T=3."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.io.atomic import load_npz, save_npz
from shared.io.progress import Progress

# Temperatures stored as equal when they agree this closely (a YAML 3 and a 3.0).
_SAME_T = 1e-6


@dataclass
class TeacherLogits:
    image_ids: np.ndarray  # (N,) str
    indices: np.ndarray  # (N, k) int32 into classes, by descending logit
    values: np.ndarray  # (N, k) float16 logits
    logsumexp: np.ndarray  # (N,) float32 over all classes (T=1)
    confidences: np.ndarray  # (N,) float32 top-1 softmax probability
    labels: np.ndarray  # (N,) int32 true class index in `classes`, -1 if unknown
    classes: list[str]
    name: str = ""
    regions: str = ""  # the regions this teacher speaks for ("" = all)
    # (m,) temperatures with (N, m) logsumexp(z / T) over all classes; None: T=1 only
    temperatures: np.ndarray | None = None
    tempered_logsumexp: np.ndarray | None = field(default=None, repr=False)

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
        self._check_temperatures(n)

    def _check_temperatures(self, n: int) -> None:
        if self.temperatures is None and self.tempered_logsumexp is None:
            self.temperatures = np.ones(1, np.float32)
            self.tempered_logsumexp = self.logsumexp.astype(np.float32)[:, None]
        if self.temperatures is None or self.tempered_logsumexp is None:
            raise ValueError("teacher logits: temperatures and tempered_logsumexp come together")
        self.temperatures = np.asarray(self.temperatures, np.float32).reshape(-1)
        if not (self.temperatures > 0).all():
            raise ValueError(f"teacher logits: temperatures must be > 0, got {self.temperatures.tolist()}")
        if self.tempered_logsumexp.shape != (n, len(self.temperatures)):
            raise ValueError(
                f"teacher logits: tempered_logsumexp has shape {self.tempered_logsumexp.shape}, "
                f"expected ({n}, {len(self.temperatures)}) for temperatures {self.temperatures.tolist()}"
            )

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def logsumexp_at(self, temperature: float) -> np.ndarray:
        """(N,) logsumexp over all classes of z / T. Known for the stored temperatures, and
        for any T when every class was kept (k = C); otherwise an error naming what is stored."""
        hit = np.flatnonzero(np.abs(self.temperatures - temperature) <= _SAME_T * max(1.0, temperature))
        if len(hit):
            return self.tempered_logsumexp[:, int(hit[0])]
        if self.k == len(self.classes):  # every logit is stored: the log-sum-exp follows from them
            z = self.values.astype(np.float64) / temperature
            top = z.max(axis=1, keepdims=True)
            return (top[:, 0] + np.log(np.exp(z - top).sum(1))).astype(np.float32)
        raise ValueError(
            f"teacher logits {self.name or '(unnamed)'}: no log-sum-exp at T={temperature:g} "
            f"(stored: {', '.join(f'{t:g}' for t in self.temperatures)}), so top-{self.k} probabilities "
            "at that temperature are unknown; re-run teacher_logits with the student's distillation temperature"
        )

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
            temperatures=np.asarray(self.temperatures, np.float32),
            tempered_logsumexp=np.asarray(self.tempered_logsumexp, np.float32),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherLogits:
        try:
            z = load_npz(path, "teacher logits")
        except zipfile.BadZipFile as e:  # a damaged file whose checksum was rewritten, or none recorded
            raise ValueError(f"teacher logits {path} is not readable: {e}") from e
        if "temperatures" not in z or "tempered_logsumexp" not in z:
            raise ValueError(
                f"teacher logits {path} were made by an older version: they lack the log-sum-exp at the "
                "distillation temperature ('temperatures', 'tempered_logsumexp'); re-run teacher_logits"
            )
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
                temperatures=z["temperatures"],
                tempered_logsumexp=z["tempered_logsumexp"],
            )
        except KeyError as e:
            raise ValueError(f"teacher logits {path} lack the array {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def logits_temperatures(distillation_temperature: float) -> list[float]:
    """The temperatures whose log-sum-exp the logits step stores: T=1 (confidences, the
    teachers' own probabilities) and the student's distillation temperature."""
    if not distillation_temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {distillation_temperature}")
    return sorted({1.0, float(distillation_temperature)})


def sparsify(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indices, fp16 values, logsumexp, top-1 confidence) of a batch of dense logits. The
    log-sum-exp is over the fp16-rounded logits, the ones stored (see the module doc); the
    ranking is the unrounded one's (rounding is monotone, so the values stay sorted)."""
    stored = _as_stored(logits)
    k = min(k, logits.shape[1])
    idx = logits.detach().float().topk(k, dim=1).indices
    vals = torch.gather(stored, 1, idx)
    lse = torch.logsumexp(stored, dim=1)
    conf = torch.exp(vals[:, 0] - lse)
    return (
        idx.to(torch.int32).numpy(),
        vals.to(torch.float16).numpy(),
        lse.numpy().astype(np.float32),
        conf.numpy().astype(np.float32),
    )


def tempered_logsumexp(logits: torch.Tensor, temperatures: Sequence[float]) -> np.ndarray:
    """(B, m) logsumexp over all classes of the fp16-rounded logits / T, one column per temperature."""
    z = _as_stored(logits).double()
    return torch.stack([torch.logsumexp(z / float(t), dim=1) for t in temperatures], dim=1).float().numpy()


def _as_stored(logits: torch.Tensor) -> torch.Tensor:
    """The logits as stored (fp16), back in float32; a logit past fp16's range is an error."""
    rounded = logits.detach().float().to(torch.float16)
    if not torch.isfinite(rounded).all():
        raise ValueError(f"teacher logits: a logit exceeds fp16's range (max |z| {float(logits.abs().max()):.4g})")
    return rounded.float()


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
    temperatures: Sequence[float] = (1.0,),
) -> TeacherLogits:
    """Stream the loader (items (x, label, sample_index)) through the model batch by batch,
    storing the log-sum-exp at each of `temperatures` (T=1 always)."""
    temps = sorted({1.0, *(float(t) for t in temperatures)})
    model.eval().to(device)
    n = len(image_ids)
    k = min(k, len(classes))
    indices = np.zeros((n, k), np.int32)
    values = np.zeros((n, k), np.float16)
    lse = np.zeros(n, np.float32)
    lse_t = np.zeros((n, len(temps)), np.float32)
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
        lse_t[i] = tempered_logsumexp(out.cpu(), temps)
        labels[i] = np.asarray(y)
        seen[i] = True
        progress.update(1, work=len(i))
    progress.finish()
    if not seen.all():
        raise ValueError(f"teacher logits: {int((~seen).sum())} samples were not scored")
    return TeacherLogits(
        np.asarray(image_ids, dtype=str),
        indices,
        values,
        lse,
        conf,
        labels,
        list(classes),
        name,
        regions,
        np.asarray(temps, np.float32),
        lse_t,
    )


def topk_probs(tl: TeacherLogits, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the kept classes at `temperature`: exp(z / T - logsumexp(z / T))
    with the log-sum-exp over all classes, so exact (see the module doc) and summing to <= 1; what
    the kept classes lack is the teacher's tail mass. A temperature the logits did not store the
    log-sum-exp for is an error (TeacherLogits.logsumexp_at), never a renormalised guess."""
    if not temperature > 0:
        raise ValueError(f"topk_probs: temperature must be > 0, got {temperature}")
    lse = tl.logsumexp_at(temperature).astype(np.float64)
    p = np.exp(tl.values.astype(np.float64) / temperature - lse[:, None])
    mass = p.sum(1)
    # 1e-4: float32 log-sum-exp against float64 sums; more is a file whose numbers disagree
    if len(mass) and mass.max() > 1 + 1e-4:
        row = int(mass.argmax())
        raise ValueError(
            f"teacher logits {tl.name or '(unnamed)'}: the kept probabilities of sample {tl.image_ids[row]} "
            f"sum to {mass[row]:.6f} > 1 at T={temperature:g}: the log-sum-exp does not match the logits"
        )
    return tl.indices, (p / np.maximum(mass, 1.0)[:, None]).astype(np.float32)


def bytes_per_sample(tl: TeacherLogits) -> float:
    """Storage per sample of the arrays that grow with N (ids excluded): an int32 index and an
    fp16 logit per kept class, the log-sum-exp at each stored temperature, confidence, label."""
    return tl.k * (4 + 2) + 4 * len(tl.temperatures) + 4 + 4 + 4


def run_teacher_logits(
    checkpoint_path: str,
    records: list[dict],
    cache_dir: str,
    out_path: str,
    k: int = 32,
    name: str = "",
    regions: str = "",
    batch_size: int = 64,
    temperatures: Sequence[float] = (1.0,),
) -> dict:
    """Score `records` (the train split, filtered to `regions` when given) with a
    teacher checkpoint and save the sparse logits, with the log-sum-exp at each of
    `temperatures` (logits_temperatures: T=1 and the distillation temperature)."""
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
        temperatures=temperatures,
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
