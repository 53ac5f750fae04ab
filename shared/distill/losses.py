"""Phase 4 distillation loss over sparse soft labels:

    loss = kl_weight * KL(q || p) * T^2 + ce_weight * CE(y, s)

q is the teachers' combined soft label of each sample (looked up on the fly by
sample index), p the student's softmax(s / T), y the hard label. The T^2 factor
keeps the soft term's gradients on the same scale as the hard term's (Hinton
et al. 2015). Two targets (student config distillation.target, KD_TARGETS):

- topk_with_rest (default): q is the plan's T distribution over k + 1 bins, the
  k kept classes' exact probabilities and one bin for every other class (their
  summed mass, `rest`); p is the student's distribution over the same bins, its
  rest bin logsumexp over the non-kept logits (stable when the rest is tiny or
  almost all). On a kept class the gradient is (p_c - q_c) / T, exactly the dense
  KL's against the teacher's full distribution; over the non-kept classes the
  gradients sum to the dense ones' sum, spread in proportion to the student's own
  tail (the teacher's tail shape is not stored).
- topk_renormalised: the kept values renormalised to sum to 1 and compared with
  p over all classes, as before the rest bin existed (a much sharper target than
  the plan's at 9,000 classes). With one teacher it is the old target exactly; with
  several it renormalises their exact mix, where the old soft labels mixed each
  teacher's renormalised top-k (the two differ when the teachers' kept masses do).

Only (batch, C) student-side tensors are built, never N x C."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from shared.config.student import KD_TARGETS
from shared.distill.soft_labels import SoftLabels


def dense_targets(indices: torch.Tensor, values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Scatter sparse (B, k) soft labels into (B, C); indices of -1 are dropped and
    rows renormalised (the topk_renormalised target)."""
    keep = indices >= 0
    q = torch.zeros(indices.shape[0], num_classes, dtype=torch.float32, device=indices.device)
    q.scatter_add_(1, indices.clamp(min=0).long(), values.float() * keep)
    return q / q.sum(1, keepdim=True).clamp(min=1e-12)


