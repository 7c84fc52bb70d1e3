"""xresnet1d: the from-scratch 1-D CNN of the PTB-XL benchmark, the supervised reference arm of fine-tuning.

Strodthoff, Wagner, Schaeffter, Samek, "Deep Learning for ECG Analysis: Benchmarks and Insights from PTB-XL",
IEEE JBHI 25(5), 2021 (arXiv:2004.13701, 2020), whose best-ranked models are 1-D adaptations of fastai's xresnet
(He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019). The block
design follows the benchmark's ``xresnet1d``:

* stem: three conv-BN-ReLU layers (widths ``stem``, the first with stride 2), then max-pool (3, stride 2);
* stages of residual blocks (``layers`` blocks per stage, widths ``widths`` x ``expansion``): bottleneck
  (1 - k - 1 convolutions) when ``expansion`` is 4, basic (k - k) when 1; the first block of every stage but the
  first halves the length (stride 2 in the k-conv); shortcut = average-pool (tweak D) then a 1x1 conv-BN where the
  width changes; the last BN of every block starts at zero (the block starts as the identity);
* head: concatenated adaptive average and max pooling over time -> BN -> dropout(p/2) -> Linear(``head_hidden``)
  -> ReLU -> BN -> dropout(p) -> Linear(n_classes) (fastai's ``create_head``, ``lin_ftrs=[128]``, ``ps=0.5``);
* weights: kaiming normal for convolutions and linear layers, biases 0 (fastai ``init_cnn``).

The default config is ``xresnet1d50`` (layers 3-4-6-3, bottleneck, kernel 5; 19 M parameters with 12 leads). The
benchmark fed it 2.5 s crops at 100 Hz; here it reads the crops the transformer arm reads (500 Hz, the encoder's
``input_samples``), i.e. 5x the samples per second: the same architecture with a receptive field 5x shorter in
time, and about 5x the compute per crop. Input contract as the transformer
fine-tuning uses it: standardised 12-lead crops ``(B, 12, T)`` plus ``lead_present`` ``(B, 12)`` (absent leads are
zeroed). Every weight and every dropout mask can be drawn from a caller-owned generator (``generator=``,
:func:`ecgmodel.models.dropout.set_dropout_generator`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecgmodel.models.dropout import SeededDropout


class XResNet1dConfig(BaseModel):
    """Architecture of an :class:`XResNet1d` (default: the benchmark's xresnet1d50)."""

    model_config = ConfigDict(extra="forbid")

    n_leads: int = Field(12, ge=1, description="Input channels (leads, canonical order).")
    layers: list[int] = Field([3, 4, 6, 3], min_length=1, description="Residual blocks per stage (50: 3-4-6-3).")
    widths: list[int] = Field([64, 128, 256, 512], min_length=1, description="Block width per stage (before expansion).")
    expansion: Literal[1, 4] = Field(4, description="4: bottleneck blocks (xresnet1d50/101); 1: basic blocks (18/34).")
    stem: list[int] = Field([32, 32, 64], min_length=1, description="Widths of the stem's conv layers.")
    kernel_size: int = Field(5, ge=1, description="Kernel of the stem and the blocks' k-convolutions (odd).")
    head_hidden: int = Field(128, ge=1, description="Width of the head's hidden layer.")
    head_dropout: float = Field(0.5, ge=0, lt=1, description="Head dropout p (p/2 before the hidden layer).")

    @model_validator(mode="after")
    def _check(self) -> XResNet1dConfig:
        if len(self.layers) != len(self.widths):
            raise ValueError(f"layers {self.layers} and widths {self.widths} need one entry per stage each")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {self.kernel_size}")
        if self.stem[-1] % self.expansion:
            raise ValueError(f"the last stem width ({self.stem[-1]}) must be a multiple of expansion ({self.expansion})")
        return self


def _conv_bn(ni: int, nf: int, ks: int, stride: int = 1, act: bool = True, zero_bn: bool = False) -> nn.Sequential:
    bn = nn.BatchNorm1d(nf)
    bn.zero_init = zero_bn  # type: ignore[attr-defined]  # read by reset_parameters
    layers: list[nn.Module] = [nn.Conv1d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False), bn]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock1d(nn.Module):
    """xresnet residual block (basic when ``expansion`` is 1, bottleneck when 4)."""

    def __init__(self, expansion: int, ni: int, nf: int, stride: int, ks: int):
        super().__init__()
        nh, ni, nf = nf, ni * expansion, nf * expansion
        if expansion == 1:
            convs = [_conv_bn(ni, nh, ks, stride), _conv_bn(nh, nf, ks, act=False, zero_bn=True)]
        else:
            convs = [_conv_bn(ni, nh, 1), _conv_bn(nh, nh, ks, stride), _conv_bn(nh, nf, 1, act=False, zero_bn=True)]
        self.convs = nn.Sequential(*convs)
        idpath: list[nn.Module] = []
        if stride != 1:
            idpath.append(nn.AvgPool1d(stride, ceil_mode=True))
        if ni != nf:
            idpath.append(_conv_bn(ni, nf, 1, act=False))
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.idpath(x))


