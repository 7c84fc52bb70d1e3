"""Tiny models in the formats the project writes, for serving tests (random weights, real class lists).

    from helpers_models import write_model_pt
    path = write_model_pt(tmp_path / "model.pt")   # a fine-tuned arrhythmia27 model.pt as finetune saves it
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ecgmodel.data import labels as L
from ecgmodel.downstream.model import DownstreamModel
from ecgmodel.embed import random_encoder

ARCH = {"input_samples": 1000, "patch_size": 50, "d_model": 16, "n_layers": 1, "n_heads": 2, "attention": "divided"}


def write_model_pt(path: Path, task: str = "arrhythmia27", seed: int = 0) -> Path:
    """A fine-tuned-model file in the format ``finetune`` writes (random weights, real classes, spread thresholds)."""
    enc, cfg = random_encoder(ARCH, seed)
    classes = L.merged_scored_codes()
    torch.manual_seed(seed)
    model = DownstreamModel(enc, len(classes), "full")
    torch.nn.init.normal_(model.head.weight, std=0.5)
    thr = [float(t) for t in np.linspace(0.3, 0.7, len(classes))]
    torch.save({"format": "ecgssl-downstream", "task": task, "classes": classes, "thresholds": thr,
                "encoder_config": cfg.model_dump(mode="json"),
                "finetune_config": {"task": task, "mode": "full", "eval_aggregate": "mean",
                                    "optim": {"head_dropout": 0.1}},
                "state_dict": model.state_dict()}, path)  # fmt: skip
    return path
