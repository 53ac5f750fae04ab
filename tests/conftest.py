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
    from shared.sample_data import generate

    out = tmp_path_factory.mktemp("sample")
    generate(out, n_species=12, seed=1, image_size=(160, 128))
    return out
