"""Faults mid-run: a cache step killed half way, a student killed mid-training,
truncated artifacts, a full disk and a read-only output directory. Each is detected,
redone or reported by path; nothing is lost and nothing half-written is loaded."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.fetch import FetchPolicy
from shared.data.image_cache import cache_images
from shared.distill.soft_labels import SoftLabels
from shared.distill.teacher_logits import TeacherLogits
from shared.io.atomic import OutputWriteError, atomic_open, save_npz, write_json
from shared.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.io.records import write_jsonl
from tests.image_server import ImageServer, jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
N_IMAGES = 40


def _rec(i, url):
    return {"image_id": f"i{i}", "image_url": url, "taxon": f"t{i % 4}", "region": "EU_SW", "license": "CC0"}


def _index_lines(cache):
    p = cache / "index.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_cache_killed_half_way_resumes_without_refetching(tmp_path):
    with ImageServer() as server:
        urls = [server.add(f"k{i}.jpg", jpeg_bytes(220, 180, seed=i)) for i in range(N_IMAGES)]
        recs = [_rec(i, u) for i, u in enumerate(urls)]
        write_jsonl(tmp_path / "records.jsonl", recs)
        policy = dict(allow_private_networks=True, per_host_rate=25.0, per_host_concurrency=1, retries=0)
        ref = cache_images(
            recs,
            tmp_path / "reference",
            resize=100,
            min_side=100,
            policy=FetchPolicy(**{**policy, "per_host_rate": 0}),
            workers=2,
        )
        server.hits.clear()

        cache = tmp_path / "cache"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            from shared.data.fetch import FetchPolicy
            from shared.data.image_cache import cache_images
            from shared.io.records import load_jsonl
            cache_images(load_jsonl({str(tmp_path / "records.jsonl")!r}), {str(cache)!r}, resize=100,
                         min_side=100, policy=FetchPolicy(**{policy!r}), workers=2)
            """),
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 60
        while _index_lines(cache) < N_IMAGES // 2 and time.time() < deadline and child.poll() is None:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        indexed_before = _index_lines(cache)
        assert 0 < indexed_before < N_IMAGES, "the kill must land half way"
        hits_before = dict(server.hits)

        resumed = cache_images(
            recs, cache, resize=100, min_side=100, policy=FetchPolicy(**{**policy, "per_host_rate": 0}), workers=2
        )
        # nothing fetched twice: an image indexed before the kill is never requested again;
        # only the ones in flight at the kill (at most the 2 workers) may be
        refetched = [p for p, n in server.hits.items() if n > 1]
        assert len(refetched) <= 2, refetched
        assert resumed.reused >= indexed_before and resumed.fetched + resumed.reused == N_IMAGES
        assert sum(hits_before.values()) + resumed.fetched == sum(server.hits.values())
        # nothing lost, same final index as the run that was never interrupted
        key = lambda r: r["image_id"]  # noqa: E731
        assert sorted(resumed.cached, key=key) == sorted(ref.cached, key=key)
        for r in resumed.cached:
            assert (cache / r["cache_path"]).read_bytes() == (tmp_path / "reference" / r["cache_path"]).read_bytes()


STUDENT_SCRIPT = """
import json, sys
from shared.io.records import load_jsonl
from shared.train.student import train_student
from tests.unit.train.test_student_training import noisy_teacher_soft_labels

train, val = load_jsonl(sys.argv[1]), load_jsonl(sys.argv[2])
classes = noisy_teacher_soft_labels(train, sys.argv[4] + ".soft.npz")
cfg = {"model": {"name": "test_efficientnet", "num_classes": len(classes), "image_size": 32, "dropout_rate": 0.0,
                 "pretrained": False},
       "training": {"learning_rate": 3e-3, "batch_size": 16, "distillation_epochs": 4, "finetune_epochs": 1,
                    "warmup_epochs": 0, "optimizer": "adam", "channels_last": False, "num_workers": 0,
                    "early_stopping_patience": 10},
       "augmentation": {"train": {"resize": 36, "crop": 32}, "val": {"resize": 36, "center_crop": 32}},
       "data": {"smart_crop": False}}
r = train_student(cfg, train, val, sys.argv[3], sys.argv[4], sys.argv[4] + ".soft.npz")
json.dump(r, open(sys.argv[4] + ".result.json", "w"), default=str)
"""


