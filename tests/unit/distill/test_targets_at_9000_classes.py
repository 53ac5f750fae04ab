"""The plan's T=3 soft labels and KD loss at the plan's class count (9,000), sparse (top-32
plus a rest bin) against the dense computation over all 9,000 classes in float64.

Tolerances, and why:
- Soft-label values against the dense T=3 softmax of the teacher's float32 logits: relative
  RTOL_FP16 = expm1(max|z| * 2^-11 / T) + 1e-6, the effect of fp16's half-ulp rounding of each
  stored logit (a logit z is known to |z| * 2^-11, a probability exp(z/T - lse) to that / T);
  against the softmax of the fp16-rounded logits (what is stored): relative 1e-5 (float32).
- Rest bin: equals 1 - kept mass to 1e-6 absolute (float32), and the dense tail mass to the
  same relative RTOL_FP16.
- KD loss with the rest bin against its dense float64 equivalent over the same k + 1 bins:
  relative 1e-5; gradients w.r.t. the student's logits: 1e-5 of the largest gradient entry
  (float32 log-sum-exps over 9,000 classes against float64).
- Against the dense KL with the teacher's true tail: the gradients on the kept classes agree to
  the soft-label values' error (RTOL_FP16 of T^2/B * q / T); the non-kept gradients agree in
  their sum per row; the losses differ by exactly q_rest * KL(teacher tail || student tail) * T^2,
  checked to relative 1e-4."""

import numpy as np
import pytest
import torch

from shared.distill.losses import kd_loss
from shared.distill.soft_labels import TeacherSpec, combine_soft_labels, soft_label_metrics
from shared.distill.teacher_logits import TeacherLogits, sparsify, tempered_logsumexp

C, N, K, T = 9000, 12, 32, 3.0


