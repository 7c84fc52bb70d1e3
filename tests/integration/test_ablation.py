"""Fine-tuning and the label-efficiency ablation end to end, with MLflow parent/child runs.

* fast: one fine-tuning run on a small generated SNOMED store (arrhythmia27), logged to MLflow through the task;
* slow: a real ablation (localization = PTB-XL MI location stand-in) on a store built from the shared mirror.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecgmodel.data.labels import merged_scored_codes, scored_codes
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.downstream.ablation import gains, summarize
from ecgmodel.downstream.config import FinetuneConfig
from ecgmodel.errors import UserError
from ecgmodel.models.encoder import EncoderConfig, build_encoder
from ecgmodel.train.checkpoint import save_encoder

TINY = EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=1000, patch_size=50)


def synthetic_snomed_store(path, n_records: int = 90, seed: int = 0) -> str:
    """Records whose first scored code sets the frequency of a sine in every lead (learnable, multi-label)."""
    rng = np.random.default_rng(seed)
    codes = scored_codes()[:6]
    t = np.arange(2000) / 500
    batches = []
    for i in range(n_records):
        dx = list(rng.choice(codes, rng.integers(1, 3), replace=False))
        f = 1 + scored_codes().index(dx[0]) % 5
        k = int(rng.integers(1, 3))
        sig = rng.normal(0, 30, (k, 12, 2000)) + 400 * np.sin(2 * np.pi * f * t)
        batches.append(WindowBatch.for_record(
            sig.astype(np.int16), np.ones(12, bool), np.arange(k) * 2000, np.full(k, 2000), np.zeros(k, np.uint8),
            record=f"S{i:03d}", source="challenge-2020", database="georgia", dx=dx,
            patient_id=f"P{i // 2}"))  # two records per patient
    with StoreWriter(path, fs=500, window_samples=2000, chunk_windows=16) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"challenge-2020": {"version": "test"}}, dx_systems={"challenge-2020": "snomed-ct"})
    return str(path)


def ptbxl_mi_store(shared, path) -> str:
    """PTB-XL records 1-500 (500 Hz) of the shared mirror with exactly one MI location, as an ecgssl store.

    The mirror holds more PTB-XL records than that; the test keeps to the first 500 so its cost and subset sizes
    stay fixed as the mirror grows."""
    import wfdb

    from ecgmodel.data.labels import mi_location
    from ecgmodel.data.signal import harmonise

    root = shared / "physionet" / "ptb-xl" / "1.0.3"
    db = pd.read_csv(root / "ptbxl_database.csv")
    db = db[db["ecg_id"] <= 500]
    batches = []
    for row in db.itertuples():
        keys = ",".join(ast.literal_eval(row.scp_codes))
        if mi_location(keys) is None:
            continue
        rec = wfdb.rdrecord(str(root / row.filename_hr))
        h = harmonise(rec.p_signal.T, rec.sig_name, rec.fs, 500, 10.0)
        batches.append(WindowBatch.for_record(
            h.signal, h.lead_present, h.window_start, h.valid_length, h.qc, record=f"{row.ecg_id:05d}_hr",
            source="ptb-xl", database="ptb-xl", dx=keys, patient_id=str(int(row.patient_id)),
            fold=int(row.strat_fold)))
    with StoreWriter(path, fs=500, window_samples=5000) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"ptb-xl": {"version": "1.0.3"}}, dx_systems={"ptb-xl": "ptbxl-scp"})
    return str(path)


@pytest.fixture
def encoder_file(tmp_path):
    torch.manual_seed(0)
    return str(save_encoder(tmp_path / "encoder.pt", build_encoder(TINY), TINY))


@pytest.mark.slow  # the first MLflow access of a process creates its SQLite schema (~10 s)
def test_finetune_task_logs_a_complete_run(tmp_path, encoder_file):
    from mlflow.tracking import MlflowClient

    from tasks.finetune import finetune_task

    store = synthetic_snomed_store(tmp_path / "store")
    cfg = FinetuneConfig(store=store, init=encoder_file, mode="linear", fraction=0.5, seed=1, threshold_grid=11,
                         optim={"epochs": 2, "batch_size": 16}, probe={"C_grid": [0.1, 1.0]})
    res = finetune_task.fn(cfg.model_dump(mode="json"), str(tmp_path / "cell"), None, "probe")
    run = MlflowClient().get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["init"], p["mode"], p["fraction"], p["seed"]) == ("ssl", "linear", "0.5", "1")
    assert int(p["n_labelled"]) == res["n_labelled"] > 0
    assert len(MlflowClient().get_metric_history(run.info.run_id, "val_challenge_score")) == 2  # one per C
    for key in ("best_val_challenge_score", "test_challenge_score", "test_macro_auroc", "best_epoch",
                "epochs_trained", "probe_C"):
        assert key in run.data.metrics
    assert run.data.tags["ecgssl.budget_limited"] == str(res["budget_limited"]).lower()
    assert run.data.tags["ecgssl.grid_edge"] == "true"  # a 2-point grid: either choice is an edge
    arts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"label_definitions.csv", "thresholds.csv", "splits.csv", "label_subsets.csv"} <= arts
    assert "model.pt" not in arts  # weights only with log_model=True
    # the linear probe left the encoder untouched; thresholds stored with the model
    saved = torch.load(tmp_path / "cell" / "model.pt", weights_only=True)
    original = torch.load(encoder_file, weights_only=True)["state_dict"]
    for k, v in original.items():
        assert torch.equal(saved["state_dict"][f"encoder.{k}"], v)
    assert len(saved["thresholds"]) == 24 and saved["classes"] == merged_scored_codes()  # equivalent pairs merged
    assert {"test_predictions.npz"} <= arts
    splits = pd.read_csv(tmp_path / "cell" / "splits.csv", dtype=str)
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()


@pytest.mark.slow  # two fine-tuning runs: ~5-10 s on 2 cores
def test_full_finetune_changes_the_encoder_and_subsets_are_shared(tmp_path, encoder_file):
    from ecgmodel.downstream.finetune import finetune

    store = synthetic_snomed_store(tmp_path / "store", n_records=50)
    base = FinetuneConfig(store=store, init=encoder_file, threshold_grid=11, optim={"epochs": 1, "batch_size": 32})
    small = finetune(base.model_copy(update={"fraction": 0.4}), tmp_path / "a", progress=False)
    finetune(base.model_copy(update={"init": "random", "arch_from": encoder_file}), tmp_path / "b", progress=False)
    saved = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    original = torch.load(encoder_file, weights_only=True)["state_dict"]
    assert any(not torch.equal(saved[f"encoder.{k}"], v) for k, v in original.items())
    sa = pd.read_csv(tmp_path / "a" / "label_subsets.csv")
    sb = pd.read_csv(tmp_path / "b" / "label_subsets.csv")
    assert sa.equals(sb)  # same seed -> same subsets whatever the init/fraction of the cell
    assert sa["fraction_0.4"].sum() == small["n_labelled"]
    assert (sa["fraction_0.2"] <= sa["fraction_0.4"]).all()


@pytest.mark.slow  # one linear probe and one reload: ~5 s on 2 cores
def test_linear_probe_matches_its_saved_model(tmp_path, encoder_file):
    from ecgmodel.downstream.dataset import prepare_task
    from ecgmodel.downstream.evaluate import predict_records
    from ecgmodel.downstream.finetune import build_model, finetune

    store = synthetic_snomed_store(tmp_path / "store", n_records=60)
    base = FinetuneConfig(store=store, init=encoder_file, mode="linear", threshold_grid=11,
                          optim={"epochs": 3, "batch_size": 16})  # fmt: skip
    data = prepare_task(base)
    res = finetune(base, tmp_path / "cached", progress=False, data=data)
    original = torch.load(encoder_file, weights_only=True)["state_dict"]
    saved = torch.load(tmp_path / "cached" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[f"encoder.{k}"], v) for k, v in original.items())  # encoder frozen
    assert math.isfinite(res["test_macro_auroc"])
    # the probe's test predictions are what its saved model predicts through the encoder
    model, enc_cfg = build_model(base, len(data.classes))
    model.load_state_dict(saved)
    direct = predict_records(model, data.test, enc_cfg.input_samples, True, 32)
    np.testing.assert_allclose(np.load(tmp_path / "cached" / "test_predictions.npz")["probs"], direct, atol=1e-5)


def test_cli_registers_finetune_and_ablate():
    from flows import ablation, finetune

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    finetune.register_cli(sub)
    ablation.register_cli(sub)
    a = parser.parse_args(["finetune", "--task", "localization", "--store", "s", "--init", "runs:/x/encoder",
                           "--fraction", "0.2", "--seed", "3", "--mode", "linear", "--set", "optim.epochs=2"])
    assert (a.task, a.init, a.fraction, a.seed, a.mode, a.set) == ("localization", "runs:/x/encoder", 0.2, 3,
                                                                    "linear", ["optim.epochs=2"])
    b = parser.parse_args(["ablate", "--store", "s", "--encoder", "e.pt", "--fractions", "0.1", "1", "--seeds", "2"])
    assert b.fractions == [0.1, 1.0] and b.seeds == 2 and callable(b.func)


@pytest.mark.slow
def test_ablation_end_to_end_on_the_shared_mirror(tmp_path, shared, encoder_file):
    from mlflow.tracking import MlflowClient

    from flows.ablation import ablation_flow

    store = ptbxl_mi_store(shared, tmp_path / "ptbxl")
    kwargs = dict(task="localization", store=store, encoder=encoder_file, fractions=[0.25, 0.5, 1.0], seeds=2,
                  modes=["full"], inits=["random", "ssl"], max_concurrent=2, out_dir=str(tmp_path / "abl"),
                  overrides={"optim.epochs": 3, "optim.batch_size": 16}, bootstrap_samples=100,
                  schedule_grid=[{"lr": 3e-3, "encoder_lr_scale": 0.1}], allow_pretrain_overlap=False, supervised=False)
    res = ablation_flow(**kwargs)
    client = MlflowClient()
    parent = client.get_run(res["parent_run_id"])
    assert res["experiment"] == "ecgssl-localization" and res["n_failed"] == 0
    assert client.get_experiment(parent.info.experiment_id).name == "ecgssl-localization"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["ablation_metric"] == "test_accuracy"
    assert parent.data.tags["ecgssl.ablation_metric"] == "test_accuracy"
    assert {"summary.csv", "cells.csv", "label_efficiency.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 12
    rows = []
    for run in children:
        p, m = run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3  # one per epoch
        assert "best_val_accuracy" in m and "test_accuracy" in m
        rows.append({"init": p["init"], "mode": p["mode"], "fraction": float(p["fraction"]), "seed": int(p["seed"]),
                     "n_labelled": int(p["n_labelled"]), "test_accuracy": m["test_accuracy"]})
    cells = pd.DataFrame(rows)
    # nested subsets of round(f * n_train) of the training records (PTB-XL folds 1-8 of the MI records)
    sizes = cells.groupby("fraction")["n_labelled"].unique().map(list).to_dict()
    n_train = sizes[1.0][0]
    assert sizes == {0.25: [round(0.25 * n_train)], 0.5: [round(0.5 * n_train)], 1.0: [n_train]}

    # the parent's figures are consistent with the child runs
    summary = summarize(cells, "test_accuracy")
    logged = pd.read_csv(res["summary_csv"])
    np.testing.assert_allclose(logged["mean"], summary["mean"])
    expected_gain = gains(summary, "full")
    for f, g in expected_gain.items():
        assert parent.data.metrics[f"gain_at_{f:g}"] == pytest.approx(g, nan_ok=True)
        assert res["gains"][f"{f:g}"] == pytest.approx(g, nan_ok=True)
    evidence = pd.read_csv(res["evidence_csv"])
    assert set(evidence["fraction"]) == {0.25, 0.5, 1.0}
    assert (evidence["gain_ci_low"] <= evidence["gain"] + 1e-9).all() and (evidence["gain"] <= evidence["gain_ci_high"] + 1e-9).all()
    for row in evidence.itertuples():
        assert parent.data.metrics[f"gain_ci_low_at_{row.fraction:g}"] == pytest.approx(row.gain_ci_low)
    ltm = res["labels_to_match"]
    if math.isnan(ltm):
        assert math.isnan(parent.data.metrics["labels_to_match"])  # logged as NaN, not left out
        assert parent.data.metrics["labels_to_match_reached"] == 0.0  # what the MLflow UI shows
    else:
        assert parent.data.metrics["labels_to_match"] == ltm
        assert evidence.loc[evidence["fraction"] >= ltm, "non_inferior"].all()
    # printed: the value, "not reached", or withheld when an arm was budget-limited (3 epochs here)
    assert parent.data.tags["ecgssl.labels_to_match"] == res["labels_to_match_text"]
    limited = {a: parent.data.metrics[f"budget_limited_{a}_full"] for a in ("random", "ssl")}
    if limited["random"] or limited["ssl"]:
        assert "withheld" in res["labels_to_match_text"] and "budget-limited" in parent.data.tags["mlflow.note.content"]
    assert "labels to match" in parent.data.tags["mlflow.note.content"]

    # subsets of one seed are identical across inits and nested across fractions
    folder = Path(res["report_dir"])
    assert folder.parent == tmp_path / "abl" and folder.name.endswith(parent.info.run_id[:8])
    (ssl_cell,) = folder.glob("cells/ssl-p*-full-f0.25-s0")
    subs = {"random": pd.read_csv(folder / "cells" / "random-full-f0.25-s0" / "label_subsets.csv"),
            "ssl": pd.read_csv(ssl_cell / "label_subsets.csv"),
            "ssl1": pd.read_csv(next(folder.glob("cells/ssl-p*-full-f1-s0")) / "label_subsets.csv")}
    assert subs["random"].equals(subs["ssl"])
    t = subs["ssl1"]
    assert (t["fraction_0.25"] <= t["fraction_0.5"]).all() and t["fraction_1"].all()
    splits = pd.read_csv(next(folder.glob("cells/ssl-p*-full-f1-s0")) / "splits.csv", dtype=str)
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()

    # an interrupted ablation is resumed: finished cells are reused, nothing is trained twice
    client.set_terminated(parent.info.run_id, "KILLED")
    again = ablation_flow(**kwargs)
    assert again["parent_run_id"] == parent.info.run_id
    assert len(client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")) == 12
    assert again["gains"] == pytest.approx(res["gains"])
    # every number of the parent re-derived from the report folder alone
    from ecgmodel.ablation.report import rederive
    from flows.report import compare

    assert compare(client.get_run(parent.info.run_id).data.metrics, rederive(folder)["metrics"]) == []
    print(json.dumps({k: res[k] for k in ("labels_to_match", "gains", "best")}, default=str))


@pytest.mark.slow
def test_failing_cells_fail_the_flow_and_name_the_setting(tmp_path):
    """Too few records per MI location: every cell fails once, clearly, and the flow ends Failed with the
    setting that fixes it in its message."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import setup_mlflow
    from flows.ablation import ablation_flow

    rng = np.random.default_rng(0)
    batches = []
    for i in range(24):
        dx = ["IMI", "ASMI", "LMI"][i % 3]
        batches.append(WindowBatch.for_record(
            rng.normal(0, 50, (1, 12, 2000)).astype(np.int16), np.ones(12, bool), np.zeros(1, np.int64),
            np.full(1, 2000), np.zeros(1, np.uint8), record=f"{i:05d}_hr", source="ptb-xl", database="ptb-xl",
            dx=dx, patient_id=str(i), fold=1 + i % 10))  # fmt: skip
    store = tmp_path / "store"
    with StoreWriter(store, fs=500, window_samples=2000, chunk_windows=16) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"ptb-xl": {"version": "t"}}, dx_systems={"ptb-xl": "ptbxl-scp"})
    with pytest.raises(RuntimeError, match=r"2 of 2 fine-tuning cells failed.*min_class_records"):
        ablation_flow(task="localization", store=str(store), encoder=None, fractions=[0.5, 1.0], seeds=1,
                      modes=["full"], inits=["random"], out_dir=str(tmp_path / "abl"),
                      overrides={"encoder": TINY.model_dump(), "min_class_records": 20}, supervised=False,
                      schedule_grid=[{"lr": 1e-3, "encoder_lr_scale": 1.0}])  # fmt: skip
    client = MlflowClient()
    exp = setup_mlflow("ecgssl-localization")
    parent = client.search_runs([exp], "tags.`ecgssl.role` = 'ablation-parent'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]  # fmt: skip
    assert parent.info.status == "FAILED"
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and {c.info.status for c in children} == {"FAILED"}  # one attempt per cell
    cells = pd.read_csv(next((tmp_path / "abl").glob("*/cells.csv")))
    assert cells["error"].str.contains("min_class_records").all()
    # with a schedule grid the tuning runs fail first: no cell is trained and the message says why
    with pytest.raises(RuntimeError, match=r"all 2 schedule-tuning runs failed.*min_class_records"):
        ablation_flow(task="localization", store=str(store), encoder=None, fractions=[1.0], seeds=1,
                      modes=["full"], inits=["random"], out_dir=str(tmp_path / "abl2"),
                      overrides={"encoder": TINY.model_dump(), "min_class_records": 20}, supervised=False,
                      schedule_grid=[{"lr": 1e-3, "encoder_lr_scale": 1.0}, {"lr": 3e-4, "encoder_lr_scale": 1.0}])
    assert not list((tmp_path / "abl2").glob("*/cells"))


@pytest.mark.slow
def test_ablation_refuses_an_encoder_that_saw_its_test_records(tmp_path, encoder_file):
    from mlflow.tracking import MlflowClient

    from ecgmodel.data.split_assignment import ensure_assignment, write_seen
    from flows.ablation import ablation_flow

    store = synthetic_snomed_store(tmp_path / "store", n_records=40)
    table, _ = ensure_assignment(store)
    write_seen(tmp_path, table, {"splits": ["train", "val", "test"]})  # beside encoder.pt: it saw everything
    kwargs = dict(task="arrhythmia27", store=store, encoder=encoder_file, fractions=[1.0], seeds=1, modes=["linear"],
                  out_dir=str(tmp_path / "abl"), overrides={"optim.epochs": 1, "threshold_grid": 5},
                  schedule_grid=[{"lr": 1e-3, "encoder_lr_scale": 0.1}], bootstrap_samples=20, supervised=False)  # fmt: skip
    with pytest.raises(UserError, match=r"pretrained on \d+ of this task's validation/test recordings.*"
                                        r"--allow-pretrain-overlap"):  # fmt: skip
        ablation_flow(**kwargs)
    assert not list((tmp_path / "abl").glob("*/cells"))  # refused before any training
    res = ablation_flow(**kwargs, allow_pretrain_overlap=True)
    assert "allowed explicitly" in res["pretrain_overlap"]
    parent = MlflowClient().get_run(res["parent_run_id"])
    assert "allowed explicitly" in parent.data.tags["ecgssl.pretrain_overlap"]
    assert "allowed explicitly" in (Path(res["report_dir"]) / "report.md").read_text()
    # Prefect artifacts of the ablation itself: headline, summary table (metric named), progress over its runs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        def newest(key):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return max(found, key=lambda a: a.created)

        assert "labels to match" in newest("ablation-arrhythmia27-report").data
        assert "test_challenge_score mean" in str(newest("ablation-arrhythmia27-summary").data)
        progress = newest("ablation-arrhythmia27-cells")
        assert progress.type == "progress" and float(progress.data) == 100.0
