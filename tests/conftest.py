"""Shared pytest setup: repo root on sys.path, few torch threads (CI has 2 cores)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONPATH", str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sample_catalogue(tmp_path_factory):
    """The bundled synthetic catalogue, generated once per test session."""
    from shared.data.sample_data import generate

    out = tmp_path_factory.mktemp("sample")
    generate(out, n_species=12, seed=1, image_size=(160, 128))
    return out


@pytest.fixture(scope="session")
def cached_splits(sample_catalogue, tmp_path_factory):
    """The sample catalogue ingested, cached (short side 40 px) and split."""
    from shared.data.fetch import FetchPolicy
    from shared.data.image_cache import cache_images
    from shared.data.ingest import ingest, iter_jsonl_source
    from shared.data.split import stratified_split

    cache = tmp_path_factory.mktemp("cache")
    recs = ingest(iter_jsonl_source(sample_catalogue / "records.jsonl")).records
    rep = cache_images(
        recs, cache, resize=40, policy=FetchPolicy(allow_local_paths=True), progress=lambda done, total: None
    )
    sp = stratified_split(rep.cached, seed=42)
    return {"train": sp.train, "val": sp.val, "test": sp.test, "cache_dir": str(cache)}


TINY_TEACHER = {
    "model": {"name": "test_resnet", "pretrained": False},
    "training": {
        "learning_rate": 2e-3,
        "batch_size": 16,
        "epochs": 3,
        "warmup_epochs": 0,
        "channels_last": False,
        "seed": 0,
    },
    "data": {"image_size": 32, "num_workers": 0, "smart_crop": False},
    "augmentation": {"train": {"resize": 36, "crop": 32}, "val": {"resize": 36, "center_crop": 32}},
    "regularization": {"dropout": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mixup_prob": 0.0},
}
