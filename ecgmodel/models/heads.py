"""Pretext heads on top of the encoder tokens, and the pretraining model that joins them."""

from __future__ import annotations

import torch
import torch.nn as nn

from ecgmodel.models.encoder import Encoder


class ReconstructionHead(nn.Module):
    """Token (d) -> the ``patch_size`` samples it covers; output (B, L, T)."""

    def __init__(self, d_model: int, patch_size: int):
        super().__init__()
        self.proj = nn.Linear(d_model, patch_size)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        B, L, P, _ = tok.shape
        return self.proj(tok).reshape(B, L, -1)


class LeadHead(nn.Module):
    """Per-slot classifier of the lead number: mean over the slot's tokens -> ``n_leads`` logits."""

    def __init__(self, d_model: int, n_leads: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, n_leads))

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        return self.mlp(tok.mean(dim=2))  # (B, L, n_leads)


class PretrainModel(nn.Module):
    """Encoder + the heads that the pretext mode needs (``joint``, ``mask`` or ``shuffle``)."""

    def __init__(self, encoder: Encoder, mode: str = "joint"):
        super().__init__()
        self.encoder = encoder
        cfg = encoder.cfg
        self.recon_head = ReconstructionHead(cfg.d_model, cfg.patch_size) if mode in ("joint", "mask") else None
        self.lead_head = LeadHead(cfg.d_model, cfg.n_leads) if mode in ("joint", "shuffle") else None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        tok = self.encoder(x, mask)
        recon = self.recon_head(tok) if self.recon_head is not None else None
        logits = self.lead_head(tok) if self.lead_head is not None else None
        return recon, logits
