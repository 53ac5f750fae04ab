"""Sparse teacher logits (shared/distill/teacher_logits.py): exactness against the dense
logits, the storage round trip, and rejection of broken files."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from shared.distill.teacher_logits import (
    TeacherLogits,
    bytes_per_sample,
    compute_teacher_logits,
    logits_temperatures,
    topk_probs,
)
from shared.io.atomic import CHECKSUM_SUFFIX, write_checksum

N, C, D = 53, 40, 12


class Features(Dataset):
    """Items (x, label, index) like CachedImageDataset's."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = torch.nn.Linear(D, C)
    with torch.no_grad():
        model.weight.mul_(4)  # peaked enough that the top-k hold most of the mass
    x = torch.randn(N, D)
    y = torch.randint(-1, C, (N,))
    dense = model(x).detach()
    ids = [f"img{i:03d}" for i in range(N)]
    classes = [f"sp{i:02d}" for i in range(C)]
    # shuffled order: results must land in their sample's row, not the order seen
    loader = DataLoader(Features(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    tl = compute_teacher_logits(model, loader, ids, classes, k=8, name="global", regions="", temperatures=(4.0,))
    return model, x, y, dense, ids, classes, tl


def test_topk_match_the_dense_logits(case):
    _, _, y, dense, ids, classes, tl = case
    vals, idx = dense.topk(8, dim=1)
    assert tl.indices.dtype == np.int32 and tl.values.dtype == np.float16 and tl.k == 8
    assert np.array_equal(tl.indices, idx.numpy())
    assert np.allclose(tl.values.astype(np.float32), vals.numpy(), rtol=1e-3, atol=1e-2)
    # the log-sum-exp is over the logits as stored (fp16): within fp16's rounding of the dense one
    fp16_err = float(dense.abs().max()) * 2**-11
    assert np.allclose(tl.logsumexp, torch.logsumexp(dense, 1).numpy(), atol=fp16_err)
    assert np.allclose(tl.logsumexp, torch.logsumexp(dense.half().float(), 1).numpy(), atol=1e-5)
    assert np.allclose(tl.confidences, dense.softmax(1).max(1).values.numpy(), rtol=2 * fp16_err)
    assert tl.temperatures.tolist() == [1.0, 4.0] and tl.tempered_logsumexp.shape == (N, 2)
    assert tl.labels.tolist() == y.tolist() and list(tl.image_ids) == ids and tl.classes == classes


def test_probabilities_at_t1_are_the_dense_softmax(case):
    _, _, _, dense, _, _, tl = case
    idx, p = topk_probs(tl, 1.0)
    exact = np.take_along_axis(dense.softmax(1).numpy(), idx.astype(np.int64), 1)
    assert np.allclose(p, exact, rtol=1e-2, atol=1e-4)  # fp16 logits: ~1e-3 relative
    assert (p.sum(1) <= 1 + 1e-3).all() and p.sum(1).mean() > 0.8


def test_probabilities_at_a_stored_temperature_are_the_dense_tempered_softmax(case):
    _, _, _, dense, _, _, tl = case
    idx, p = topk_probs(tl, 4.0)
    exact = np.take_along_axis((dense / 4.0).softmax(1).numpy(), idx.astype(np.int64), 1)
    # fp16 logits: each probability within expm1(|z|max * 2^-11 / T) relative, not renormalised
    rtol = float(np.expm1(float(dense.abs().max()) * 2**-11 / 4.0)) * 2
    assert np.allclose(p, exact, rtol=rtol, atol=1e-7)
    assert (p.sum(1) < 1 - 1e-3).all()  # 8 of 40 classes at T=4: the tail holds real mass
    assert (np.diff(p, axis=1) <= 1e-7).all()
    with pytest.raises(ValueError, match=r"no log-sum-exp at T=0.5 \(stored: 1, 4\).*re-run teacher_logits"):
        topk_probs(tl, 0.5)  # never the kept classes renormalised in its place
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            topk_probs(tl, bad)
    assert logits_temperatures(3) == [1.0, 3.0] and logits_temperatures(1.0) == [1.0]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        logits_temperatures(0)


def test_k_equal_to_c_gives_the_exact_tempered_softmax(case):
    model, x, y, dense, ids, classes, _ = case
    full = compute_teacher_logits(model, DataLoader(Features(x, y), batch_size=16), ids, classes, k=999)
    assert full.k == C  # k is clipped to the number of classes
    _, p = topk_probs(full, 2.0)
    exact = np.take_along_axis((dense / 2.0).softmax(1).numpy(), full.indices.astype(np.int64), 1)
    assert np.allclose(p, exact, atol=2e-3)


def test_save_load_round_trip(case, tmp_path):
    tl = case[-1]
    path = tmp_path / "teacher_logits_global.npz"
    tl.save(path)
    assert (tmp_path / ("teacher_logits_global.npz" + CHECKSUM_SUFFIX)).exists()
    back = TeacherLogits.load(path)
    for f in ("image_ids", "indices", "values", "logsumexp", "confidences", "labels", "tempered_logsumexp"):
        a, b = getattr(tl, f), getattr(back, f)
        assert a.dtype == b.dtype and np.array_equal(a, b), f
    assert back.classes == tl.classes and back.name == "global" and back.regions == ""


def test_broken_files_are_rejected(case, tmp_path):
    tl = case[-1]
    path = tmp_path / "t.npz"
    with pytest.raises(FileNotFoundError, match="teacher logits not found"):
        TeacherLogits.load(path)
    tl.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated copy
    with pytest.raises(ValueError, match="does not match its checksum"):
        TeacherLogits.load(path)
    write_checksum(path)  # even with a matching checksum, a truncated npz is unreadable
    with pytest.raises(ValueError, match="not readable"):
        TeacherLogits.load(path)


def test_inconsistent_arrays_are_rejected(case, tmp_path):
    tl = case[-1]
    from shared.io.atomic import save_npz

    good = dict(
        image_ids=np.asarray(tl.image_ids),
        indices=tl.indices,
        values=tl.values,
        logsumexp=tl.logsumexp,
        confidences=tl.confidences,
        labels=tl.labels,
        classes=np.asarray(tl.classes),
        name=np.asarray("g"),
        regions=np.asarray(""),
        temperatures=tl.temperatures,
        tempered_logsumexp=tl.tempered_logsumexp,
    )
    cases = {
        "older version.*re-run teacher_logits": {k: v for k, v in good.items() if k != "tempered_logsumexp"},
        "tempered_logsumexp has shape": {**good, "tempered_logsumexp": tl.tempered_logsumexp[:, :1]},
        "lack the array 'logsumexp'": {k: v for k, v in good.items() if k != "logsumexp"},
        "labels has shape": {**good, "labels": tl.labels[:-1]},
        "indices .* and values .* differ": {**good, "values": tl.values[:, :4]},
        "class index out of range": {**good, "classes": np.asarray(tl.classes[:5])},
        "values of sample img\\d+ are not sorted": {**good, "values": tl.values[:, ::-1].copy()},
    }
    for i, (match, arrays) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.npz"
        save_npz(p, **arrays)
        with pytest.raises(ValueError, match=match):
            TeacherLogits.load(p)


def test_scoring_errors_name_the_problem(case):
    model, x, y, _, ids, classes, _ = case
    loader = DataLoader(Features(x, y), batch_size=16)
    with pytest.raises(ValueError, match=r"the model gives \(16, 40\) outputs for 39 classes"):
        compute_teacher_logits(model, loader, ids, classes[:-1])
    part = DataLoader(torch.utils.data.Subset(Features(x, y), range(50)), batch_size=16)
    with pytest.raises(ValueError, match="3 samples were not scored"):
        compute_teacher_logits(model, part, ids, classes)

    class Broken(torch.nn.Module):
        def forward(self, t):
            out = model(t)
            out[t[:, 0] == x[7, 0]] = float("nan")
            return out

    with pytest.raises(ValueError, match="non-finite logits for image img007"):
        compute_teacher_logits(Broken(), loader, ids, classes)


def test_amp_on_cpu_keeps_the_ranking_mostly(case):
    model, x, y, dense, ids, classes, _ = case
    tl = compute_teacher_logits(model, DataLoader(Features(x, y), batch_size=16), ids, classes, k=5, amp=True)
    assert (tl.indices[:, 0] == dense.argmax(1).numpy()).mean() > 0.9


def test_bytes_per_sample_is_far_below_dense(case):
    tl = case[-1]
    # int32 index + fp16 value per kept class; lse at T=1 and 4, conf, label
    assert bytes_per_sample(tl) == 8 * 6 + 2 * 4 + 12
    n = 10
    big = TeacherLogits(
        np.array([f"i{i}" for i in range(n)]),
        np.tile(np.arange(32, dtype=np.int32), (n, 1)),
        np.tile(np.linspace(5, 0, 32, dtype=np.float16), (n, 1)),
        np.zeros(n, np.float32),
        np.zeros(n, np.float32),
        np.zeros(n, np.int32),
        [f"c{i}" for i in range(9000)],
    )
    assert bytes_per_sample(big) == 208 < 9000 * 4 / 100  # T=1 only: one log-sum-exp
