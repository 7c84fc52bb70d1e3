"""Input transforms shared by pretraining and fine-tuning (torch, on whatever device the batch lives on).

``to_model_input`` turns stored int16 microvolts into the encoder's float input: crop to the encoder's
``input_samples`` and standardise every lead of every sample with statistics computed from that sample itself
(never fixed per-lead constants: those would tell the model which lead sits in a slot).
"""

from __future__ import annotations

from typing import Literal

import torch


def crop_starts(
    batch: int,
    total: int,
    length: int,
    mode: Literal["random", "center", "start"] = "random",
    valid_length: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """First sample of the crop per sample (long, (batch,)), keeping the crop inside the valid (unpadded) part
    of each window when ``valid_length`` is given and long enough."""
    if length > total:
        raise ValueError(f"crop length {length} is longer than the window ({total} samples)")
    limit = torch.full((batch,), total, dtype=torch.long, device=device)
    if valid_length is not None:
        limit = valid_length.to(device=device, dtype=torch.long).clamp(length, total)
    span = limit - length  # largest allowed start
    if mode == "start":
        return torch.zeros(batch, dtype=torch.long, device=device)
    if mode == "center":
        return span // 2
    if mode == "random":
        u = torch.rand(batch, generator=generator, device=device)
        return (u * (span + 1).to(u.dtype)).long().clamp_max(span)
    raise ValueError(f"unknown crop mode {mode!r} (use 'random', 'center' or 'start')")


def crop(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Per-sample crop of (B, L, T) at ``starts`` (B,) -> (B, L, length).

    On accelerators one gather (no host sync); on CPU contiguous slice copies, which are several times faster
    than a gather with a (B, L, length) int64 index."""
    if x.device.type == "cpu":
        return torch.stack([x[i, :, s : s + length] for i, s in enumerate(starts.tolist())])
    idx = starts.to(x.device)[:, None] + torch.arange(length, device=x.device)[None]
    return x.gather(2, idx[:, None, :].expand(x.shape[0], x.shape[1], length))


def standardize(x: torch.Tensor, min_std: float = 10.0, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample, per-lead z-score along time. ``min_std`` (in input units, microvolts) keeps flat or absent
    leads near zero instead of blowing up noise."""
    x = x.float()
    std, mean = torch.std_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) / (std.clamp_min(min_std) + eps)


def to_model_input(
    signal: torch.Tensor,
    length: int | None = None,
    crop_mode: Literal["random", "center", "start"] = "random",
    valid_length: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    min_std: float = 10.0,
) -> torch.Tensor:
    """int16 microvolts (B, 12, T) (or (12, T)) -> standardised float32 (B, 12, length).

    ``length=None`` keeps the full window. ``crop_mode``: ``random`` (training), ``center`` or ``start``
    (evaluation). Statistics for standardisation come from the cropped sample itself.
    """
    squeeze = signal.ndim == 2
    if squeeze:
        signal = signal[None]
    if signal.ndim != 3:
        raise ValueError(f"expected signal (B, leads, T) or (leads, T), got shape {tuple(signal.shape)}")
    B, _, T = signal.shape
    if length is not None and length != T:
        starts = crop_starts(B, T, length, crop_mode, valid_length, generator, signal.device)
        signal = crop(signal, starts, length)
    out = standardize(signal, min_std=min_std)
    return out[0] if squeeze else out
