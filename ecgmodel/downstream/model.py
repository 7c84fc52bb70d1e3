"""Downstream models and their saved form.

* :class:`DownstreamModel`: the (pretrained or random) transformer encoder + one linear layer on the pooled
  embedding: sigmoid outputs for the multi-label tasks (class-weighted BCE), softmax for localization
  (cross-entropy). ``mode="linear"`` freezes the encoder (no gradients, eval mode even while the head trains) and
  pools mean+max (the linear probe's features, :mod:`ecgmodel.downstream.probe`); full fine-tuning pools the mean.
* the supervised reference arm is an :class:`ecgmodel.models.xresnet1d.XResNet1d` trained from scratch.
* :func:`load_downstream_model` rebuilds either from the ``model.pt`` that fine-tuning writes.

``model.pt`` keys: ``format`` ("ecgssl-downstream"), ``arch`` ("transformer" | "xresnet1d"; absent in older files =
transformer), ``task``, ``classes``, ``thresholds`` (multi-label: per class; None for localization),
``input_samples`` (crop length), ``pooling`` (transformer: "mean" | "meanmax"), ``mode``, ``encoder_config``
(transformer) or ``model_config`` (xresnet1d), ``finetune_config``, ``state_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ecgmodel.models.dropout import SeededDropout
from ecgmodel.models.encoder import POOLINGS, Encoder, build_encoder

NO_DECAY_SUFFIXES = ("pos_embed", "slot_embed", "mask_token")
#: the value of model.pt's "format" key
MODEL_FORMAT = "ecgssl-downstream"


class DownstreamModel(nn.Module):
    def __init__(self, encoder: Encoder, n_classes: int, mode: str = "full", dropout: float = 0.1,
                 pooling: str = "mean", generator: torch.Generator | None = None):  # fmt: skip
        super().__init__()
        if mode not in ("full", "linear"):
            raise ValueError(f"unknown fine-tuning mode {mode!r} (use 'full' or 'linear')")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} (use one of {POOLINGS})")
        self.encoder = encoder
        self.mode = mode
        self.pooling = pooling
        self.dropout = SeededDropout(dropout)
        self.head = nn.Linear(encoder.pooled_dim(pooling), n_classes)
        with torch.no_grad():
            nn.init.normal_(self.head.weight, std=0.01, generator=generator)
            nn.init.zeros_(self.head.bias)
        if mode == "linear":
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def train(self, mode: bool = True) -> DownstreamModel:
        super().train(mode)
        if self.mode == "linear":
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor, lead_present: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled embedding the head reads (B, head.in_features)."""
        return self.encoder.embed(x, lead_present, pooling=self.pooling)

    def forward(self, x: torch.Tensor, lead_present: torch.Tensor | None = None) -> torch.Tensor:
        """float (B, 12, T) -> logits (B, n_classes)."""
        if self.mode == "linear":
            with torch.no_grad():
                z = self.features(x, lead_present)
        else:
            z = self.features(x, lead_present)
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


def load_downstream_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned model from its ``model.pt`` (see the module docstring for the keys).

    Returns ``(model, meta)``: the model in eval mode with the saved weights (a :class:`DownstreamModel` or an
    :class:`~ecgmodel.models.xresnet1d.XResNet1d`; both map ``(x (B, 12, input_samples), lead_present (B, 12))`` to
    logits), and every key of the file except ``state_dict``, with ``arch`` and ``input_samples`` always filled."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a fine-tuned ecgssl model (rule: a model.pt written by ecgssl finetune, "
                         f"format {MODEL_FORMAT!r})")
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    arch = meta.setdefault("arch", "transformer")
    n_classes = len(meta["classes"])
    if arch == "xresnet1d":
        from ecgmodel.models.xresnet1d import XResNet1d, XResNet1dConfig

        model: nn.Module = XResNet1d(XResNet1dConfig.model_validate(meta["model_config"]), n_classes)
    elif arch == "transformer":
        enc_cfg = meta["encoder_config"]
        meta.setdefault("input_samples", int(enc_cfg["input_samples"]))
        meta.setdefault("pooling", "mean")
        mode = meta.get("mode") or (meta.get("finetune_config") or {}).get("mode", "full")
        model = DownstreamModel(build_encoder(enc_cfg), n_classes, mode, pooling=meta["pooling"])
    else:
        raise ValueError(f"{path}: unknown arch {arch!r} (rule: 'transformer' or 'xresnet1d')")
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, meta