def _student(cached_splits, tmp_path, out):
    write_jsonl(tmp_path / "train.jsonl", cached_splits["train"])
    write_jsonl(tmp_path / "val.jsonl", cached_splits["val"])
    script = tmp_path / "student.py"
    script.write_text(STUDENT_SCRIPT)
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(tmp_path / "train.jsonl"),
            str(tmp_path / "val.jsonl"),
            cached_splits["cache_dir"],
            str(out),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_student_killed_mid_distillation_resumes_to_the_same_steps(cached_splits, tmp_path):
    full = _student(cached_splits, tmp_path, tmp_path / "full")
    assert full.wait(300) == 0, full.stdout.read().decode()[-3000:]
    ref = json.loads((tmp_path / "full.result.json").read_text())
    out = tmp_path / "killed"
    p = _student(cached_splits, tmp_path, out)
    # history.json is written after the epoch's checkpoint and its .sha256: waiting for the
    # .sha256 alone lets the kill land before history.json exists (seen on 2 cores)
    ckpt = out / "distillation" / "history.json"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)  # inside the second epoch of 4
    p.wait()
    done = json.loads((out / "distillation" / "history.json").read_text())
    assert 1 <= len(done) < 4
    resumed = _student(cached_splits, tmp_path, out)
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed from" in log
    got = json.loads((tmp_path / "killed.result.json").read_text())
    for stage in ("distillation", "finetuning"):
        assert got[stage]["epochs_run"] == ref[stage]["epochs_run"]
        h_ref = json.loads((tmp_path / "full" / stage / "history.json").read_text())
        h_got = json.loads((out / stage / "history.json").read_text())
        assert [h["step"] for h in h_got] == [h["step"] for h in h_ref]  # same step count
        assert h_got[-1]["val_top1_acc"] == pytest.approx(h_ref[-1]["val_top1_acc"], abs=0.1)  # within noise
        # same seed and data: the resumed run continues the uninterrupted curve
        assert [h["train_loss"] for h in h_got] == pytest.approx([h["train_loss"] for h in h_ref], rel=1e-2)


def _tiny_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def _truncate(path, keep=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])


def test_truncated_checkpoint_is_refused_not_loaded(tmp_path):
    p = tmp_path / "m.pt"
    save_checkpoint(p, _tiny_model(), model_name="x", classes=["a", "b", "c"], image_size=2)
    load_checkpoint(p)
    _truncate(p)
    with pytest.raises(CheckpointError, match=r"m\.pt does not match its recorded sha256"):
        load_checkpoint(p)
    os.remove(str(p) + ".sha256")  # and without a checksum, torch's own error, named
    with pytest.raises(CheckpointError, match=r"m\.pt cannot be read"):
        load_checkpoint(p)


def _logits(n=6, c=5, k=3):
    rng = np.random.default_rng(0)
    full = np.sort(rng.normal(size=(n, c)), axis=1)[:, ::-1].astype(np.float16).astype(np.float64)
    lse = np.stack([np.log(np.exp(full / t).sum(1)) for t in (1.0, 3.0)], 1).astype(np.float32)
    return TeacherLogits(
        image_ids=np.array([f"i{i}" for i in range(n)]),
        indices=np.tile(np.arange(k), (n, 1)),
        values=full[:, :k].astype(np.float16),
        logsumexp=lse[:, 0],
        confidences=np.exp(full[:, 0] - lse[:, 0]).astype(np.float32),
        labels=np.zeros(n, np.int32),
        classes=[f"c{i}" for i in range(c)],
        name="g",
        regions="",
        temperatures=np.array([1.0, 3.0], np.float32),  # the log-sum-exp at the distillation temperature
        tempered_logsumexp=lse,
    )


@pytest.mark.parametrize("what", ["teacher logits", "soft labels"])
def test_truncated_logits_and_soft_labels_are_refused(tmp_path, what):
    p = tmp_path / "a.npz"
    if what == "teacher logits":
        _logits().save(p)
        TeacherLogits.load(p)
        loader = TeacherLogits.load
    else:
        from shared.distill.soft_labels import TeacherSpec, combine_soft_labels

        tl = _logits()
        combine_soft_labels([TeacherSpec(tl, 1.0, None)], list(tl.image_ids), [""] * 6, 3.0, 3).save(p)
        SoftLabels.load(p)
        loader = SoftLabels.load
    _truncate(p, 0.7)
    with pytest.raises(ValueError, match=f"{what} .*a.npz does not match its checksum"):
        loader(p)


def test_disk_full_mid_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.json"
    write_json(target, {"version": 1})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*report\.json: No space left on device"):
        write_json(target, {"version": 2, "big": "x" * 10000})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(target.read_text()) == {"version": 1}  # the old output is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp file left


def test_disk_full_in_npz_and_checkpoint_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OutputWriteError, match=r"logits\.npz: No space left"):
        save_npz(tmp_path / "logits.npz", a=np.zeros(10))
    with pytest.raises(OSError, match=r"No space left"):
        save_checkpoint(tmp_path / "m.pt", _tiny_model(), model_name="x", classes=["a", "b", "c"], image_size=2)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_read_only_output_directory_is_a_clear_error(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    else:  # root ignores permission bits: simulate what a read-only mount returns
        import tempfile

        real = tempfile.mkstemp

        def erofs(*a, dir=None, **k):
            if dir is not None and Path(dir) == ro:
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(tempfile, "mkstemp", erofs)
    try:
        with pytest.raises(
            OutputWriteError, match=r"cannot write .*ro/cached\.jsonl: (Read-only file system|Permission denied)"
        ):
            with atomic_open(ro / "cached.jsonl") as f:
                f.write("x")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []
