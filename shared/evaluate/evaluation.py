"""Classification metrics for teachers and students: top-1/top-5, loss, per-region
top-1, per-class recall (and the plan's share of classes above 60% recall), a
confusion matrix over the most frequent classes, and an HTML report."""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from shared.evaluate.inference import inference_autocast, inference_loader


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, device: str = "cpu", amp: bool = False, precision: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N x C float32) and labels (N) for an evaluation set, under
    shared/evaluate/inference.inference_autocast(device, precision) (fp16 on CUDA, float32 on
    the CPU); amp=True asks for half precision on the CPU too (bf16)."""
    if amp and precision == "auto" and torch.device(device).type == "cpu":
        precision = "bf16"
    model.eval().to(device)
    outs, labels = [], []
    for x, y, _ in loader:
        with inference_autocast(device, precision):
            logits = model(x.to(device, non_blocking=True))
        outs.append(logits.float().cpu().numpy())
        labels.append(np.asarray(y))
    if not outs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(outs).astype(np.float32), np.concatenate(labels).astype(np.int64)


_CHUNK = 4096  # rows at a time: a test set of 85k x 9,000 must not spawn N x C int64/float64 copies


def _check_inputs(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits), np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match (N x C and N)")
    if len(labels) and logits.shape[1] != len(classes):
        raise ValueError(f"logits have {logits.shape[1]} columns but there are {len(classes)} classes")
    bad = np.flatnonzero((labels < -1) | (labels >= len(classes)))
    if len(bad):
        raise ValueError(f"sample {int(bad[0])}: label {int(labels[bad[0]])} is outside -1..{len(classes) - 1}")
    return logits, labels


def _topk_and_nll(logits: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the k best classes (best first) and -log softmax at the label (nan for -1)."""
    n = len(labels)
    top = np.empty((n, k), np.int64)
    nll = np.full(n, np.nan)
    for s in range(0, n, _CHUNK):
        x = logits[s : s + _CHUNK].astype(np.float64)
        y = labels[s : s + _CHUNK]
        if not np.isfinite(x).all():
            raise ValueError(f"sample {s + int(np.flatnonzero(~np.isfinite(x).all(1))[0])}: non-finite logits")
        part = np.argpartition(-x, k - 1, axis=1)[:, :k] if k < x.shape[1] else np.tile(np.arange(k), (len(x), 1))
        order = np.argsort(-np.take_along_axis(x, part, 1), axis=1, kind="stable")
        top[s : s + _CHUNK] = np.take_along_axis(part, order, 1)
        m = x.max(axis=1)
        lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
        known = y >= 0
        nll[s : s + _CHUNK][known] = lse[known] - x[known, y[known]]
    return top, nll


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    regions: list[str] | None = None,
    recall_threshold: float = 0.6,
) -> dict[str, Any]:
    """Metrics over N samples; a label of -1 (class unknown to the model) is always wrong
    and left out of per-class recall and of the loss. With fewer than 5 classes,
    top-5 is top-C (every known label is then a hit). A class's recall counts
    towards the share when it is strictly above `recall_threshold` (plan: > 60%)."""
    logits, labels = _check_inputs(logits, labels, classes)
    n = len(labels)
    if n == 0:
        raise ValueError("no samples to evaluate")
    if regions is not None and len(regions) != n:
        raise ValueError(f"regions has {len(regions)} entries for {n} samples")
    k = min(5, logits.shape[1])
    top, nll = _topk_and_nll(logits, labels, k)
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(axis=1)
    known = labels >= 0
    loss = float(nll[known].mean()) if known.any() else float("nan")
    per_class: dict[str, float] = {}
    support = Counter(labels[known].tolist())
    for c, cnt in support.items():
        per_class[classes[c]] = float(hit1[labels == c].sum() / cnt)
    per_region: dict[str, float] = {}
    per_region_samples: dict[str, int] = {}
    if regions is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(regions):
            groups[r].append(i)
        per_region = {r: float(hit1[idx].mean()) for r, idx in sorted(groups.items())}
        per_region_samples = {r: len(idx) for r, idx in sorted(groups.items())}
    above = sum(1 for v in per_class.values() if v > recall_threshold)
    return {
        "samples": n,
        "top1_accuracy": float(hit1.mean()),
        "top5_accuracy": float(hit5.mean()),
        "loss": loss,
        "per_region": per_region,
        "per_region_samples": per_region_samples,
        "per_class_recall": dict(sorted(per_class.items())),
        "num_classes_evaluated": len(per_class),
        "share_classes_recall_above_threshold": above / len(per_class) if per_class else 0.0,
        "recall_threshold": recall_threshold,
        "unknown_label_samples": int((~known).sum()),
    }


