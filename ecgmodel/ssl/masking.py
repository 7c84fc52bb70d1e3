"""Dynamic random masking on the lead x patch grid.

A NEW mask is drawn every time a sample is drawn (call this per training step; nothing is precomputed). For
each sample a masked fraction is drawn uniformly from ``ratio_range``; each lead of the sample then gets its
own random arrangement of contiguous spans of ``span`` patches covering that fraction, so the same instant
usually stays visible in other leads. Everything runs on the tensor's device, vectorised over (B * leads).

Why hand-written: span masks on a (lead, patch) grid with a per-sample ratio are a few tensor ops; no library
offers them for this layout.
"""

from __future__ import annotations

import math

import torch


def span_counts(ratio: torch.Tensor, n_patches: int, span: int, ratio_range: tuple[float, float]) -> torch.Tensor:
    """Number of spans per row for the drawn ratios, clamped so the masked fraction stays within range."""
    lo, hi = ratio_range
    n_max = n_patches // span
    k_lo = min(math.ceil(lo * n_patches / span - 1e-9), n_max)
    k_hi = max(min(math.floor(hi * n_patches / span + 1e-9), n_max), k_lo)
    return torch.round(ratio * n_patches / span).long().clamp(k_lo, k_hi)


def random_span_mask(
    batch: int,
    n_leads: int,
    n_patches: int,
    ratio_range: tuple[float, float] = (0.3, 0.7),
    span: int = 5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask (batch, n_leads, n_patches), True = patch hidden.

    The masked fraction of a sample is drawn from ``ratio_range`` once per sample (shared by its leads, so the
    sample's difficulty is one number); the positions are drawn independently per lead. Each lead's mask is
    ``k`` non-overlapping runs of ``span`` patches (runs may touch and merge), ``k = round(ratio * P / span)``,
    cyclically shifted by a random offset so that every position is equally likely to be masked.
    """
    lo, hi = ratio_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask ratio range must satisfy 0 <= min <= max <= 1, got {ratio_range}")
    span = max(1, min(span, n_patches))
    device = torch.device(device) if device is not None else (generator.device if generator else "cpu")
    ratio = lo + (hi - lo) * torch.rand(batch, 1, generator=generator, device=device)
    k = span_counts(ratio, n_patches, span, ratio_range).expand(batch, n_leads).reshape(-1, 1)  # (R, 1)
    rows = batch * n_leads
    # Arrange k spans (length `span`) and P - k*span single visible patches in random order: a row has
    # n_items = P - k*(span-1) items; the k with the smallest random scores among them become spans.
    n_items = n_patches - k * (span - 1)
    item = torch.arange(n_patches, device=device).expand(rows, n_patches)
    valid = item < n_items
    scores = torch.rand(rows, n_patches, generator=generator, device=device).masked_fill(~valid, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    is_span = (rank < k) & valid
    length = torch.where(is_span, span, 1) * valid
    start = length.cumsum(dim=1) - length  # first patch covered by each item
    # difference array: +1 where a span starts, -1 where it ends; a running sum > 0 marks masked patches
    delta = torch.zeros(rows, n_patches + 1, dtype=torch.long, device=device)
    ones = is_span.long()
    delta.scatter_add_(1, torch.where(is_span, start, n_patches), ones)
    delta.scatter_add_(1, torch.where(is_span, start + span, n_patches), -ones)
    mask = delta.cumsum(dim=1)[:, :n_patches] > 0
    # random cyclic shift per row: every patch position is masked equally often (no edge bias); a span may
    # wrap around, leaving a partial run at each end of the row
    shift = torch.randint(0, n_patches, (rows, 1), generator=generator, device=device)
    mask = mask.gather(1, (item + shift) % n_patches)
    return mask.view(batch, n_leads, n_patches)
