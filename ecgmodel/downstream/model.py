"""Downstream heads on the encoder: one linear layer on the pooled embedding.

* arrhythmia27: 27 sigmoid outputs (multi-label), trained with class-weighted BCE;
* localization: softmax over the sites, trained with (optionally class-balanced) cross-entropy.

``mode="linear"`` freezes the encoder: no gradients, kept in eval mode even while the head trains.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ecgmodel.models.encoder import Encoder

NO_DECAY_SUFFIXES = ("pos_embed", "slot_embed", "mask_token")


class DownstreamModel(nn.Module):
    def __init__(self, encoder: Encoder, n_classes: int, mode: str = "full", dropout: float = 0.1):
        super().__init__()
        if mode not in ("full", "linear"):
            raise ValueError(f"unknown fine-tuning mode {mode!r} (use 'full' or 'linear')")
        self.encoder = encoder
        self.mode = mode
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, n_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        if mode == "linear":
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DownstreamModel:
        super().train(mode)
        if self.mode == "linear":
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor, lead_present: torch.Tensor | None = None) -> torch.Tensor:
        """float (B, 12, T) -> logits (B, n_classes)."""
        if self.mode == "linear":
            with torch.no_grad():
                z = self.encoder.embed(x, lead_present)
        else:
            z = self.encoder.embed(x, lead_present)
        return self.head(self.dropout(z))

    def param_groups(self, lr: float, encoder_lr_scale: float, weight_decay: float) -> list[dict]:
        """AdamW groups: head at ``lr``; encoder (full mode) at ``lr * encoder_lr_scale``; no decay on 1-D params
        nor on the position / slot embeddings and the mask token (as in pretraining)."""
        groups = []
        parts = [(self.head, lr)]
        if self.mode == "full" and encoder_lr_scale > 0:
            parts.append((self.encoder, lr * encoder_lr_scale))
        for module, group_lr in parts:
            named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            embed = {n for n, _ in named if n.endswith(NO_DECAY_SUFFIXES)}
            decay = [p for n, p in named if p.ndim >= 2 and n not in embed]
            no_decay = [p for n, p in named if p.ndim < 2 or n in embed]
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay})
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]
