"""Phase 0 baseline: how well a generic model does with no fine-tuning.

A generic backbone's weights are not changed; its pooled features classify
test images by the nearest class centroid (cosine) computed from the train
split. Weights come from a local file when given (no hub downloads here); with
none the backbone is randomly initialised, and the report says so plainly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from shared.augment import build_eval_transform
from shared.evaluation import classification_metrics
from shared.image_dataset import CachedImageDataset, class_list
from shared.records import load_jsonl


def build_backbone(model_name: str, weights_path: str = "") -> tuple[torch.nn.Module, str]:
    """A timm feature extractor (no head) and a description of its weights."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    if not weights_path:
        return model.eval(), "random initialisation (no local pretrained weights configured)"
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline.weights: file not found: {weights_path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, _ = model.load_state_dict(state, strict=False)
    if len(missing) > len(state) // 2:
        raise ValueError(f"baseline.weights {weights_path} does not fit {model_name}: "
                         f"{len(missing)} tensors missing")
    return model.eval(), f"local weights {path.name}"


@torch.no_grad()
def _features(model: torch.nn.Module, ds: CachedImageDataset, batch_size: int) -> np.ndarray:
    feats = []
    for x, _, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        f = model(x)
        feats.append(torch.nn.functional.normalize(f.flatten(1).float(), dim=1).numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def nearest_centroid_scores(train_feats: np.ndarray, train_labels: np.ndarray,
                            test_feats: np.ndarray, num_classes: int) -> np.ndarray:
    """Cosine similarity of each test feature to each class centroid (N x C)."""
    cent = np.zeros((num_classes, train_feats.shape[1]), np.float32)
    np.add.at(cent, train_labels, train_feats)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-8)
    return test_feats @ cent.T


def run_baseline(train_path: str, test_path: str, cache_dir: str, model_name: str,
                 weights_path: str, image_size: int, batch_size: int = 32) -> dict[str, Any]:
    train, test = load_jsonl(train_path), load_jsonl(test_path)
    classes = class_list(train)
    tf = build_eval_transform({"resize": int(round(image_size * 1.14)), "center_crop": image_size},
                              image_size, smart_crop=False)
    model, weights = build_backbone(model_name, weights_path)
    tr = CachedImageDataset(train, cache_dir, classes, tf)
    te = CachedImageDataset(test, cache_dir, classes, tf, label_missing="ignore")
    f_tr, f_te = _features(model, tr, batch_size), _features(model, te, batch_size)
    y_tr = np.array([classes.index(r["taxon"]) for r in train])
    y_te = np.array([classes.index(r["taxon"]) if r["taxon"] in classes else -1 for r in test])
    scores = nearest_centroid_scores(f_tr, y_tr, f_te, len(classes))
    # Similarities scaled to logits so the reported loss is finite and comparable.
    m = classification_metrics(scores * 10.0, y_te, classes, [r.get("region", "") for r in test])
    return {"model_name": model_name, "weights": weights, "method": "nearest class centroid on frozen features",
            "image_size": image_size, "test_images": len(test), "classes": len(classes),
            "chance_top1": 1.0 / max(1, len(classes)), **m}
