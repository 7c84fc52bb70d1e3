"""Lead-order disruption: permute the leads of a sample and ask, for each slot, which lead it holds.

Convention: ``x_out[b, s] = x[b, src[b, s]]``; ``src[b, s]`` is the original lead number now sitting in slot
``s``, i.e. the target of the 12-way classification. If ``dest[b, i]`` is the slot that lead ``i`` was moved to,
``src`` is the inverse permutation of ``dest`` (``src[b, dest[b, i]] = i``). Unshuffled samples have the
identity as target. Everything that travels with the leads (reconstruction target, ``lead_present``) must be
gathered with the same ``src``.
"""

from __future__ import annotations

from typing import Literal

import torch


def random_lead_permutation(
    batch: int,
    n_leads: int = 12,
    p: float = 1.0,
    mode: Literal["all", "subset"] = "all",
    subset_range: tuple[int, int] = (2, 12),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``src`` (batch, n_leads) long: a random permutation per sample with probability ``p``, else identity.

    ``mode="all"`` permutes all leads; ``mode="subset"`` draws a subset size from ``subset_range`` and permutes
    only a random subset of that many leads among their own slots (the others stay in place).
    """
    device = torch.device(device) if device is not None else (generator.device if generator else "cpu")
    ident = torch.arange(n_leads, device=device).expand(batch, n_leads)
    if mode == "all":
        perm = torch.rand(batch, n_leads, generator=generator, device=device).argsort(dim=1)
    elif mode == "subset":
        lo, hi = subset_range
        if not 1 <= lo <= hi <= n_leads:
            raise ValueError(f"shuffle subset range must satisfy 1 <= min <= max <= {n_leads}, got {subset_range}")
        k = torch.randint(lo, hi + 1, (batch, 1), generator=generator, device=device)
        chosen_rank = torch.rand(batch, n_leads, generator=generator, device=device).argsort(1).argsort(1)
        chosen = chosen_rank < k
        # keys < 1 for chosen leads (random order / ascending order), >= 2 for the rest (their own position):
        # the first k entries of both sorts list the chosen slots; the rest are the same identity tail.
        rand_key = torch.where(chosen, torch.rand(batch, n_leads, generator=generator, device=device), 2.0 + ident)
        slot_key = torch.where(chosen, ident / n_leads, 2.0 + ident)
        perm = torch.empty_like(ident).scatter_(1, slot_key.argsort(1), rand_key.argsort(1))
    else:
        raise ValueError(f"unknown shuffle mode {mode!r} (use 'all' or 'subset')")
    apply = torch.rand(batch, 1, generator=generator, device=device) < p
    return torch.where(apply, perm, ident)


def apply_lead_permutation(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Gather leads (dim 1) of ``x`` (B, L, ...) by ``src`` (B, L)."""
    idx = src.view(*src.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, idx)


def shuffle_leads(
    x: torch.Tensor,
    p: float = 1.0,
    mode: Literal["all", "subset"] = "all",
    subset_range: tuple[int, int] = (2, 12),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the leads of ``x`` (B, L, T). Returns ``(x_shuffled, target)`` with ``target = src`` (B, L)."""
    src = random_lead_permutation(x.shape[0], x.shape[1], p, mode, subset_range, generator, x.device)
    return apply_lead_permutation(x, src), src
