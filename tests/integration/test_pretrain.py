"""End to end on real ECGs: a store built from the shared PhysioNet mirror, smoke-sized pretraining, MLflow
logging and registration, loading the registered encoder back, and the Prefect flow resuming a run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgmodel.data.signal import harmonise
from ecgmodel.data.store import StoreWriter, WindowBatch, open_store
from ecgmodel.data.wfdb_io import RecordError, read_header, read_signal
from ecgmodel.models.encoder import Encoder
from ecgmodel.train.checkpoint import load_encoder

FAST = {"run.progress": False, "run.device": "cpu"}  # the smoke preset itself, on the CPU


def mirror_headers(mirror: Path) -> list[Path]:
    return sorted(p for p in mirror.rglob("*.hea") if "records100" not in p.parts)


def build_store(heads: list[Path], path: Path) -> Path:
    """Windows of real records from the mirror (all databases), through the library's reader and harmoniser."""
    n = 0
    with StoreWriter(path, fs=500, window_samples=5000, chunk_windows=16, meta_chunk=256, durable=False) as w:
        for h in heads:
            try:
                header = read_header(h.with_suffix(""), h.stem)
                sig = read_signal(header, h.parent, h.stem)
                hm = harmonise(sig, header.sig_name, header.fs, max_windows=2)
            except (RecordError, ValueError):
                continue  # records the ingest rejects are not needed here
            w.append(WindowBatch.for_record(hm.signal, hm.lead_present, hm.window_start, hm.valid_length, hm.qc,
                                            record=h.stem, source="mirror", database=h.parts[-3]))  # fmt: skip
            n += 1
        w.commit(sources={"mirror": {"version": "test", "base_url": "", "records": n}}, quarantine=[])
    return path


@pytest.fixture(scope="module")
def stores(physionet_mirror, tmp_path_factory):
    """Training store (~400 records) and a held-out store of other records (every 6th header of the mirror)."""
    heads = mirror_headers(physionet_mirror)
    root = tmp_path_factory.mktemp("pretrain")
    train_store = build_store([h for i, h in enumerate(heads) if i % 6][:400], root / "train")
    heldout_store = build_store([h for i, h in enumerate(heads) if i % 6 == 0][:100], root / "heldout")
    assert open_store(train_store).n >= 300 and open_store(heldout_store).n >= 64
    return train_store, heldout_store


@pytest.fixture(scope="module")
def real_store(stores):
    return stores[0]


@torch.no_grad()
def heldout_metrics(cfg, ckpt: Path, store: Path, batches: int = 4) -> dict[str, float]:
    """Pretext metrics of the trained model on windows it never saw (centre crop, every sample shuffled), with
    the zero-prediction MSE on the same masked patches as the baseline to beat."""
    from ecgmodel.data.loader import make_loader
    from ecgmodel.models.encoder import build_encoder
    from ecgmodel.models.heads import PretrainModel
    from ecgmodel.ssl.losses import masked_mse
    from ecgmodel.train.checkpoint import load_checkpoint
    from ecgmodel.train.pretrain import pretext_step

    model = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    model.eval()
    loader = make_loader(str(store), "memory", cfg.data.batch_size, "cpu", seed=1)
    gen = torch.Generator().manual_seed(7)
    sums = {"recon_loss": 0.0, "zero_mse": 0.0, "lead_ce": 0.0, "lead_acc": 0.0}
    for _ in range(batches):
        b = loader.next()
        out = pretext_step(model, b.signal, b.lead_present, b.valid_length, cfg, gen, "center", shuffle_prob=1.0)
        out["zero_mse"] = masked_mse(torch.zeros_like(out["input"]), out["input"], out["mask"], out["weight"])
        for k in sums:
            sums[k] += float(out[k]) / batches
    return sums


