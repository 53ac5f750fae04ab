"""A torch Dataset over cached records (docs/contracts.md): decodes the cached
JPEG, applies a transform, and returns (image, label index, sample index) — the
sample index lets the distillation loss find each sample's soft labels.

Decoding (`decode_image`) gives the transform an RGB image without a second copy
when the file is RGB already. A transform with a `min_decode_side` (the train
transform's fast path, shared/vision/augment.py) lets a JPEG be decoded reduced in the DCT
domain (PIL's draft: 1/2, 1/4, 1/8) when the reduced image keeps at least that
short side, i.e. when the crop it takes would be downscaled anyway. With a smart-crop
train transform, each image's saliency box is computed once (the first epoch) and
kept in a table shared with the DataLoader's workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from shared.data.cache_paths import resolve
from shared.data.remote_cache import RemoteCacheError


def class_list(records: list[dict]) -> list[str]:
    """The sorted unique taxa: index i is output unit i of a model."""
    return sorted({r["taxon"] for r in records})


class CachedImageDataset(Dataset):
    def __init__(
        self,
        records: list[dict],
        cache_dir: str,
        classes: list[str],
        transform: Callable[[Image.Image], torch.Tensor],
        label_missing: str = "error",
    ):
        if label_missing not in ("error", "ignore"):
            raise ValueError("label_missing must be 'error' or 'ignore'")
        self.records, self.cache_dir, self.transform = records, str(cache_dir), transform
        # Smart-crop boxes depend on the image alone: computed the first time an image is
        # read, then reused, in memory shared with the DataLoader's workers (one int64 a
        # record, packed so that a read never sees half a box; -1: not yet known).
        self._boxes, self._boxes_for = None, None
        if getattr(transform, "smart_box", None) is not None and getattr(transform, "smart", None) is not None:
            self._boxes = torch.full((len(records),), -1, dtype=torch.int64).share_memory_()
            self._boxes_for = transform
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.labels = np.empty(len(records), dtype=np.int64)
        for i, r in enumerate(records):
            if "cache_path" not in r:
                raise ValueError(f"record {r.get('image_id')}: no cache_path (not a cached record)")
            label = self.class_index.get(r["taxon"], -1)
            if label < 0 and label_missing == "error":
                raise ValueError(
                    f"record {r.get('image_id')}: taxon {r['taxon']!r} is not in the model's {len(classes)} classes"
                )
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
            raise RuntimeError(f"record {rid}: cannot fetch cached image {self.records[i]['cache_path']}: {e}") from e
        try:
            img = decode_image(p, getattr(self.transform, "min_decode_side", 0))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"record {rid}: cannot read cached image {p}: {e}") from e
        if self._boxes is not None and self.transform is self._boxes_for:
            return self.transform(img, box=self._smart_box(i, img)), int(self.labels[i]), i
        return self.transform(img), int(self.labels[i]), i

    def _smart_box(self, i: int, img: Image.Image) -> tuple[int, int, int, int]:
        packed = int(self._boxes[i])
        if packed >= 0:
            box = tuple((packed >> s) & 0xFFFF for s in (0, 16, 32, 48))
            if box[2] <= img.width and box[3] <= img.height:  # the same decoded size as when it was made
                return box
        box = self.transform.smart_box(img)
        if max(box) <= 0x7FFF:  # four 16-bit fields in a non-negative int64
            self._boxes[i] = box[0] | box[1] << 16 | box[2] << 32 | box[3] << 48
        return box


def draft_factor(width: int, height: int, min_side: int) -> int:
    """The largest JPEG DCT reduction (8, 4, 2 or 1) that keeps the short side at least
    min_side (PIL's reduced size is the ceiling of size / factor); 1 when min_side <= 0."""
    if min_side <= 0:
        return 1
    short = min(width, height)
    return next((f for f in (8, 4, 2) if short >= f and -(-short // f) >= min_side), 1)


def decode_image(path: str | Path, min_side: int = 0) -> Image.Image:
    """The image at path as a loaded RGB PIL image. With min_side > 0 a JPEG is decoded
    reduced by the largest factor draft_factor allows (less IDCT and colour work)."""
    im = Image.open(path)
    try:
        if min_side > 0 and im.format == "JPEG":
            f = draft_factor(*im.size, min_side)
            if f > 1:
                im.draft(None, (im.size[0] // f, im.size[1] // f))  # PIL picks the scale from the floor
        im.load()  # a single-frame file (a cached JPEG) closes itself once loaded
        if getattr(im, "fp", None) is not None:  # other formats may keep it open: copy, close
            loaded = im.convert("RGB")
            im.close()
            return loaded
    except BaseException:
        im.close()
        raise
    return im if im.mode == "RGB" else im.convert("RGB")


def class_balanced_sample_weights(records: list[dict], classes: list[str] | None = None) -> np.ndarray:
    """Per-sample weights 1/count(class), for a WeightedRandomSampler (the plan's
    mitigation for extreme class imbalance): every class is drawn equally often.
    With `classes`, samples whose taxon the model does not know get weight 0.
    Normalised to mean 1 over the samples kept."""
    known = set(classes) if classes is not None else None
    counts = Counter(r["taxon"] for r in records)
    w = np.array(
        [0.0 if known is not None and r["taxon"] not in known else 1.0 / counts[r["taxon"]] for r in records],
        dtype=np.float64,
    )
    if len(w) and w.sum() == 0:
        raise ValueError(
            f"class_balanced_sample_weights: none of the {len(records)} records has a taxon "
            f"among the {len(known or ())} classes"
        )
    return w / w.sum() * np.count_nonzero(w) if len(w) else w
