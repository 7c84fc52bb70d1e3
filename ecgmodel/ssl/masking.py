"""Dynamic random masking on the lead x patch grid.

A NEW mask is drawn every time a sample is drawn (call this per training step; nothing is precomputed). For
each sample a masked fraction is drawn uniformly from ``ratio_range``, then contiguous spans of ``span``
patches covering that fraction are placed in one of three ways (``mode``):

* ``lead``: each lead gets its own arrangement, so the same instant usually stays visible in other leads. The
  six limb leads have two degrees of freedom (Einthoven/Goldberger), so most hidden limb patches can be rebuilt
  from two visible limb leads at the same instant: the task is largely interpolation across leads.
* ``time``: the same spans are hidden in every lead; nothing at a hidden instant is visible anywhere, so the
  model must predict the signal from its temporal context (a pretext that lead algebra cannot solve).
* ``mixed``: a share ``time_share`` of the masked fraction is spans common to all leads, the rest per lead
  (the union of the two; where they overlap the masked fraction comes out slightly below the drawn one).

:func:`all_lead_mask` marks the instants hidden in every (present) lead, on which
:func:`ecgmodel.ssl.losses.masked_mse` gives the reconstruction error that lead algebra cannot reduce.
Everything runs on the tensor's device, vectorised over (B * leads).

Why hand-written: span masks on a (lead, patch) grid with a per-sample ratio are a few tensor ops; no library
offers them for this layout.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

MaskMode = Literal["lead", "time", "mixed"]


def span_counts(ratio: torch.Tensor, n_patches: int, span: int, ratio_range: tuple[float, float]) -> torch.Tensor:
    """Number of spans per row for the drawn ratios, clamped so the masked fraction stays within range."""
    lo, hi = ratio_range
    n_max = n_patches // span
    k_lo = min(math.ceil(lo * n_patches / span - 1e-9), n_max)
    k_hi = max(min(math.floor(hi * n_patches / span + 1e-9), n_max), k_lo)
    return torch.round(ratio * n_patches / span).long().clamp(k_lo, k_hi)


def _draw_ratios(
    batch: int, n_patches: int, ratio_range: tuple[float, float], span: int,
    generator: torch.Generator | None, device: torch.device | str | None,
) -> tuple[torch.Tensor, int, torch.device]:
    """Checked range, then one masked fraction per sample (B, 1); also the clamped span and the device."""
    lo, hi = ratio_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask ratio range must satisfy 0 <= min <= max <= 1, got {ratio_range}")
    span = max(1, min(span, n_patches))
    device = torch.device(device) if device is not None else (generator.device if generator else "cpu")
    return lo + (hi - lo) * torch.rand(batch, 1, generator=generator, device=device), span, device


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
    ratio, span, device = _draw_ratios(batch, n_patches, ratio_range, span, generator, device)
    k = span_counts(ratio, n_patches, span, ratio_range).expand(batch, n_leads).reshape(-1, 1)  # (R, 1)
    return _span_rows(k, n_patches, span, generator, device).view(batch, n_leads, n_patches)


def _span_rows(
    k: torch.Tensor, n_patches: int, span: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Bool (R, P): row r holds ``k[r]`` spans of ``span`` patches at random non-overlapping places."""
    rows = k.shape[0]
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
    return mask.gather(1, (item + shift) % n_patches)


def span_mask(
    batch: int,
    n_leads: int,
    n_patches: int,
    ratio_range: tuple[float, float] = (0.3, 0.7),
    span: int = 5,
    mode: MaskMode = "lead",
    time_share: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask (batch, n_leads, n_patches), True = patch hidden, placed per ``mode`` (module docstring).

    ``lead`` is :func:`random_span_mask`. ``time`` draws one row per sample and repeats it in every lead.
    ``mixed`` splits the sample's drawn fraction r into ``time_share * r`` of common spans and
    ``(1 - time_share) * r`` of per-lead spans (each at least one span when its share is > 0).
    """
    if mode == "lead":
        return random_span_mask(batch, n_leads, n_patches, ratio_range, span, generator, device)
    if mode == "time":
        return random_span_mask(batch, 1, n_patches, ratio_range, span, generator, device).expand(
            batch, n_leads, n_patches).contiguous()
    if mode != "mixed":
        raise ValueError(f"unknown mask mode {mode!r} (use 'lead', 'time' or 'mixed')")
    if not 0.0 <= time_share <= 1.0:
        raise ValueError(f"mask time_share must be within [0, 1], got {time_share}")
    ratio, span, device = _draw_ratios(batch, n_patches, ratio_range, span, generator, device)
    n_max = n_patches // span
    k_total = span_counts(ratio, n_patches, span, ratio_range)  # (B, 1)
    k_time = torch.round(k_total.float() * time_share).long()
    if 0.0 < time_share < 1.0:  # both kinds present whenever the total allows it
        both = k_total >= 2
        k_time = torch.where(both, torch.minimum(torch.maximum(k_time, torch.ones_like(k_time)), k_total - 1),
                             k_time)
    k_lead = (k_total - k_time).clamp(0, n_max)
    common = _span_rows(k_time, n_patches, span, generator, device)  # (B, P)
    own = _span_rows(k_lead.expand(batch, n_leads).reshape(-1, 1), n_patches, span, generator, device)
    return own.view(batch, n_leads, n_patches) | common[:, None, :]


def all_lead_mask(mask: torch.Tensor, lead_present: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (B, L, P): the patches of ``mask`` whose instant is hidden in every present lead of the sample
    (absent leads carry no information and do not count as visible)."""
    hidden = mask if lead_present is None else mask | ~lead_present.bool()[:, :, None]
    everywhere = hidden.all(dim=1, keepdim=True)
    if lead_present is not None:  # a sample without any present lead has no meaningful instant
        everywhere = everywhere & lead_present.bool().any(dim=1)[:, None, None]
    return mask & everywhere
