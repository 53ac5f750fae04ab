"""A torch Dataset over cached records (docs/contracts.md): decodes the cached
JPEG, applies a transform, and returns (image, label index, sample index) — the
sample index lets the distillation loss find each sample's soft labels."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from shared.image_cache import resolve
from shared.remote_cache import RemoteCacheError


def class_list(records: list[dict]) -> list[str]:
    """The sorted unique taxa: index i is output unit i of a model."""
    return sorted({r["taxon"] for r in records})


class CachedImageDataset(Dataset):
    def __init__(self, records: list[dict], cache_dir: str, classes: list[str],
                 transform: Callable[[Image.Image], torch.Tensor], label_missing: str = "error"):
        if label_missing not in ("error", "ignore"):
            raise ValueError("label_missing must be 'error' or 'ignore'")
        self.records, self.cache_dir, self.transform = records, str(cache_dir), transform
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.labels = np.empty(len(records), dtype=np.int64)
        for i, r in enumerate(records):
            if "cache_path" not in r:
                raise ValueError(f"record {r.get('image_id')}: no cache_path (not a cached record)")
            label = self.class_index.get(r["taxon"], -1)
            if label < 0 and label_missing == "error":
                raise ValueError(f"record {r.get('image_id')}: taxon {r['taxon']!r} is not in the "
                                 f"model's {len(classes)} classes")
            self.labels[i] = label

    def __len__(self) -> int:
        return len(self.records)

    def path(self, i: int) -> Path:
        return resolve(self.cache_dir, self.records[i])

    def __getitem__(self, i: int):
        rid = self.records[i].get("image_id")
        try:  # a cache_path escaping the cache stays a ValueError; a gs:// cache downloads here
            p = self.path(i)
        except (OSError, RemoteCacheError) as e:
            raise RuntimeError(f"record {rid}: cannot fetch cached image {self.records[i]['cache_path']}: "
                               f"{e}") from e
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise RuntimeError(f"record {rid}: cannot read cached image {p}: {e}") from e
        return self.transform(img), int(self.labels[i]), i


def class_balanced_sample_weights(records: list[dict], classes: list[str] | None = None) -> np.ndarray:
    """Per-sample weights 1/count(class), for a WeightedRandomSampler (the plan's
    mitigation for extreme class imbalance): every class is drawn equally often.
    With `classes`, samples whose taxon the model does not know get weight 0.
    Normalised to mean 1 over the samples kept."""
    known = set(classes) if classes is not None else None
    counts = Counter(r["taxon"] for r in records)
    w = np.array([0.0 if known is not None and r["taxon"] not in known else 1.0 / counts[r["taxon"]]
                  for r in records], dtype=np.float64)
    if len(w) and w.sum() == 0:
        raise ValueError(f"class_balanced_sample_weights: none of the {len(records)} records has a taxon "
                         f"among the {len(known or ())} classes")
    return w / w.sum() * np.count_nonzero(w) if len(w) else w
