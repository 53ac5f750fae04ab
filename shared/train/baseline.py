"""Phase 0 baseline: how well a generic pretrained model does with no fine-tuning
(the plan expects 30-40 % top-1 for an ImageNet MobileNetV2).

The backbone's weights are not changed; its pooled features classify test images by
the nearest class centroid (cosine) computed from the train split. The weights are
the ones stage_weights staged (timm/hub, or `baseline.weights`); with
`baseline.pretrained: false` the backbone is random and the report says its figure
means nothing. Runs on the GPU when the pod has one."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shared.evaluate.evaluation import classification_metrics
from shared.evaluate.inference import inference_autocast, inference_loader
from shared.io.records import load_jsonl
from shared.train.pretrained import create_model, require_staged, staged_summary
from shared.vision.augment import build_eval_transform
from shared.vision.image_dataset import CachedImageDataset, class_list

PLAN_EXPECTED_TOP1 = (0.30, 0.40)
RANDOM_WEIGHTS = "random initialisation (baseline.pretrained: false): this figure says nothing about a pretrained model"


def build_backbone(model_name: str, pretrained: bool, weights: dict | None) -> tuple[torch.nn.Module, str]:
    """A timm feature extractor (no head) and a description of its weights."""
    if not pretrained:
        return create_model(model_name, 0).eval(), RANDOM_WEIGHTS
    weights = require_staged(weights, model_name, "baseline")
    model = create_model(model_name, 0, weights=weights)
    return model.eval(), f"pretrained {weights['model_id']} ({weights['source']}, sha256 {weights['sha256'][:12]})"


@torch.no_grad()
def _features(
    model: torch.nn.Module, ds: CachedImageDataset, batch_size: int, device: str, num_workers: int | None = None
) -> np.ndarray:
    """L2-normalised pooled features, through shared/evaluate/inference.py's loader and autocast."""
    feats = []
    for x, _, _ in inference_loader(ds, batch_size, device, num_workers):
        with inference_autocast(device):
            f = model(x.to(device, non_blocking=True))
        feats.append(torch.nn.functional.normalize(f.flatten(1).float(), dim=1).cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def nearest_centroid_scores(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, num_classes: int
) -> np.ndarray:
    """Cosine similarity of each test feature to each class centroid (N x C)."""
    cent = np.zeros((num_classes, train_feats.shape[1]), np.float32)
    np.add.at(cent, train_labels, train_feats)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-8)
    return test_feats @ cent.T


def run_baseline(
    train_path: str,
    test_path: str,
    cache_dir: str,
    model_name: str,
    pretrained: bool,
    weights: dict | None,
    image_size: int,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Nearest-centroid top-1/top-5 of the frozen backbone on the test split."""
    train, test = load_jsonl(train_path), load_jsonl(test_path)
    classes = class_list(train)
    tf = build_eval_transform(
        {"resize": int(round(image_size * 1.14)), "center_crop": image_size}, image_size, smart_crop=False
    )
    model, described = build_backbone(model_name, pretrained, weights)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    tr = CachedImageDataset(train, cache_dir, classes, tf)
    te = CachedImageDataset(test, cache_dir, classes, tf, label_missing="ignore")
    f_tr, f_te = _features(model, tr, batch_size, device), _features(model, te, batch_size, device)
    index = {c: i for i, c in enumerate(classes)}
    y_tr = np.array([index[r["taxon"]] for r in train])
    y_te = np.array([index.get(r["taxon"], -1) for r in test])
    scores = nearest_centroid_scores(f_tr, y_tr, f_te, len(classes))
    # Similarities scaled to logits so the reported loss is finite and comparable.
    m = classification_metrics(scores * 10.0, y_te, classes, [r.get("region", "") for r in test])
    lo, hi = PLAN_EXPECTED_TOP1
    if not pretrained:
        verdict = "not comparable: random weights"
    else:
        verdict = (
            "within" if lo <= m["top1_accuracy"] <= hi else "below" if m["top1_accuracy"] < lo else "above"
        ) + f" the plan's expected {lo:.0%}-{hi:.0%}"
    return {
        "model_name": model_name,
        "weights": described,
        "pretrained": pretrained,
        "weights_staged": staged_summary(weights) if pretrained else {},
        "method": "nearest class centroid on frozen features",
        "device": device,
        "image_size": image_size,
        "test_images": len(test),
        "classes": len(classes),
        "chance_top1": 1.0 / max(1, len(classes)),
        "plan_expected_top1": list(PLAN_EXPECTED_TOP1),
        "versus_plan": verdict,
        **m,
    }
