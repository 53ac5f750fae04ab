"""Phase 4 distillation loss over sparse soft labels:

    loss = kl_weight * KL(q || softmax(s / T)) * T^2 + ce_weight * CE(y, s)

q is the teachers' combined soft label of each sample (top-k, looked up on the
fly by sample index), s the student's logits, y the hard label. The T^2 factor
keeps the soft term's gradients on the same scale as the hard term's (Hinton
et al. 2015). Only a batch x C dense target is ever built."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from shared.distill.soft_labels import SoftLabels


def dense_targets(indices: torch.Tensor, values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Scatter sparse (B, k) soft labels into (B, C); indices of -1 are dropped and
    rows renormalised."""
    keep = indices >= 0
    q = torch.zeros(indices.shape[0], num_classes, dtype=torch.float32, device=indices.device)
    q.scatter_add_(1, indices.clamp(min=0).long(), values.float() * keep)
    return q / q.sum(1, keepdim=True).clamp(min=1e-12)


def kd_loss(
    student_logits: torch.Tensor,
    soft_indices: torch.Tensor,
    soft_values: torch.Tensor,
    hard_labels: torch.Tensor,
    temperature: float,
    kl_weight: float = 0.7,
    ce_weight: float = 0.3,
    has_soft: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plan's distillation loss (batch mean). Samples with has_soft False (no soft
    label) contribute only to the CE term; hard labels of -1 are ignored by CE."""
    s = student_logits.float()
    log_p = F.log_softmax(s / temperature, dim=1)
    q = dense_targets(soft_indices, soft_values, s.shape[1])
    kl_rows = (torch.xlogy(q, q) - q * log_p).sum(1)
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

    Holds only the (N, k) index/value arrays (k=32: 192 bytes a sample), never N x C."""

    def __init__(self, soft_labels: SoftLabels, dataset_image_ids: list[str], student_classes: list[str]):
        pos = {str(s): i for i, s in enumerate(soft_labels.image_ids)}
        self.row = torch.tensor([pos.get(str(s), -1) for s in dataset_image_ids], dtype=torch.long)
        student_pos = {c: i for i, c in enumerate(student_classes)}
        class_map = np.array([student_pos.get(c, -1) for c in soft_labels.classes], dtype=np.int32)
        mapped = class_map[soft_labels.indices]
        self.indices = torch.from_numpy(mapped)
        self.values = torch.from_numpy(soft_labels.values.astype(np.float16))
        self.coverage = float((self.row >= 0).float().mean()) if len(self.row) else 0.0

    def __call__(self, sample_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.row[sample_indices.cpu().long()]
        has = rows >= 0
        safe = rows.clamp(min=0)
        idx = torch.where(has[:, None], self.indices[safe].long(), torch.full_like(self.indices[safe].long(), -1))
        return idx, self.values[safe].float(), has.float()


def make_kd_loss_fn(
    lookup: SoftLabelLookup, temperature: float, kl_weight: float, ce_weight: float
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A trainer loss_fn(logits, labels, sample_indices) for distillation."""

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, sample_indices: torch.Tensor) -> torch.Tensor:
        idx, vals, has = lookup(torch.as_tensor(sample_indices))
        dev = logits.device
        return kd_loss(logits, idx.to(dev), vals.to(dev), labels, temperature, kl_weight, ce_weight, has.to(dev))

    return loss_fn