def confusion_matrix_top(
    logits: np.ndarray, labels: np.ndarray, classes: list[str], top_n: int = 20
) -> tuple[list[str], list[list[int]]]:
    """Confusion matrix over the top_n most frequent true classes; every other class
    (true or predicted) is folded into a final "other" row/column, and samples with
    label -1 (class unknown to the model) count in the "other" row. Rows are true
    classes, columns predictions."""
    logits, labels = _check_inputs(logits, labels, classes)
    freq = Counter(labels[labels >= 0].tolist())
    keep = [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]]
    pos = {c: i for i, c in enumerate(keep)}
    other = len(keep)
    m = np.zeros((other + 1, other + 1), dtype=np.int64)
    pred = logits.argmax(axis=1)
    for t, p in zip(labels.tolist(), pred.tolist(), strict=True):
        m[pos.get(t, other), pos.get(p, other)] += 1
    names = [classes[c] for c in keep] + ["other"]
    return names, m.tolist()


def report_html(metrics: dict[str, Any], title: str) -> str:
    """A self-contained HTML report: headline metrics, per region, worst classes."""
    esc = html.escape
    head = "".join(
        f"<tr><td>{esc(k)}</td><td>{metrics[k]:.4f}</td></tr>"
        for k in ("top1_accuracy", "top5_accuracy", "loss", "share_classes_recall_above_threshold")
        if isinstance(metrics.get(k), (int, float))
    )
    regions = "".join(f"<tr><td>{esc(r)}</td><td>{v:.3f}</td></tr>" for r, v in metrics.get("per_region", {}).items())
    worst = sorted(metrics.get("per_class_recall", {}).items(), key=lambda kv: (kv[1], kv[0]))[:25]
    worst_rows = "".join(f"<tr><td>{esc(c)}</td><td>{v:.3f}</td></tr>" for c, v in worst)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:20px}} td,th{{padding:2px 12px;text-align:left}}</style></head>
<body><h2>{esc(title)}</h2><p>{metrics.get("samples", 0)} samples, {metrics.get("num_classes_evaluated", 0)} classes</p>
<table>{head}</table><h3>Top-1 per region</h3><table>{regions}</table>
<h3>Classes with the lowest recall</h3><table><tr><th>class</th><th>recall</th></tr>\
{worst_rows}</table></body></html>"""


def eval_transform_for(ckpt: dict):
    """The evaluation preprocessing a checkpoint was trained with."""
    from shared.vision.augment import build_eval_transform

    size = int(ckpt["image_size"])
    resize = int(ckpt.get("eval_resize") or round(size * 448 / 384))
    return build_eval_transform(
        {"resize": resize, "center_crop": size, "normalize": {"mean": ckpt["mean"], "std": ckpt["std"]}},
        size,
        bool(ckpt.get("smart_crop", False)),
    )


def records_as_trained(ckpt: dict[str, Any], records: list[dict]) -> list[dict]:
    """The records as the checkpoint's model was validated on them: a student trained on the
    cache's student rendition (its config's data.student_rendition) is scored on that
    rendition too, so calibrate's and the gate's val top-1 is the figure training reported
    and chose its checkpoint by (the main file resized gives slightly other pixels)."""
    from shared.data.image_cache import student_records

    short = int(((ckpt.get("config") or {}).get("data") or {}).get("student_rendition") or 0)
    return student_records(records, short, "student evaluation records") if short > 0 else records


def evaluate_checkpoint(
    checkpoint_path: str,
    records: list[dict],
    cache_dir: str,
    batch_size: int = 64,
    recall_threshold: float = 0.6,
    num_workers: int | None = None,
    precision: str = "auto",
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[str]]:
    """Metrics of a checkpoint on cached records, plus its logits, labels and classes, on the
    GPU when there is one (shared/evaluate/inference.py: worker processes for decoding, fp16
    autocast on CUDA; num_workers None = one per usable CPU on CUDA, none on the CPU)."""
    from shared.io.checkpoint import build_model, load_checkpoint
    from shared.vision.image_dataset import CachedImageDataset

    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    classes = list(ckpt["classes"])
    records = records_as_trained(ckpt, records)
    ds = CachedImageDataset(records, cache_dir, classes, eval_transform_for(ckpt), label_missing="ignore")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = inference_loader(ds, batch_size, device, num_workers)
    logits, labels = predict(model, loader, device, precision=precision)
    m = classification_metrics(logits, labels, classes, [r.get("region", "") for r in records], recall_threshold)
    return m, logits, labels, classes