def _teacher_logits(seed: int) -> torch.Tensor:
    """A converged teacher's logits: the true class well ahead, a few look-alikes, a broad tail
    (top-1 ~0.97 at T=1; the top 32 hold ~3 % of the T=3 mass, as the issue measured)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, C, generator=g, dtype=torch.float32) * 1.2
    rows = torch.arange(N)
    true = torch.randint(0, C, (N,), generator=g)
    z[rows, true] += 14.0
    for j in range(5):  # similar species
        z[rows, torch.randint(0, C, (N,), generator=g)] += 9.0 - j
    return z


def _stored(z: torch.Tensor, name: str, classes: list[str], k: int = K) -> TeacherLogits:
    idx, val, lse, conf = sparsify(z, k)
    return TeacherLogits(
        np.array([f"s{i}" for i in range(N)]),
        idx,
        val,
        lse,
        conf,
        np.zeros(N, np.int32),
        classes,
        name,
        "",
        np.array([1.0, T], np.float32),
        tempered_logsumexp(z, [1.0, T]),
    )


def _rtol_fp16(z: torch.Tensor) -> float:
    return float(np.expm1(float(z.abs().max()) * 2**-11 / T)) + 1e-6


@pytest.fixture(scope="module")
def single():
    z = _teacher_logits(0)
    classes = [f"sp{i:04d}" for i in range(C)]
    tl = _stored(z, "global", classes)
    sl = combine_soft_labels([TeacherSpec(tl, 1.0)], list(tl.image_ids), [""] * N, T, k=K)
    return z, sl, tl


def test_soft_labels_are_the_dense_t3_softmax_on_the_kept_classes(single):
    z, sl, tl = single
    dense = torch.softmax(z.double() / T, dim=1).numpy()
    stored = torch.softmax(z.half().double() / T, dim=1).numpy()
    idx = sl.indices.astype(np.int64)
    # the kept classes are the dense distribution's top 32
    assert all(set(row) == set(np.argsort(-dense[i])[:K]) for i, row in enumerate(idx.tolist()))
    assert np.allclose(sl.values, np.take_along_axis(dense, idx, 1), rtol=_rtol_fp16(z), atol=0)
    assert np.allclose(sl.values, np.take_along_axis(stored, idx, 1), rtol=1e-5, atol=0)
    kept = sl.values.astype(np.float64).sum(1)
    assert np.allclose(sl.rest, 1 - kept, atol=1e-6)
    tail = 1 - np.take_along_axis(dense, idx, 1).sum(1)
    assert np.allclose(sl.rest, tail, rtol=_rtol_fp16(z))
    # the point: at 9,000 classes the top 32 hold a small part of the T=3 distribution
    m = soft_label_metrics(sl, [TeacherSpec(tl, 1.0)], [""] * N)
    assert m["kept_mass_shortfall_bound_max"] == 0.0  # one teacher: the kept values are exact
    assert m["topk_mass_mean"] == pytest.approx(kept.mean()) and m["topk_mass_min"] == pytest.approx(kept.min())
    assert 0.01 < kept.mean() < 0.5
    assert sl.bytes_per_sample() == 260 < C * 4 / 100  # never N x C


def _loss_and_grad(s: torch.Tensor, sl, target: str = "topk_with_rest"):
    s = s.clone().requires_grad_(True)
    loss = kd_loss(
        s,
        torch.from_numpy(sl.indices).long(),
        torch.from_numpy(sl.values),
        torch.full((N,), -1),
        T,
        1.0,
        0.0,
        soft_rest=torch.from_numpy(sl.rest),
        target=target,
    )
    loss.backward()
    return loss.detach().double(), s.grad.double()


def test_kd_loss_and_gradients_match_the_dense_k_plus_1_bin_kl(single):
    z, sl, _ = single
    s = torch.randn(N, C, generator=torch.Generator().manual_seed(5)) * 2
    loss, grad = _loss_and_grad(s, sl)
    s64 = s.double().requires_grad_(True)
    p = torch.softmax(s64 / T, 1)
    idx = torch.from_numpy(sl.indices).long()
    q = torch.from_numpy(sl.values).double()
    q_rest = torch.from_numpy(sl.rest).double()
    p_kept = p.gather(1, idx)
    p_rest = 1 - p_kept.sum(1)  # float64: no cancellation worth the name here
    kl = (q * (q.log() - p_kept.log())).sum(1) + q_rest * (q_rest.log() - p_rest.log())
    ref = kl.mean() * T**2
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert (grad - s64.grad).abs().max() <= 1e-5 * s64.grad.abs().max()


def test_kd_loss_gradients_on_the_kept_classes_match_the_dense_kl_with_the_true_tail(single):
    z, sl, _ = single
    s = torch.randn(N, C, generator=torch.Generator().manual_seed(6)) * 2
    loss, grad = _loss_and_grad(s, sl)
    q_full = torch.softmax(z.double() / T, 1)  # the teacher's whole T=3 distribution
    s64 = s.double().requires_grad_(True)
    log_p = torch.log_softmax(s64 / T, 1)
    dense = (q_full * (q_full.log() - log_p)).sum(1).mean() * T**2
    dense.backward()
    idx = torch.from_numpy(sl.indices).long()
    kept = torch.zeros(N, C, dtype=torch.bool).scatter_(1, idx, True)
    # kept classes: (p_c - q_c) * T / B in both; they differ only by the soft labels' fp16 error
    tol = _rtol_fp16(z) * T / N * float(q_full.max()) + 1e-5 * float(s64.grad.abs().max())
    assert (grad - s64.grad)[kept].abs().max() <= tol
    # non-kept classes: the same total per row (the tail's shape is the student's own)
    assert torch.allclose((grad * ~kept).sum(1), (s64.grad * ~kept).sum(1), atol=tol * K)
    # the losses differ by exactly the tail's within-bin KL, which the k + 1 bins cannot see
    p = log_p.detach().exp()
    q_tail, p_tail = q_full * ~kept, p * ~kept
    q_r, p_r = q_tail.sum(1, keepdim=True), p_tail.sum(1, keepdim=True)
    within = (torch.xlogy(q_tail, q_tail / q_r) - torch.xlogy(q_tail, p_tail / p_r)).sum(1)
    gap = (within.mean() * T**2).item()
    assert gap > 0 and loss.item() <= dense.item()
    assert loss.item() + gap == pytest.approx(dense.item(), rel=1e-4)
    # the old renormalised target is another distribution: its loss is not the plan's
    renorm, _ = _loss_and_grad(s, sl, "topk_renormalised")
    assert abs(renorm.item() - loss.item()) > 0.1 * loss.item()


def test_two_teachers_with_different_class_sets_stay_within_the_stated_bound():
    za, zb = _teacher_logits(1), _teacher_logits(1) + torch.randn(N, C) * 0.5
    classes = [f"sp{i:04d}" for i in range(C)]
    a = _stored(za, "global", classes)
    b = _stored(zb[:, 500:], "EU_SW", classes[500:])  # the regional teacher knows fewer species
    specs = [TeacherSpec(a, 0.6), TeacherSpec(b, 0.4)]
    sl = combine_soft_labels(specs, list(a.image_ids), [""] * N, T, k=K)
    m = soft_label_metrics(sl, specs, [""] * N)
    pa = torch.softmax(za.double() / T, 1).numpy()
    pb = np.zeros((N, C))
    pb[:, 500:] = torch.softmax(zb[:, 500:].double() / T, 1).numpy()
    dense = 0.6 * pa + 0.4 * pb  # the plan's mix over the union (b gives 0 to the species it lacks)
    idx = sl.indices.astype(np.int64)
    exact = np.take_along_axis(dense, idx, 1)
    rtol = _rtol_fp16(torch.cat([za, zb], 1))
    # each kept value is the stored part of the mix: never above it, short by at most the bound
    assert (sl.values <= exact * (1 + rtol)).all()
    assert ((exact - sl.values).sum(1) <= m["kept_mass_shortfall_bound_max"] + rtol).all()
    assert np.allclose(sl.values.sum(1) + sl.rest, 1, atol=1e-6)
    assert m["effective_weights"] == [
        {"teachers": ["global", "EU_SW"], "weights": {"global": 0.6, "EU_SW": 0.4}, "samples": N}
    ]
