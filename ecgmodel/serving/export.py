"""TorchScript export (``ecgssl export``): the network of a classifier or encoder on standardised crops.

The file holds ``forward(x, lead_present)``: ``x`` float32 ``(B, 12, input_samples)``, every lead of every crop
already standardised (z-score over time, the standard deviation floored at ``min_std_uv`` microvolts: what
:func:`ecgmodel.data.transforms.standardize` does to int16 microvolt crops), ``lead_present`` bool ``(B, 12)``; it
returns per-crop class probabilities (classifier: sigmoid, or softmax for single-label tasks) or pooled embeddings
(encoder, the contract's pooling). Windowing, cropping and the aggregation of a record's crops stay outside, as the
contract describes; the contract travels inside the file (``torch.jit.load(path, _extra_files={"contract.json":
""})``). Traced with ``torch.jit.trace`` (the batch size is free; the crop length is fixed).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ecgmodel.serving.contract import CONTRACT_FILE, Contract


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, multilabel: bool):
        super().__init__()
        self.model = model
        self.multilabel = multilabel

    def forward(self, x: torch.Tensor, lead_present: torch.Tensor) -> torch.Tensor:
        logits = self.model(x, lead_present)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)


class _Embedding(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, pooling: str):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, x: torch.Tensor, lead_present: torch.Tensor) -> torch.Tensor:
        from ecgmodel.embed import pool

        return pool(self.encoder(x), lead_present, self.pooling)  # type: ignore[arg-type]


def export_torchscript(model: torch.nn.Module, contract: Contract, kind: str, out: str | os.PathLike) -> Path:
    """Trace ``model`` (see module docstring) into ``out`` with the contract embedded; returns the path."""
    net = _Probabilities(model, contract.multilabel) if kind == "classifier" else \
        _Embedding(model, contract.pooling or "mean-max")  # fmt: skip
    net = net.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, len(contract.leads), contract.input_samples, generator=gen)
    lp = torch.ones(2, len(contract.leads), dtype=torch.bool)
    lp[1, len(contract.leads) // 2 :] = False
    with torch.no_grad():
        traced = torch.jit.trace(net, (x, lp), check_trace=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out), _extra_files={CONTRACT_FILE: contract.model_dump_json(indent=1)})
    return out


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, Contract]:
    """(traced module, contract) of an exported file."""
    extra = {CONTRACT_FILE: ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    return module, Contract.model_validate_json(extra[CONTRACT_FILE])