def kl_with_rest(
    student_logits: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, rest: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(B,) KL(q || p) over k + 1 bins: the kept classes `indices` (B, k) with target
    probabilities `values`, and one bin for all other classes with target mass `rest` (B,).
    A kept index of -1 (a class the student lacks, where its probability is 0) adds its
    value to the rest bin. Duplicated indices must carry value 0 (padding)."""
    z = student_logits.float() / temperature
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    valid = indices >= 0
    safe = indices.clamp(min=0).long()
    q = values.float() * valid
    q_rest = rest.float() + (values.float() * ~valid).sum(1)
    log_p = torch.gather(z, 1, safe) - lse
    # scatter_add: a -1 entry (clamped to 0) must not unmark a kept class 0
    kept = torch.zeros_like(z).scatter_add_(1, safe, valid.to(z.dtype)) > 0
    nothing_left = kept.all(1)  # every class kept: no rest bin (its mass is 0)
    tail = z.masked_fill(kept, float("-inf")).masked_fill(nothing_left[:, None], 0.0)
    log_p_rest = torch.logsumexp(tail, dim=1) - lse[:, 0]
    kl_kept = (torch.xlogy(q, q) - q * log_p).sum(1)
    kl_rest = torch.xlogy(q_rest, q_rest) - q_rest * log_p_rest
    return kl_kept + torch.where(nothing_left, torch.zeros_like(kl_rest), kl_rest)


def kl_renormalised(
    student_logits: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(B,) KL(q' || p) with q' the kept values renormalised to 1, p over all classes."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    q = dense_targets(indices, values, student_logits.shape[1])
    return (torch.xlogy(q, q) - q * log_p).sum(1)


def kd_loss(
    student_logits: torch.Tensor,
    soft_indices: torch.Tensor,
    soft_values: torch.Tensor,
    hard_labels: torch.Tensor,
    temperature: float,
    kl_weight: float = 0.7,
    ce_weight: float = 0.3,
    has_soft: torch.Tensor | None = None,
    soft_rest: torch.Tensor | None = None,
    target: str = "topk_with_rest",
) -> torch.Tensor:
    """The plan's distillation loss (batch mean). soft_rest: each row's rest mass (None: what
    the kept values leave, 1 - their sum). Samples with has_soft False (no soft label)
    contribute only to the CE term; hard labels of -1 are ignored by CE."""
    if target not in KD_TARGETS:
        raise ValueError(f"kd_loss: target {target!r} is not one of {', '.join(KD_TARGETS)}")
    s = student_logits.float()
    if target == "topk_with_rest":
        if soft_rest is None:
            soft_rest = (1.0 - (soft_values.float() * (soft_indices >= 0)).sum(1)).clamp(min=0.0)
        kl_rows = kl_with_rest(s, soft_indices, soft_values, soft_rest, temperature)
    else:
        kl_rows = kl_renormalised(s, soft_indices, soft_values, temperature)
    if has_soft is not None:
        kl = (kl_rows * has_soft).sum() / has_soft.sum().clamp(min=1)
    else:
        kl = kl_rows.mean()
    loss = kl_weight * kl * temperature**2
    if ce_weight:
        valid = hard_labels >= 0
        if valid.any():
            loss = loss + ce_weight * F.cross_entropy(s[valid], hard_labels[valid])
    return loss


class SoftLabelLookup:
    """Dataset sample index -> its sparse soft-label row, in the student's class order.

    Holds only the (N, k) index/value arrays and the (N,) rest (k=32: 260 bytes a sample),
    never N x C."""

    def __init__(self, soft_labels: SoftLabels, dataset_image_ids: list[str], student_classes: list[str]):
        pos = {str(s): i for i, s in enumerate(soft_labels.image_ids)}
        self.row = torch.tensor([pos.get(str(s), -1) for s in dataset_image_ids], dtype=torch.long)
        student_pos = {c: i for i, c in enumerate(student_classes)}
        class_map = np.array([student_pos.get(c, -1) for c in soft_labels.classes], dtype=np.int32)
        mapped = class_map[soft_labels.indices]
        self.indices = torch.from_numpy(mapped)
        self.values = torch.from_numpy(soft_labels.values.astype(np.float32))
        self.rest = torch.from_numpy(np.asarray(soft_labels.rest, np.float32))
        self.coverage = float((self.row >= 0).float().mean()) if len(self.row) else 0.0

    def __call__(self, sample_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, values, has_soft) of the samples; rest_of gives their rest bins."""
        rows = self.row[sample_indices.cpu().long()]
        has = rows >= 0
        safe = rows.clamp(min=0)
        idx = torch.where(has[:, None], self.indices[safe].long(), torch.full_like(self.indices[safe].long(), -1))
        return idx, self.values[safe].float(), has.float()

    def rest_of(self, sample_indices: torch.Tensor) -> torch.Tensor:
        """(B,) the rest bin of the samples' soft labels (0 where a sample has none)."""
        rows = self.row[sample_indices.cpu().long()]
        return torch.where(rows >= 0, self.rest[rows.clamp(min=0)], torch.zeros(len(rows)))


def make_kd_loss_fn(
    lookup: SoftLabelLookup,
    temperature: float,
    kl_weight: float,
    ce_weight: float,
    target: str = "topk_with_rest",
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A trainer loss_fn(logits, labels, sample_indices) for distillation."""
    if target not in KD_TARGETS:
        raise ValueError(f"distillation target {target!r} is not one of {', '.join(KD_TARGETS)}")

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, sample_indices: torch.Tensor) -> torch.Tensor:
        sample_indices = torch.as_tensor(sample_indices)
        idx, vals, has = lookup(sample_indices)
        rest = lookup.rest_of(sample_indices)
        dev = logits.device
        return kd_loss(
            logits,
            idx.to(dev),
            vals.to(dev),
            labels,
            temperature,
            kl_weight,
            ce_weight,
            has.to(dev),
            rest.to(dev),
            target,
        )

    return loss_fn
