"""The student job as the pipeline runs it: in-process on one device, torchrun DDP on
several (two gloo CPU processes here), distillation then fine-tuning either way."""

import json
from pathlib import Path

import numpy as np
import pytest

from shared.distill.soft_labels import TeacherSpec, combine_soft_labels, records_digest
from shared.distill.teacher_logits import TeacherLogits
from shared.io.checkpoint import load_checkpoint
from shared.io.records import write_jsonl
from shared.train.student import run_student_job

TINY_STUDENT = {
    "model": {
        "name": "test_efficientnet",
        "num_classes": 12,
        "image_size": 32,
        "dropout_rate": 0.0,
        "pretrained": False,
    },
    "training": {
        "learning_rate": 3e-3,
        "batch_size": 16,
        "distillation_epochs": 2,
        "finetune_epochs": 1,
        "warmup_epochs": 0,
        "optimizer": "adam",
        "channels_last": False,
        "num_workers": 0,
    },
    "augmentation": {"train": {"resize": 36, "crop": 32}, "val": {"resize": 36, "center_crop": 32}},
    "data": {"smart_crop": False},
}


def noisy_teacher_soft_labels(train: list[dict], path) -> list[str]:
    """Soft labels from a teacher that knows the labels, noisily; returns its classes."""
    classes = sorted({r["taxon"] for r in train})
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (len(train), len(classes))).astype(np.float32)
    labels = np.array([classes.index(r["taxon"]) for r in train])
    logits[np.arange(len(train)), labels] += 3.0
    idx = np.argsort(-logits, axis=1)[:, :8]
    vals = np.take_along_axis(logits, idx, 1)
    lse = np.log(np.exp(logits).sum(1))
    lse3 = np.log(np.exp(logits / 3.0).sum(1))  # the distillation temperature's, as teacher_logits stores
    tl = TeacherLogits(
        image_ids=np.array([r["image_id"] for r in train]),
        indices=idx.astype(np.int32),
        values=vals.astype(np.float16),
        logsumexp=lse.astype(np.float32),
        confidences=np.exp(vals[:, 0] - lse).astype(np.float32),
        labels=labels.astype(np.int32),
        classes=classes,
        name="global",
        regions="",
        temperatures=np.array([1.0, 3.0], np.float32),
        tempered_logsumexp=np.stack([lse, lse3], 1).astype(np.float32),
    )
    sl = combine_soft_labels(
        [TeacherSpec(tl, 1.0, None)], [r["image_id"] for r in train], [r["region"] for r in train], 3.0, 8
    )
    sl.records_digest = records_digest(train)  # as run_combine records it
    sl.save(path)
    return classes


@pytest.mark.parametrize("gpus", [1, 2])
def test_student_job_one_process_or_torchrun(cached_splits, tmp_path, gpus):
    write_jsonl(tmp_path / "train.jsonl", cached_splits["train"])
    write_jsonl(tmp_path / "val.jsonl", cached_splits["val"])
    soft = tmp_path / "soft.npz"
    classes = noisy_teacher_soft_labels(cached_splits["train"], soft)
    out = tmp_path / "student"
    r = run_student_job(
        TINY_STUDENT,
        str(tmp_path / "train.jsonl"),
        str(tmp_path / "val.jsonl"),
        cached_splits["cache_dir"],
        str(out),
        str(soft),
        gpus=gpus,
    )
    assert r["distilled"] and r["soft_label_coverage"] == 1.0
    assert r["distillation"]["epochs_run"] == 2 and r["finetuning"]["epochs_run"] == 1
    assert 0.0 <= r["val_top1"] <= 1.0 and r["final_stage"] in ("distillation", "finetuning")
    ckpt = load_checkpoint(r["final_checkpoint"])
    assert ckpt["classes"] == classes and ckpt["stage"] == r["final_stage"]
    if gpus > 1:  # what torchrun's rank 0 wrote is what the caller got back
        assert json.loads((out / "summary.json").read_text())["val_top1"] == r["val_top1"]
        steps = json.loads((out / "distillation" / "history.json").read_text())[-1]["step"]
        one_proc_steps = 2 * (len(cached_splits["train"]) // 16)
        assert steps < one_proc_steps  # each rank took half the batches per epoch


@pytest.fixture(scope="module")
def rendition_splits(sample_catalogue, tmp_path_factory):
    """The sample catalogue cached at 40 px with a 36 px student rendition, and split."""
    from shared.data.fetch import FetchPolicy
    from shared.data.image_cache import cache_images
    from shared.data.ingest import ingest, iter_jsonl_source
    from shared.data.split import stratified_split

    cache = tmp_path_factory.mktemp("rendition_cache")
    recs = ingest(iter_jsonl_source(sample_catalogue / "records.jsonl")).records
    rep = cache_images(
        recs,
        cache,
        resize=40,
        student_resize=36,
        policy=FetchPolicy(allow_local_paths=True),
        progress=lambda done, total: None,
    )
    sp = stratified_split(rep.cached, seed=42)
    return {"train": sp.train, "val": sp.val, "cache_dir": str(cache)}


def test_student_reads_its_rendition_and_never_the_main_files(rendition_splits, tmp_path, monkeypatch):
    """data.student_rendition (the pipeline's cache.student_resize): the student's train and
    val datasets read the rendition; a record without it is an error naming it."""
    import torch

    from shared.train.student import train_student

    cfg = {
        **TINY_STUDENT,
        "training": {**TINY_STUDENT["training"], "distillation_epochs": 1, "finetune_epochs": 0},
        "data": {"smart_crop": False, "student_rendition": 36},
    }
    train, val, cache = rendition_splits["train"], rendition_splits["val"], rendition_splits["cache_dir"]
    assert all(r["student_cache_path"].endswith(".s36.jpg") for r in train + val)
    for p in list(Path(cache).rglob("*.jpg")):  # only the renditions are left to read
        if not p.name.endswith(".s36.jpg"):
            p.unlink()
    logs = []
    r = train_student(cfg, train, val, cache, str(tmp_path / "s"), None, log=logs.append)
    assert r["distillation"]["epochs_run"] == 1
    assert any("36 px student rendition" in line for line in logs)
    assert any("photometric augmentation on the CPU loader" in line for line in logs)  # auto, no CUDA
    lacking = [dict(train[0])] + train[1:]
    del lacking[0]["student_cache_path"]
    with pytest.raises(ValueError, match=rf"record {train[0]['image_id']}: no student rendition"):
        train_student(cfg, lacking, val, cache, str(tmp_path / "s2"), None, log=logs.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_gpu = {**cfg, "training": {**cfg["training"], "photometric_on_gpu": True}}  # YAML true
    with pytest.raises(ValueError, match="training.photometric_on_gpu: true, but no CUDA device"):
        train_student(on_gpu, train, val, cache, str(tmp_path / "s3"), None, log=logs.append)
