"""Spatio-temporal transformer encoder over lead x time patch tokens.

Each of the 12 leads is cut into non-overlapping patches of ``patch_size`` samples. ONE linear projection,
shared by all leads, embeds every patch, so nothing in the embedding knows which lead a row came from. Position
information is a learned temporal embedding (patch index) plus a learned SLOT embedding (row index in the input
tensor). The slot embedding describes the position in the tensor, never the true lead identity: when the
leads are shuffled for the spatial pretext task, only the signal itself tells the model which lead sits in a
slot. A pre-LayerNorm transformer then attends over the tokens (fused ``F.scaled_dot_product_attention``
kernels on GPU): jointly over all ``12 * P`` (``attention="joint"``), or divided, each block first along time
within a lead and then across the 12 leads at the same patch position (``attention="divided"``). Divided
attention learns masked reconstruction several times faster: the 12 leads are nearly linear combinations of
each other, and the path from a hidden patch to the same instant in the other leads exists from the first step
instead of having to be found through weak learned positions among all ``12 * P`` tokens.

API (kept stable for fine-tuning):

* ``build_encoder(cfg) -> Encoder``
* ``encoder(x)``: float ``(B, 12, T)`` -> tokens ``(B, 12, P, d)`` with ``P = T // patch_size``
* ``encoder.embed(x)`` -> pooled ``(B, encoder.out_dim)``
* ``encoder.out_dim``; ``EncoderConfig.input_samples`` = crop length the encoder was trained on.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecgmodel.models.dropout import SeededDropout, keep_mask


class EncoderConfig(BaseModel):
    """Architecture of the encoder. Stored with every checkpoint; ``load_encoder`` rebuilds from it."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["transformer", "resnet1d"] = Field(
        "transformer", description="Backbone: lead x time patch transformer, or a 1-D ResNet applied per lead."
    )
    n_leads: int = Field(12, ge=1, description="Input leads (rows of the input tensor), canonical order.")
    input_samples: int = Field(
        2500, ge=1, description="Crop length in samples the encoder is trained on (2500 = 5 s at 500 Hz)."
    )
    patch_size: int = Field(50, ge=1, description="Samples per patch token (per lead).")
    d_model: int = Field(128, ge=8, description="Token width.")
    n_layers: int = Field(4, ge=1, description="Transformer blocks (or ResNet stages for resnet1d).")
    n_heads: int = Field(4, ge=1, description="Attention heads per block.")
    attention: Literal["joint", "divided"] = Field(
        "joint", description="joint = every token attends to all 12 * P tokens; divided = each block attends along "
        "time within a lead, then across the 12 leads at the same patch position (cheaper, and the "
        "same-instant path between leads exists from the first step)."
    )
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of the MLP as a multiple of d_model.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in attention output and MLP.")
    bias: bool = Field(True, description="Bias terms in linear layers and LayerNorms.")

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.input_samples % self.patch_size:
            raise ValueError(
                f"input_samples ({self.input_samples}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.arch == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        return self

    @property
    def n_patches(self) -> int:
        return self.input_samples // self.patch_size


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.dropout_generator: torch.Generator | None = None  # see ecgmodel.models.dropout
        self.resid_drop = SeededDropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if p > 0 and self.dropout_generator is not None:
            # the fused kernel draws its dropout mask from the global generator: spell attention out instead
            att = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
            y = (att * keep_mask(att.shape, p, self.dropout_generator, att.device, att.dtype)) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, N, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = SeededDropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN block on tokens (B, L, P, d): attention (joint over L * P, or divided: time then leads) + MLP."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.divided = cfg.attention == "divided"
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        if self.divided:
            self.ln_lead = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
            self.lead_attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, P, d = x.shape
        if not self.divided:
            h = x.reshape(B, L * P, d)
            x = (h + self.attn(self.ln1(h))).view(B, L, P, d)
        else:
            h = x.reshape(B * L, P, d)  # along time, within each lead
            h = (h + self.attn(self.ln1(h))).view(B, L, P, d).transpose(1, 2).reshape(B * P, L, d)
            h = h + self.lead_attn(self.ln_lead(h))  # across the leads, at the same patch position
            x = h.view(B, P, L, d).transpose(1, 2)
        return x + self.mlp(self.ln2(x))


class ResBlock1d(nn.Module):
    def __init__(self, ch: int, kernel: int = 7):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(ch)
        self.conv2 = nn.Conv1d(ch, ch, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class Encoder(nn.Module):
    """Lead x time token encoder. See the module docstring for the contract.

    ``generator``: every weight is (re)initialised with ``torch.nn.init`` drawing from it (None: torch's global
    generator), so an encoder built in one thread does not depend on what other threads draw."""

    def __init__(self, cfg: EncoderConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.arch == "transformer":
            # one projection shared by all leads: a patch is embedded the same way whichever slot it is in
            self.patch_embed = nn.Linear(cfg.patch_size, d)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        else:
            # the ResNet runs on every lead separately (leads folded into the batch), with shared weights;
            # its final stride-patch_size conv gives one token per patch, like the transformer
            self.stem = nn.Conv1d(1, d, 7, padding=3, bias=False)
            self.res = nn.Sequential(*(ResBlock1d(d) for _ in range(cfg.n_layers)))
            self.patch_embed = nn.Conv1d(d, d, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.n_patches, d))
        self.slot_embed = nn.Parameter(torch.zeros(cfg.n_leads, d))
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.ln_f = nn.LayerNorm(d, bias=cfg.bias)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """All weights from ``generator``: linear N(0, 0.02) (GPT-2 scaled for residual projections), convolutions
        torch's default (kaiming uniform, a=sqrt(5)), embeddings N(0, 0.02), norms 1 / 0."""
        g = generator
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=g)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Conv1d):
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=g)
                    if module.bias is not None:
                        bound = 1 / math.sqrt(module.weight[0].numel())
                        nn.init.uniform_(module.bias, -bound, bound, generator=g)
                elif isinstance(module, nn.LayerNorm | nn.BatchNorm1d):
                    module.reset_parameters()  # ones / zeros: no randomness
            nn.init.normal_(self.pos_embed, std=0.02, generator=g)
            nn.init.normal_(self.slot_embed, std=0.02, generator=g)
            nn.init.normal_(self.mask_token, std=0.02, generator=g)
            if self.cfg.arch == "transformer":
                # GPT-2 style scaled init of residual projections
                for name, p in self.named_parameters():
                    if name.endswith("proj.weight"):
                        nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layers), generator=g)

    @property
    def out_dim(self) -> int:
        return self.cfg.d_model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding: float (B, L, T) -> (B, L, P, d) (no positions yet)."""
        if x.ndim != 3 or x.shape[1] != self.cfg.n_leads:
            raise ValueError(f"expected input (B, {self.cfg.n_leads}, T), got {tuple(x.shape)}")
        B, L, T = x.shape
        ps = self.cfg.patch_size
        if T % ps:
            raise ValueError(f"input length {T} is not a multiple of patch_size {ps}")
        P = T // ps
        if P > self.cfg.n_patches:
            raise ValueError(
                f"input length {T} exceeds the encoder's input_samples {self.cfg.input_samples}; crop first"
            )
        if self.cfg.arch == "transformer":
            return self.patch_embed(x.reshape(B, L, P, ps))
        h = self.res(F.relu(self.stem(x.reshape(B * L, 1, T))))
        return self.patch_embed(h).transpose(1, 2).reshape(B, L, P, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x float (B, L, T); optional ``mask`` bool (B, L, P) of patches to hide -> tokens (B, L, P, d).

        resnet1d: the hidden samples are zeroed BEFORE the convolutions (whose receptive fields cross patch
        borders, so neighbouring tokens would otherwise see them); their tokens are then the mask token too."""
        if mask is not None and self.cfg.arch == "resnet1d":
            B, L, T = x.shape
            ps = self.cfg.patch_size
            x = x.reshape(B, L, T // ps, ps).masked_fill(mask[..., None], 0.0).reshape(B, L, T)
        tok = self.tokenize(x)
        B, L, P, d = tok.shape
        if mask is not None:
            tok = torch.where(mask[..., None], self.mask_token.to(tok.dtype), tok)
        tok = tok + self.pos_embed[:P][None, None] + self.slot_embed[None, :, None]
        if self.cfg.arch == "transformer":
            for block in self.blocks:
                tok = block(tok)
        return self.ln_f(tok)

    def embed(self, x: torch.Tensor, lead_present: torch.Tensor | None = None, pooling: str = "mean") -> torch.Tensor:
        """Pooled features over all tokens (of present leads when ``lead_present`` is given): ``pooling="mean"``
        -> (B, out_dim); ``"meanmax"`` -> (B, 2 * out_dim), the mean then the per-feature max (the linear probe's
        features, :data:`POOLINGS`)."""
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} (use one of {POOLINGS})")
        tok = self(x)
        if lead_present is None:
            mean = tok.mean(dim=(1, 2))
            return mean if pooling == "mean" else torch.cat([mean, tok.amax(dim=(1, 2))], dim=-1)
        w = lead_present.to(tok.dtype)[:, :, None, None]
        mean = (tok * w).sum(dim=(1, 2)) / (w.sum(dim=(1, 2)) * tok.shape[2]).clamp_min(1)
        if pooling == "mean":
            return mean
        absent = ~lead_present.bool()[:, :, None, None]
        peak = tok.masked_fill(absent, float("-inf")).amax(dim=(1, 2))
        return torch.cat([mean, torch.nan_to_num(peak, neginf=0.0)], dim=-1)

    def pooled_dim(self, pooling: str = "mean") -> int:
        return self.out_dim * (2 if pooling == "meanmax" else 1)


#: token poolings of :meth:`Encoder.embed`: mean over tokens (fine-tuning), mean and max concatenated (linear probe)
POOLINGS = ("mean", "meanmax")


def build_encoder(cfg: EncoderConfig | dict, generator: torch.Generator | None = None) -> Encoder:
    """Build an :class:`Encoder` from its config (a model or a plain dict as stored in checkpoints); weights drawn
    from ``generator`` (None: torch's global generator)."""
    if not isinstance(cfg, EncoderConfig):
        cfg = EncoderConfig.model_validate(cfg)
    return Encoder(cfg, generator)
