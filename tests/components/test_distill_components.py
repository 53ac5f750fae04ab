"""combine_soft_labels' body through `.python_func` with real KFP artifacts over temporary
paths: the soft labels it writes (exact T=3 top-k plus a rest bin), the metadata the manifest
reads (kept mass, effective weights per coverage pattern) and the metrics the KFP UI shows."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kfp import dsl

from components.combine_soft_labels import combine_soft_labels
from shared import artifact_keys as K
from shared.distill.soft_labels import SoftLabels
from shared.distill.teacher_logits import TeacherLogits, sparsify, tempered_logsumexp


def _logits_artifact(tmp: Path, name: str, regions: str, weight: float, ids: list[str], temps=(1.0, 3.0)):
    z = torch.randn(len(ids), 20, generator=torch.Generator().manual_seed(len(name))) * 3
    idx, val, lse, conf = sparsify(z, 4)
    tl = TeacherLogits(
        np.array(ids),
        idx,
        val,
        lse,
        conf,
        np.zeros(len(ids), np.int32),
        [f"sp{i:02d}" for i in range(20)],
        name,
        regions,
        np.array(temps, np.float32),
        tempered_logsumexp(z, temps),
    )
    art = dsl.Artifact(uri=str(tmp / f"{name}.npz"), metadata={K.WEIGHT: weight})
    tl.save(art.path)
    return art


def _run(tmp: Path, temps=(1.0, 3.0)):
    records = [
        {"image_id": f"i{i}", "taxon": f"sp{i % 20:02d}", "region": ["EU_SW", "OTHER"][i % 2]} for i in range(10)
    ]
    train = dsl.Dataset(uri=str(tmp / "train.jsonl"))
    Path(train.path).write_text("".join(json.dumps(r) + "\n" for r in records))
    ids = [r["image_id"] for r in records]
    glob = _logits_artifact(tmp, "global", "", 0.4, ids, temps)
    sw = _logits_artifact(tmp, "EU_SW", "EU_SW", 0.4, ids[::2], temps)
    soft = dsl.Artifact(uri=str(tmp / "soft_labels"), metadata={})
    metrics = dsl.Metrics(uri=str(tmp / "metrics"), metadata={})
    combine_soft_labels.python_func(
        global_logits=glob,
        regional_logits=[sw],
        train=train,
        student_config={},
        top_k=4,
        soft_labels=soft,
        metrics=metrics,
    )
    return soft, metrics


def test_combine_writes_t3_soft_labels_with_the_rest_and_reports_the_kept_mass(tmp_path):
    soft, metrics = _run(tmp_path)
    sl = SoftLabels.load(soft.path)
    assert sl.temperature == 3.0 and np.allclose(sl.values.sum(1) + sl.rest, 1, atol=1e-6)
    md = soft.metadata
    assert md[K.TOPK_MASS_MEAN] == pytest.approx(float(sl.kept_mass.mean()))
    assert md[K.TOPK_MASS_MIN] == pytest.approx(float(sl.kept_mass.min()))
    assert md[K.TOPK_MASS_MIN] < 0.9  # 4 of 20 classes at T=3: the rest bin holds real mass
    assert md[K.EFFECTIVE_WEIGHTS] == [
        {"teachers": ["global", "EU_SW"], "weights": {"global": 0.5, "EU_SW": 0.5}, "samples": 5},
        {"teachers": ["global"], "weights": {"global": 1.0}, "samples": 5},
    ]
    for key in (*K.SOFT_LABEL_METRICS, *K.SOFT_LABEL_MASS_METRICS):
        assert key in metrics.metadata, key
    assert metrics.metadata[K.TOPK_MASS_MEAN] == md[K.TOPK_MASS_MEAN]


def test_combine_refuses_logits_without_the_distillation_temperature(tmp_path):
    with pytest.raises(ValueError, match=r"no log-sum-exp at T=3 \(stored: 1\).*re-run teacher_logits"):
        _run(tmp_path, temps=(1.0,))
