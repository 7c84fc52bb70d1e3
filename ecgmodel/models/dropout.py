"""Dropout that draws its masks from a generator the caller owns.

``torch.nn.Dropout`` (and the ``dropout_p`` of ``F.scaled_dot_product_attention``) draw from torch's GLOBAL random
generator, which every thread of the process shares: two fine-tuning cells training in parallel threads then
interleave their draws, and neither is reproducible. :class:`SeededDropout` draws from ``self.generator`` when one is
set (``set_dropout_generator``), on the tensor's device, and behaves like ``nn.Dropout`` otherwise. Inverted dropout:
kept activations are scaled by ``1 / (1 - p)`` in training; identity in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SeededDropout(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            return nn.functional.dropout(x, self.p, training=True)
        return x * keep_mask(x.shape, self.p, self.generator, x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(shape, p: float, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Scaled Bernoulli(1 - p) keep mask of ``shape`` drawn from ``generator`` (which must live on ``device``)."""
    keep = torch.rand(shape, generator=generator, device=device) >= p
    return keep.to(dtype) / (1.0 - p)


def set_dropout_generator(module: nn.Module, generator: torch.Generator | None) -> None:
    """Point every :class:`SeededDropout` (and every module with a ``dropout_generator`` slot) of ``module`` at
    ``generator`` (None: torch's global generator again)."""
    for m in module.modules():
        if isinstance(m, SeededDropout):
            m.generator = generator
        elif hasattr(m, "dropout_generator"):
            m.dropout_generator = generator
