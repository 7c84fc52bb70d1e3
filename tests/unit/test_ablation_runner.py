"""The ablation algorithm without Prefect and without training: ``run_ablation`` with a thread pool whose cells
write synthetic test predictions. Pins the rules the report applies (withheld verdicts, pretraining variance in the
CIs, re-derivable folders, resume keyed on content, stale runs killed, early argument checks)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecgmodel.ablation.report import POOLED, rederive
from ecgmodel.ablation.runner import ThreadExecutor, run_ablation
from ecgmodel.ablation.spec import AblationSettings, build_spec, resolve_defaults
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.errors import UserError
from ecgmodel.models.encoder import EncoderConfig, build_encoder
from ecgmodel.train.checkpoint import save_encoder

TINY = EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=1000, patch_size=50)
N_TEST = 300
#: accuracy of each arm's cells (encoder A is better than encoder B: two pretraining runs that differ)
RATE = {"random": 0.6, "supervised": 0.65, "A": 0.85, "B": 0.6}


def tiny_store(path: Path) -> str:
    rng = np.random.default_rng(0)
    batches = []
    for i in range(30):
        batches.append(WindowBatch.for_record(
            rng.normal(0, 50, (1, 12, 2000)).astype(np.int16), np.ones(12, bool), np.zeros(1, np.int64),
            np.full(1, 2000), np.zeros(1, np.uint8), record=f"{i:05d}_hr", source="ptb-xl", database="ptb-xl",
            dx=["IMI", "ASMI", "LMI"][i % 3], patient_id=str(i), fold=1 + i % 10))  # fmt: skip
    with StoreWriter(path, fs=500, window_samples=2000, chunk_windows=16) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"ptb-xl": {"version": "t"}}, dx_systems={"ptb-xl": "ptbxl-scp"})
    return str(path)


def encoder(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    return str(save_encoder(path, build_encoder(TINY), TINY))


class FakeCells:
    """Stands for fine-tuning: writes test predictions whose accuracy is the arm's rate; random init is
    budget-limited at 100 % of the labels. Counts the cells it trained."""

    def __init__(self, names: dict[str, str]):
        self.names = names  # encoder path -> "A" / "B"
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, config, out_dir, parent, name, tags):
        from ecgmodel.ablation.runner import train_cell

        with self.lock:
            self.calls += 1
        return train_cell(config, out_dir, parent, name, tags, finetune=self.finetune)

    def finetune(self, cfg, out_dir, run_id=None, progress=False):
        import mlflow

        who = self.names.get(cfg.init, cfg.init)
        rng = np.random.default_rng(abs(hash((who, cfg.seed, cfg.fraction, cfg.mode))) % 2**32)
        base = np.random.default_rng(7).random(N_TEST)  # record difficulty shared by every arm (pairing)
        correct = base + rng.normal(0, 0.05, N_TEST) < RATE[who] - 0.1 * (1 - cfg.fraction)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "test_predictions.npz", keys=np.array([f"r{i:03d}" for i in range(N_TEST)]),
                 y=np.zeros(N_TEST, np.int64), probs=np.zeros((N_TEST, 2)), outputs=np.where(correct, 0, 1),
                 classes=np.array(["a", "b"]))  # fmt: skip
        limited = who == "random" and cfg.fraction == 1.0
        res = {"test_accuracy": float(correct.mean()), "best_val_accuracy": float(correct.mean()),
               "best_epoch": 9 if limited else 3, "epochs_trained": 10, "n_labelled": int(100 * cfg.fraction),
               "budget_limited": limited}  # fmt: skip
        client = mlflow.MlflowClient()
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in
                                         {"mode": cfg.mode, "fraction": cfg.fraction, "seed": cfg.seed,
                                          "n_labelled": res["n_labelled"]}.items()])  # fmt: skip
        for k in ("test_accuracy", "best_val_accuracy", "best_epoch", "epochs_trained"):
            client.log_metric(run_id, k, res[k])
        client.set_tag(run_id, "ecgssl.budget_limited", "true" if limited else "false")
        return res


@pytest.fixture
def setup(tmp_path):
    store = tiny_store(tmp_path / "store")
    a, b = encoder(tmp_path / "a.pt", 0), encoder(tmp_path / "b.pt", 1)
    values = dict(task="localization", store=store, encoders={"ssl": [a, b]}, fractions=[0.5, 1.0], seeds=2,
                  modes=["full"], supervised=True, schedule_grid=[{"lr": 1e-3, "encoder_lr_scale": 1.0}],
                  bootstrap_samples=200, max_concurrent=2, out_dir=str(tmp_path / "abl"))  # fmt: skip
    return values, FakeCells({a: "A", b: "B"})


@pytest.mark.slow  # MLflow SQLite writes of 16 child runs: ~20-40 s on 2 loaded cores
def test_runner_applies_the_rules_and_its_folder_rederives_the_parent_metrics(setup):
    from mlflow.tracking import MlflowClient

    from flows.report import compare

    values, fake = setup
    spec = build_spec(**values)
    res = run_ablation(spec, ThreadExecutor(2, fake))
    client = MlflowClient()
    parent = client.get_run(res["parent_run_id"])
    assert parent.info.status == "FINISHED" and fake.calls == 16  # (random + supervised + 2 ssl runs) x 2 x 2
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 16
    ssl_ids = {c.data.tags["ecgssl.pretrain_id"] for c in children if c.data.tags["ecgssl.cell_init"] == "ssl"}
    assert len(ssl_ids) == 2 and all(len(i) == 16 for i in ssl_ids)  # content digests, not paths
    m = parent.data.metrics
    assert m["budget_limited_random_full"] == 2 and m["budget_limited_ssl_full"] == 0
    # random at 100 % is budget-limited: the gain at 1 and labels_to_match are withheld in print, kept in MLflow
    note = parent.data.tags["mlflow.note.content"]
    assert "withheld: random budget-limited at 1" in note and note == res["markdown"]
    assert res["withheld"]["1"] == "withheld: random budget-limited at 1" and not res["withheld"]["0.5"]
    assert res["labels_to_match_text"].startswith("withheld: random budget-limited at 1")
    assert math.isfinite(m["gain_at_1"]) and "labels_to_match_reached" in m
    assert "vs_supervised_gain_full_at_0.5" in m  # the supervised reference arm
    # each pretraining run beside the pooled one; the pooled CI carries the pretraining variance
    ev = pd.read_csv(res["evidence_csv"], dtype={"pretrain": str})
    rows = ev[(ev["reference"] == "random") & (ev["fraction"] == 0.5)]
    assert set(rows["pretrain"]) == {POOLED, *ssl_ids}
    width = (rows["gain_ci_high"] - rows["gain_ci_low"]).to_numpy()
    pooled = rows["pretrain"].to_numpy() == POOLED
    assert width[pooled][0] > 1.5 * width[~pooled].max()
    # intervals inside the metric's range
    summary = pd.read_csv(res["summary_csv"])
    assert summary["ci_low"].between(0, 1).all() and summary["ci_high"].between(0, 1).all()
    # the folder is its own: spec, cells, predictions; re-derived numbers equal the parent's MLflow metrics
    folder = Path(res["report_dir"])
    assert folder.name.endswith(parent.info.run_id[:8])
    assert {"spec.json", "cells.csv", "report.md", "metrics.json"} <= {p.name for p in folder.iterdir()}
    cells = pd.read_csv(folder / "cells.csv")
    assert all((folder / d / "test_predictions.npz").is_file() for d in cells["out_dir"])
    again = rederive(folder, folder.parent / "re")
    assert compare(parent.data.metrics, again["metrics"]) == []
    assert again["markdown"] == res["markdown"]

    # resume: a killed parent with a cell left RUNNING; nothing is trained twice, the stale run is marked KILLED
    from ecgmodel.ablation.tracking import start_run

    stale = start_run(parent.info.experiment_id and "ecgssl-localization", "stale", {}, parent.info.run_id)
    client.set_terminated(parent.info.run_id, "KILLED")
    before = fake.calls
    res2 = run_ablation(spec, ThreadExecutor(2, fake))
    assert res2["parent_run_id"] == parent.info.run_id and fake.calls == before
    assert client.get_run(stale).info.status == "KILLED"
    assert res2["gains"] == pytest.approx(res["gains"])

    # same settings, different encoder CONTENT at the same path: a new parent, never mixed with the old cells
    client.set_terminated(parent.info.run_id, "KILLED")
    encoder(Path(values["encoders"]["ssl"][1]), 5)
    res3 = run_ablation(build_spec(**values), ThreadExecutor(1, fake))
    assert res3["parent_run_id"] != parent.info.run_id and res3["report_dir"] != res["report_dir"]


def test_arguments_are_checked_before_anything_runs(tmp_path, capsys):
    from flows.cli import main

    store = tiny_store(tmp_path / "store")
    enc = encoder(tmp_path / "e.pt", 0)
    with pytest.raises(UserError, match=r"fractions.*\(0, 1\]"):
        build_spec(store=store, fractions=[0.5, 1.5])
    with pytest.raises(UserError, match="unknown init"):
        build_spec(store=store, inits=["ssl", "imagenet"], encoders={"ssl": [enc]})
    with pytest.raises(UserError, match="does not exist"):
        build_spec(store=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="missing.pt"):
        build_spec(store=store, encoders={"ssl": [str(tmp_path / "missing.pt")]})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not an ecgssl"):
        build_spec(store=store, encoders={"ssl": [str(tmp_path / "junk.pt")]})
    with pytest.raises(UserError, match="arm names"):
        build_spec(store=store, encoders={"mask": [enc]})
    assert main(["ablate", "--store", store, "--encoder", enc, "--fractions", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fractions" in err[0] and "ecgssl ablate" in err[0]
    assert main(["ablate", "--store", store, "--encoder", str(tmp_path / "junk.pt")]) == 2


def test_cli_flow_and_pipeline_section_share_the_defaults(tmp_path):
    import argparse
    import inspect

    from ecgmodel.pipeline_config import AblationSection
    from flows import ablation

    parser = argparse.ArgumentParser()
    ablation.register_cli(parser.add_subparsers())
    cli = ablation.cli_values(parser.parse_args(["ablate", "--store", "s"]))
    flow_defaults = {k: p.default for k, p in inspect.signature(ablation.ablation_flow.fn).parameters.items()}
    flow = ablation.spec_values({**flow_defaults, "store": "s"})
    section = AblationSection().model_dump(include=set(AblationSettings.model_fields))
    resolved = resolve_defaults(cli)
    assert resolved == resolve_defaults(flow)
    # the pipeline passes its section's values explicitly: they resolve to the same settings
    assert resolve_defaults({**section, "store": "s", "inits": ["random"]}) == {**resolved}
    assert section == {**resolved, "inits": section["inits"]} and section["inits"] == ["random", "ssl"]
    # repeatable --encoder: K pretraining runs of arm ssl; --pretext-encoder NAME=REF,REF
    args = parser.parse_args(["ablate", "--store", "s", "--encoder", "a.pt", "--encoder", "b.pt", "--no-supervised"])
    assert ablation.cli_values(args)["encoders"] == {"ssl": ["a.pt", "b.pt"]}
    assert ablation.cli_values(args)["supervised"] is False
    args = parser.parse_args(["ablate", "--store", "s", "--pretext-encoder", "joint=a.pt,b.pt",
                              "--pretext-encoder", "mask=c.pt"])  # fmt: skip
    assert ablation.cli_values(args)["encoders"] == {"ssl-joint": ["a.pt", "b.pt"], "ssl-mask": ["c.pt"]}


def test_report_folder_is_refused_when_it_is_not_one(tmp_path):
    with pytest.raises(UserError, match="not an ablation report folder"):
        rederive(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps({}))
    with pytest.raises(UserError):
        rederive(tmp_path)


def test_pipeline_summary_prints_withheld_gains_and_the_report_folder():
    from ecgmodel.pipeline_config import PipelineConfig
    from ecgmodel.report import render_summary

    res = {"parent_run_id": "p1", "labels_to_match_text": "withheld: random budget-limited at 1",
           "gains": {"0.5": 0.04, "1": 0.02}, "gain_ci": {"0.5": [0.01, 0.07], "1": [-0.01, 0.05]},
           "significant": {"0.5": True, "1": False}, "withheld": {"0.5": "", "1": "withheld: random budget-limited at 1"},
           "budget_limited": {"random/full": 2, "ssl/full": 0}, "report_dir": "runs/ablation/x-abc-p1"}  # fmt: skip
    md = render_summary(PipelineConfig.demo(), "sqlite:///x", {}, {}, {"localization": res}, 50, None)
    assert "0.5: +0.040 [+0.010, +0.070]" in md
    assert "1: withheld: random budget-limited at 1" in md and "+0.020" not in md
    assert "random/full: 2" in md and "ssl/full" not in md.split("budget-limited cells")[1].split("\n")[0]
    assert "labels to match" in md and "| withheld: random budget-limited at 1 |" in md
    assert "`runs/ablation/x-abc-p1`" in md
