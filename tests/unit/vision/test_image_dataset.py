"""CachedImageDataset, class_list and class-balanced sampling (shared/vision/image_dataset.py)
over a tiny hand-made image cache."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, WeightedRandomSampler

from shared.vision.augment import build_eval_transform
from shared.vision.image_dataset import CachedImageDataset, class_balanced_sample_weights, class_list

EVAL = build_eval_transform({"resize": 16, "center_crop": 16, "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}}, 16)


def record(i: int, taxon: str, path: str) -> dict:
    return {
        "image_id": f"img{i:03d}",
        "taxon": taxon,
        "region": "EU_SW",
        "license": "cc-by",
        "sha256": "0" * 64,
        "cache_path": path,
        "cached_width": 20,
        "cached_height": 16,
        "split": "train",
    }


@pytest.fixture()
def cache(tmp_path):
    """Six cached images: the colour encodes the record index, so items can be traced."""
    recs = []
    for i, taxon in enumerate(
        ["Quercus ilex", "Pinus pinea", "Quercus ilex", "Abies alba", "Pinus pinea", "Quercus ilex"]
    ):
        rel = f"ab/{i:02d}.jpg"
        (tmp_path / "ab").mkdir(exist_ok=True)
        mode = "L" if i == 4 else "RGB"  # a greyscale file must come out as 3 channels too
        Image.new(mode, (20, 16), (i * 40,) * (1 if mode == "L" else 3)).save(tmp_path / rel, quality=95)
        recs.append(record(i, taxon, rel))
    return recs, str(tmp_path)


def test_class_list_is_sorted_unique_taxa(cache):
    recs, _ = cache
    assert class_list(recs) == ["Abies alba", "Pinus pinea", "Quercus ilex"]
    assert class_list([]) == []


def test_items_are_image_label_and_index(cache):
    recs, root = cache
    classes = class_list(recs)
    ds = CachedImageDataset(recs, root, classes, EVAL)
    assert len(ds) == 6
    for i in range(6):
        x, y, j = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert classes[y] == recs[i]["taxon"] and j == i
        assert abs(float(x.mean()) - i * 40 / 255) < 0.02  # the right file was decoded
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert xb.shape == (4, 3, 16, 16) and ib.tolist() == [0, 1, 2, 3]
    assert yb.tolist() == [classes.index(r["taxon"]) for r in recs[:4]]


def test_taxon_unknown_to_the_model(cache):
    recs, root = cache
    with pytest.raises(ValueError, match=r"record img003: taxon 'Abies alba' is not in the model's 2 classes"):
        CachedImageDataset(recs, root, ["Pinus pinea", "Quercus ilex"], EVAL)
    ds = CachedImageDataset(recs, root, ["Pinus pinea", "Quercus ilex"], EVAL, label_missing="ignore")
    assert ds.labels.tolist() == [1, 0, 1, -1, 0, 1]
    assert ds[3][1] == -1
    with pytest.raises(ValueError, match="label_missing"):
        CachedImageDataset(recs, root, ["Pinus pinea"], EVAL, label_missing="drop")


def test_missing_or_corrupt_file_names_the_record_and_path(cache):
    recs, root = cache
    ds = CachedImageDataset(recs, root, class_list(recs), EVAL)
    (ds.path(1)).unlink()
    with pytest.raises(RuntimeError, match=r"record img001: cannot read cached image .*01\.jpg"):
        ds[1]
    ds.path(2).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(RuntimeError, match=r"record img002: cannot read cached image .*02\.jpg"):
        ds[2]
    assert ds[0][2] == 0  # other records still load


def test_cache_path_must_stay_inside_the_cache(cache):
    recs, root = cache
    bad = recs[:1] + [record(9, "Pinus pinea", "../outside.jpg")]
    ds = CachedImageDataset(bad, root, class_list(recs), EVAL)
    with pytest.raises(ValueError, match=r"record img009: cache_path '../outside.jpg' escapes the cache"):
        ds[1]
    no_path = {k: v for k, v in recs[0].items() if k != "cache_path"}
    with pytest.raises(ValueError, match=r"record img000: no cache_path"):
        CachedImageDataset([no_path], root, class_list(recs), EVAL)


def test_balanced_weights_equalise_classes_in_a_sampler():
    recs = [{"taxon": "common"}] * 90 + [{"taxon": "rare"}] * 10
    w = class_balanced_sample_weights(recs, ["common", "rare"])
    assert w.shape == (100,) and w.mean() == pytest.approx(1.0)
    assert w[:90].sum() == pytest.approx(w[90:].sum())
    drawn = list(WeightedRandomSampler(torch.as_tensor(w), 4000, generator=torch.Generator().manual_seed(0)))
    rare_share = np.mean([i >= 90 for i in drawn])
    assert 0.45 < rare_share < 0.55  # 10% without weighting


def test_balanced_weights_skip_taxa_the_model_does_not_know():
    recs = [{"taxon": "a"}] * 3 + [{"taxon": "b"}] + [{"taxon": "zz"}] * 2
    w = class_balanced_sample_weights(recs, ["a", "b"])
    assert w[4] == 0 and w[5] == 0 and w[:3].sum() == pytest.approx(w[3])
    assert class_balanced_sample_weights(recs)[4] > 0  # without a class list every taxon counts
    with pytest.raises(ValueError, match="none of the 2 records"):
        class_balanced_sample_weights([{"taxon": "zz"}] * 2, ["a"])
