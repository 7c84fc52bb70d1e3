"""Tiny models in the formats the project writes, for serving tests (random weights, real class lists).

    from helpers_models import write_model_pt
    path = write_model_pt(tmp_path / "model.pt")   # a fine-tuned arrhythmia27 model.pt as finetune saves it
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ecgmodel.data import labels as L
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.downstream.model import DownstreamModel
from ecgmodel.embed import random_encoder

DATA = Path(__file__).resolve().parent / "data" / "physionet"

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


def snomed_store(path) -> str:
    """The bundled real records (3 windows at most) relabelled with scored SNOMED codes, as a Challenge source,
    plus copies with other labels, so a split has every part: real signals, a learnable-or-not task."""
    from ecgmodel.data.signal import harmonise
    from ecgmodel.data.wfdb_io import read_header, read_signal

    codes = L.merged_scored_codes()
    heads = sorted(p for p in DATA.rglob("*.hea") if "records100" not in p.parts)
    batches = []
    for copy in range(4):
        for i, h in enumerate(heads):
            header = read_header(h.with_suffix(""), h.stem)
            hm = harmonise(read_signal(header, h.parent, h.stem), header.sig_name, header.fs, max_windows=1)
            batches.append(WindowBatch.for_record(
                hm.signal, hm.lead_present, hm.window_start, hm.valid_length, hm.qc, record=f"{h.stem}-{copy}",
                source="challenge-2020", database="georgia", dx=[codes[(i + copy) % 3]], patient_id=f"P{copy}{i}"))
    with StoreWriter(path, fs=500, window_samples=5000, chunk_windows=8) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"challenge-2020": {"version": "test"}}, dx_systems={"challenge-2020": "snomed-ct"})
    return str(path)



def registered_classifier(tmp_path: Path) -> tuple[str, dict, dict]:
    """(store, fine-tuning result, registration) of a one-epoch linear probe on :func:`snomed_store`, registered
    as ``ecgssl-arrhythmia27`` (champion when it passes the gate) in the tracking store in force."""
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.models.encoder import EncoderConfig
    from ecgmodel.serving.register import register_classifier
    from tasks.finetune import finetune_task

    store = snomed_store(tmp_path / "store")
    enc = EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=1000, patch_size=50)
    cfg = FinetuneConfig(store=store, init="random", encoder=enc, mode="linear", fraction=1.0, seed=0,
                         threshold_grid=5, optim={"epochs": 1, "batch_size": 16},
                         split={"val_fraction": 0.25, "test_fraction": 0.25})  # fmt: skip
    result = finetune_task.fn(cfg.model_dump(mode="json"), str(tmp_path / "cell"), None, "final")
    return store, result, register_classifier(result, ablation_run_id="abc123", champion=True)
