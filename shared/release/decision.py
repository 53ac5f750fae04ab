"""Champion / challenger: the current release's student and this run's candidate are scored on
the same test images (those of classes both models know) and the candidate is published only if
it is not worse by more than the configured margins (release.margins) on top-1, ECE and coverage
at the target precision. Images of classes new to the candidate are scored separately: there is
nothing to compare them with, and they must not sway the verdict.

Both models answer over the classes they share (their other logits are left out), each with its
own calibrated temperature: the same question for both, on the same images. Coverage is the
share of those images above the lowest confidence threshold reaching the target precision on
them, found the same way for both models (shared.evaluate.calibration.threshold_search)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MARGINS = {"top1": 0.005, "ece": 0.02, "coverage": 0.01}


def classes_digest(classes: list[str]) -> str:
    """sha256 of the class list in the model's order (the order of its logits)."""
    return hashlib.sha256(json.dumps(list(classes), ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Scored:
    """A checkpoint's calibrated logits on a set of test images, over its own classes."""

    logits: np.ndarray
    labels: np.ndarray  # index into `classes`; -1: a class the model does not know
    classes: list[str]
    temperature: float


def score_checkpoint(checkpoint: str, records: list[dict], cache_dir: str) -> Scored:
    """The checkpoint's logits on `records` (loaded with the project's loader: weights only)."""
    from shared.evaluate.evaluation import evaluate_checkpoint
    from shared.io.checkpoint import load_checkpoint

    temperature = float(load_checkpoint(checkpoint).get("temperature") or 1.0)
    _, logits, labels, classes = evaluate_checkpoint(checkpoint, records, cache_dir)
    return Scored(logits, labels, classes, temperature)


def figures_on(scored: Scored, shared_classes: list[str], target_precision: float) -> dict[str, Any]:
    """Top-1, ECE (15 bins) and coverage at `target_precision` of `scored` on its images whose
    class is in `shared_classes`, answering over those classes only."""
    from shared.evaluate.calibration import ece_mce, softmax, threshold_search

    index = {c: i for i, c in enumerate(scored.classes)}
    cols = np.array([index[c] for c in shared_classes], dtype=np.int64)
    to_shared = np.full(len(scored.classes) + 1, -1, dtype=np.int64)
    to_shared[cols] = np.arange(len(cols))
    y = to_shared[scored.labels]  # -1 stays -1 (the last slot)
    keep = y >= 0
    if not keep.any():
        return {"images": 0}
    p = softmax(scored.logits[keep][:, cols], scored.temperature)
    correct = p.argmax(1) == y[keep]
    ece, _, _ = ece_mce(p.max(1), correct, 15)
    thr = threshold_search(p.max(1), correct, target_precision)
    return {
        "images": int(keep.sum()),
        "top1": float(correct.mean()),
        "ece": float(ece),
        "coverage": float(thr["coverage"]),
        "threshold": float(thr["threshold"]),
        "target_precision": target_precision,
    }


def new_class_figures(candidate: Scored, new_classes: list[str]) -> dict[str, Any]:
    """The candidate on images of classes the current release does not know (its full head)."""
    new = set(new_classes)
    keep = np.array([c >= 0 and candidate.classes[c] in new for c in candidate.labels], dtype=bool)
    out: dict[str, Any] = {"classes": len(new_classes), "names": sorted(new_classes)[:20], "images": int(keep.sum())}
    if keep.any():
        out["top1"] = float((candidate.logits[keep].argmax(1) == candidate.labels[keep]).mean())
    return out


def _check(figure: str, cand: float, cur: float, margin: float) -> dict[str, Any]:
    """One comparison: top-1 and coverage may drop by at most the margin, ECE rise by at most it."""
    if figure == "ece":
        bound, passed, op = cur + margin, cand <= cur + margin, "<="
    else:
        bound, passed, op = cur - margin, cand >= cur - margin, ">="
    return {
        "figure": figure,
        "candidate": cand,
        "current": cur,
        "margin": margin,
        "operator": op,
        "bound": bound,
        "passed": bool(passed),
    }


def decide(
    candidate: dict[str, Any] | None,
    current: dict[str, Any] | None,
    margins: dict[str, float],
    force: bool = False,
    reason: str = "",
    first: bool = False,
) -> dict[str, Any]:
    """publish or not, and why. candidate/current: figures_on's results on the same images
    (None: not measured); first: there is no current release. force needs a reason."""
    if force and not str(reason).strip():
        raise ValueError("release.force: true needs release.reason (why a possibly worse model goes out)")
    if first:
        return {"publish": True, "decision": "published: the first release", "checks": [], "forced": False}
    checks, problems = [], []
    if not candidate or not current or not candidate.get("images") or not current.get("images"):
        problems.append("no test image of a class both models know: the two cannot be compared")
    else:
        checks = [_check(f, candidate[f], current[f], float(margins[f])) for f in ("top1", "ece", "coverage")]
        problems = [
            f"{c['figure']} {c['candidate']:.4f} vs current {c['current']:.4f}: not {c['operator']} {c['bound']:.4f}"
            for c in checks
            if not c["passed"]
        ]
    out: dict[str, Any] = {"checks": checks, "forced": bool(force and problems), "problems": problems}
    if not problems:
        out.update(publish=True, decision="published: not worse than the current release within the margins")
    elif force:
        out.update(publish=True, decision=f"published by force ({reason}): " + "; ".join(problems), reason=reason)
    else:
        out.update(publish=False, decision="refused: worse than the current release: " + "; ".join(problems))
    return out
