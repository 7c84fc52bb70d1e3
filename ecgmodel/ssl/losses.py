"""Pretext losses: MSE on masked patches only, and per-slot lead-number cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(
    recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over masked patches only.

    recon/target float (B, L, T); mask bool (B, L, P) with T = P * patch; weight optional (B, L) (0 for absent
    leads). Returns a scalar (0 when nothing is masked).
    """
    B, L, P = mask.shape
    err = (recon.float() - target.float()).pow(2).view(B, L, P, -1).mean(dim=3)  # per patch
    w = mask.float()
    if weight is not None:
        w = w * weight.float()[:, :, None]
    return (err * w).sum() / w.sum().clamp_min(1.0)


def lead_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """12-way cross-entropy per slot; logits (B, L, C), target (B, L) long, weight optional (B, L)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    if weight is None:
        return ce.mean()
    w = weight.float().flatten()
    return (ce * w).sum() / w.sum().clamp_min(1.0)


@torch.no_grad()
def lead_accuracy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of (present) slots whose lead number is predicted right."""
    hit = (logits.argmax(-1) == target).float()
    if weight is None:
        return hit.mean()
    w = weight.float()
    return (hit * w).sum() / w.sum().clamp_min(1.0)