class XResNet1d(nn.Module):
    """Body (``encoder``: stem + stages) and head (``head``: concat pooling -> MLP -> logits). See module docstring.

    ``forward(x, lead_present=None)``: float (B, n_leads, T) -> logits (B, n_classes)."""

    def __init__(self, cfg: XResNet1dConfig, n_classes: int, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.n_classes = n_classes
        ks = cfg.kernel_size
        stem: list[nn.Module] = []
        sizes = [cfg.n_leads, *cfg.stem]
        for i in range(len(cfg.stem)):
            stem.append(_conv_bn(sizes[i], sizes[i + 1], ks, stride=2 if i == 0 else 1))
        stem.append(nn.MaxPool1d(3, stride=2, padding=1))
        e = cfg.expansion
        block_in = [cfg.stem[-1] // e, *cfg.widths]
        stages = [
            nn.Sequential(*(ResBlock1d(e, block_in[i] if j == 0 else block_in[i + 1], block_in[i + 1],
                                       stride=(1 if i == 0 else 2) if j == 0 else 1, ks=ks)
                            for j in range(n)))
            for i, n in enumerate(cfg.layers)
        ]  # fmt: skip
        self.encoder = nn.Sequential(*stem, *stages)
        self.out_dim = cfg.widths[-1] * e
        p = cfg.head_dropout
        self.head = nn.Sequential(
            nn.BatchNorm1d(2 * self.out_dim), SeededDropout(p / 2), nn.Linear(2 * self.out_dim, cfg.head_hidden),
            nn.ReLU(inplace=True), nn.BatchNorm1d(cfg.head_hidden), SeededDropout(p),
            nn.Linear(cfg.head_hidden, n_classes),
        )  # fmt: skip
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """fastai ``init_cnn`` from ``generator``: kaiming normal weights, zero biases; BN 1 / 0 (0 / 0 for the
        last BN of a residual branch)."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv1d | nn.Linear):
                    nn.init.kaiming_normal_(m.weight, generator=generator)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm1d):
                    m.reset_parameters()
                    if getattr(m, "zero_init", False):
                        nn.init.zeros_(m.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, x: torch.Tensor, lead_present: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenated average and max pooling of the body's last feature map: (B, 2 * out_dim)."""
        if lead_present is not None:
            x = x * lead_present.to(x.dtype)[:, :, None]
        h = self.encoder(x)
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)

    def forward(self, x: torch.Tensor, lead_present: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.cfg.n_leads:
            raise ValueError(f"expected input (B, {self.cfg.n_leads}, T), got {tuple(x.shape)}")
        return self.head(self.embed(x, lead_present))

    def param_groups(self, lr: float, encoder_lr_scale: float, weight_decay: float) -> list[dict]:
        """AdamW groups as :meth:`ecgmodel.downstream.model.DownstreamModel.param_groups`: head at ``lr``, body at
        ``lr * encoder_lr_scale`` (the same schedule grid serves every arm), no decay on 1-D params (BN, biases)."""
        groups = []
        for module, group_lr in ((self.head, lr), (self.encoder, lr * encoder_lr_scale)):
            if group_lr <= 0:
                continue
            named = list(module.named_parameters())
            groups.append({"params": [p for _, p in named if p.ndim >= 2], "lr": group_lr, "weight_decay": weight_decay})
            groups.append({"params": [p for _, p in named if p.ndim < 2], "lr": group_lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]