@pytest.mark.slow
def test_smoke_pretraining_learns_both_pretext_tasks(stores, tmp_path):
    from ecgmodel.config import apply_overrides
    from ecgmodel.train.config import preset
    from ecgmodel.train.pretrain import train

    real_store, heldout_store = stores
    cfg = apply_overrides(preset("smoke"), FAST)
    res = train(cfg, real_store, tmp_path / "run")
    hist = res["history"]
    first = hist[0]  # mean over the first 10 steps
    last = {k: float(np.mean([h[k] for h in hist[-3:]])) for k in ("recon_loss", "lead_ce", "lead_acc")}
    held = heldout_metrics(cfg, Path(res["checkpoint"]), heldout_store)
    summary = {"first": first, "last": last, "heldout": held}
    # reconstruction: predicting zeros scores ~1.0 on standardised signals; the hidden patches must be
    # rebuilt from context (the same instant in the other leads), well below both the start and that baseline
    assert last["recon_loss"] < 0.75 * first["recon_loss"], summary
    assert held["recon_loss"] < 0.8 * held["zero_mse"], summary
    # lead numbers: cross-entropy well below ln(12) = 2.48 (chance), accuracy far above 1/12 on unseen windows
    assert first["lead_ce"] > 0.9 * math.log(12), summary
    assert last["lead_ce"] < 0.75 * math.log(12) and held["lead_ce"] < 0.8 * math.log(12), summary
    assert last["lead_acc"] > 0.3 and held["lead_acc"] > 0.3, summary  # chance: 1/12
    # MLflow: params, metrics, artifacts, tags, registered model that loads back as our Encoder
    import mlflow

    run = mlflow.get_run(res["run_id"])
    assert run.data.params["encoder.d_model"] == str(cfg.encoder.d_model)
    assert run.data.tags["ecgssl.store_hash"] == open_store(real_store).hash
    assert {"loss", "recon_loss", "lead_ce", "lead_acc", "lr", "samples_per_s"} <= set(run.data.metrics)
    files = {a.path for d in ("plots", "encoder") for a in mlflow.MlflowClient().list_artifacts(res["run_id"], d)}
    assert {"plots/reconstruction.png", "plots/lead_confusion.png", "encoder/encoder.pt"} <= files
    assert res["encoder_uri"].startswith("models:/ecgssl-encoder/")
    enc, ecfg = load_encoder(res["encoder_uri"])
    local, _ = load_encoder(res["encoder_path"])
    assert isinstance(enc, Encoder) and ecfg == cfg.encoder
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), local.state_dict().values(), strict=True))
    feats = enc.eval().embed(torch.randn(2, 12, cfg.encoder.input_samples))
    assert feats.shape == (2, enc.out_dim) and np.isfinite(feats.detach().numpy()).all()


@pytest.mark.slow
def test_flow_and_cli_resume_from_own_checkpoint(real_store, tmp_path, capsys):
    from flows.pretrain import pretrain_flow, register_cli

    out = tmp_path / "flow"
    over = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in FAST.items()]
    over += ["encoder.d_model=32", "encoder.n_layers=1", "optim.max_steps=10", "run.ckpt_every=5"]
    # an "interrupted" earlier run left a checkpoint at step 5
    from ecgmodel.train.pretrain import build_config, train

    train(build_config("smoke", over), real_store, out, stop_after=5)
    res = pretrain_flow(store=str(real_store), preset="smoke", overrides=over, out=str(out))
    assert Path(res["checkpoint"]).is_file() and Path(res["encoder_path"]).is_file()
    assert res["encoder_uri"].startswith("models:/") and res["run_id"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]  # resumed at 5, did not start over
    # the CLI parses into the same flow parameters
    import argparse

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["pretrain", "--store", str(real_store), "--out", str(out), "--set", "run.mlflow=false",
                              *sum((["--set", o] for o in over), [])])  # fmt: skip
    assert args.func(args) == 0  # finished run: nothing to do, still reports where things are
    assert "checkpoint:" in capsys.readouterr().out
    with pytest.raises(KeyError, match="unknown config key"):
        pretrain_flow(store=str(real_store), overrides={"optim.nope": 1}, out=str(tmp_path / "bad"))
