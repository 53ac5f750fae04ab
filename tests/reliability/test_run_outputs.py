"""Each local run's outputs are its own (issue 22, item 12): the run directory is the one this run
made, not the newest folder; no earlier run's bundle, manifest or summary is left beside a new
run's (the end-to-end check of a failed export is tests/e2e/test_pipeline_local.py)."""

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402


def test_the_run_directory_is_the_one_this_run_made_not_the_newest(tmp_path):
    old = tmp_path / "plantid-training-2026-01-01-00-00-00-000001"
    old.mkdir()
    before = pipeline._run_dirs(tmp_path, "plantid-training")
    new = tmp_path / "plantid-training-2026-01-02-00-00-00-000002"
    new.mkdir()
    future = time.time() + 3600
    os.utime(old, (future, future))  # an earlier run's folder touched after this run: the newest
    assert pipeline.this_run_dir(tmp_path, "plantid-training", before) == new


def test_no_new_run_directory_or_two_of_them_is_an_error(tmp_path):
    before = pipeline._run_dirs(tmp_path, "plantid-training")
    with pytest.raises(RuntimeError, match="expected one new run directory"):
        pipeline.this_run_dir(tmp_path, "plantid-training", before)
    (tmp_path / "plantid-training-a").mkdir()
    (tmp_path / "plantid-training-b").mkdir()
    with pytest.raises(RuntimeError, match=r"found \[.*plantid-training-a.*plantid-training-b"):
        pipeline.this_run_dir(tmp_path, "plantid-training", before)
