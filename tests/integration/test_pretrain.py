"""End to end on real ECGs: a store built from the shared PhysioNet mirror, smoke-sized pretraining, MLflow
logging and registration, loading the registered encoder back, and the Prefect flow resuming a run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgmodel.data.signal import harmonise
from ecgmodel.data.store import StoreWriter, WindowBatch, open_store
from ecgmodel.data.wfdb_io import RecordError, read_header, read_signal
from ecgmodel.models.encoder import Encoder
from ecgmodel.train.checkpoint import load_encoder

FAST = {
    "encoder.input_samples": 1250, "encoder.patch_size": 50, "encoder.d_model": 64, "encoder.n_layers": 3,
    "encoder.n_heads": 4, "data.batch_size": 32, "optim.lr": 0.002, "optim.warmup_steps": 10,
    "run.log_every": 10, "run.ckpt_every": 50, "run.progress": False, "run.device": "cpu",
}  # fmt: skip


def build_store(mirror: Path, path: Path, max_records: int = 400) -> Path:
    """Windows of real records from the mirror (all databases), through the library's reader and harmoniser."""
    heads = sorted(p for p in mirror.rglob("*.hea") if "records100" not in p.parts)[:max_records]
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
def real_store(physionet_mirror, tmp_path_factory):
    path = build_store(physionet_mirror, tmp_path_factory.mktemp("pretrain") / "store")
    assert open_store(path).n >= 300
    return path


@pytest.mark.slow
def test_smoke_pretraining_learns_both_pretext_tasks(real_store, tmp_path):
    from ecgmodel.config import apply_overrides
    from ecgmodel.train.config import preset
    from ecgmodel.train.pretrain import train

    cfg = apply_overrides(preset("smoke"), {**FAST, "optim.max_steps": 250})
    res = train(cfg, real_store, tmp_path / "run")
    hist = res["history"]
    first = hist[0]  # mean over the first 10 steps
    last = {k: float(np.mean([h[k] for h in hist[-3:]])) for k in ("recon_loss", "lead_ce", "lead_acc")}
    # predicting zeros scores ~1.0 on standardised signals: the model must use context to get below it
    assert last["recon_loss"] < 0.95 * first["recon_loss"], hist
    assert last["lead_ce"] < 0.8 * first["lead_ce"], hist
    assert last["lead_acc"] > 0.3 and res["metrics"]["eval_lead_acc"] > 0.25, res["metrics"]  # chance: 1/12
    # MLflow: params, metrics, artifacts, tags, registered model that loads back as our Encoder
    import mlflow

    run = mlflow.get_run(res["run_id"])
    assert run.data.params["encoder.d_model"] == "64"
    assert run.data.tags["ecgssl.store_hash"] == open_store(real_store).hash
    assert {"loss", "recon_loss", "lead_ce", "lead_acc", "lr", "samples_per_s"} <= set(run.data.metrics)
    files = {a.path for d in ("plots", "encoder") for a in mlflow.MlflowClient().list_artifacts(res["run_id"], d)}
    assert {"plots/reconstruction.png", "plots/lead_confusion.png", "encoder/encoder.pt"} <= files
    assert res["encoder_uri"].startswith("models:/ecgssl-encoder/")
    enc, ecfg = load_encoder(res["encoder_uri"])
    local, _ = load_encoder(res["encoder_path"])
    assert isinstance(enc, Encoder) and ecfg == cfg.encoder
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), local.state_dict().values(), strict=True))
    feats = enc.eval().embed(torch.randn(2, 12, 1250))
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
