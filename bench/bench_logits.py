"""Teacher-logit storage: bytes per sample of the sparse top-k format (k=32) for
C=9,000 classes on 20,000 simulated samples, against dense float32 (36,000 bytes
per sample), plus scoring/save/load times and the extrapolation to the plan's
850k training images. The simulated teacher is peaked (the true class gets a
large margin), so the reported top-k probability mass (at T=1 and at the plan's
distillation temperature T=3, exact from the stored log-sum-exps) is only indicative."""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shared.distill.teacher_logits import TeacherLogits, bytes_per_sample, compute_teacher_logits, topk_probs

N, C, K, BATCH = 20_000, 9000, 32, 500
T = 3.0  # the plan's distillation temperature: its log-sum-exp is stored beside T=1's
PLAN_TRAIN_IMAGES = 850_000


class _Indices(Dataset):
    """Items (sample index as the 'image', label, index); the fake teacher turns the
    index into logits, so no N x C array ever exists outside one batch."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.tensor(i), int(self.labels[i]), i


class _FakeTeacher(torch.nn.Module):
    def __init__(self, labels: np.ndarray, margin: float = 9.0):
        super().__init__()
        self.labels, self.margin = torch.from_numpy(labels), margin

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(idx[0]))
        out = torch.randn(len(idx), C, generator=g) * 1.5
        out[torch.arange(len(idx)), self.labels[idx]] += self.margin
        return out


def run(tmp: str | None = None) -> dict:
    torch.set_num_threads(1)
    labels = np.random.default_rng(0).integers(0, C, N).astype(np.int64)
    ids = [f"img{i:07d}" for i in range(N)]
    classes = [f"taxon_{i:04d}" for i in range(C)]
    loader = DataLoader(_Indices(labels), batch_size=BATCH)
    t0 = time.perf_counter()
    tl = compute_teacher_logits(_FakeTeacher(labels), loader, ids, classes, k=K, temperatures=(T,))
    score_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        path = os.path.join(d, "teacher_logits.npz")
        t0 = time.perf_counter()
        tl.save(path)
        save_s = time.perf_counter() - t0
        file_bytes = os.path.getsize(path)
        t0 = time.perf_counter()
        back = TeacherLogits.load(path)
        load_s = time.perf_counter() - t0
    assert np.array_equal(back.indices, tl.indices)
    _, p = topk_probs(tl, 1.0)
    _, p_t = topk_probs(tl, T)
    arrays = bytes_per_sample(tl)
    file_per_sample = file_bytes / N
    dense = C * 4
    return {
        "samples": N,
        "classes": C,
        "k": K,
        "arrays_bytes_per_sample": arrays,
        "file_bytes_per_sample": round(file_per_sample, 1),  # + image ids (str) and the class list
        "dense_float32_bytes_per_sample": dense,
        "dense_over_sparse_file": round(dense / file_per_sample, 1),
        "plan_850k_sparse_file_gb": round(file_per_sample * PLAN_TRAIN_IMAGES / 1e9, 3),
        "plan_850k_dense_float32_gb": round(dense * PLAN_TRAIN_IMAGES / 1e9, 1),
        "score_samples_per_s_fake_teacher": round(N / score_s),
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
        "simulated_topk_prob_mass_t1_mean": round(float(p.sum(1).mean()), 4),
        "simulated_topk_prob_mass_t3_mean": round(float(p_t.sum(1).mean()), 4),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
