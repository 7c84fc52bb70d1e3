"""One fine-tuning cell on a tiny generated store: early stopping and its bookkeeping, the convex linear probe, the
supervised xresnet1d arm, ``load_downstream_model``, and per-cell determinism (a cell gives the same numbers alone
and while another cell trains in a parallel thread)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from ecgmodel.data.labels import scored_codes
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.downstream.config import FinetuneConfig
from ecgmodel.downstream.dataset import prepare_task
from ecgmodel.downstream.evaluate import predict_records
from ecgmodel.downstream.finetune import finetune
from ecgmodel.downstream.model import load_downstream_model

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "input_samples": 500, "patch_size": 50}
TINY_CNN = {"layers": [1, 1], "widths": [8, 16], "expansion": 1, "stem": [8], "head_hidden": 8, "head_dropout": 0.2}


def snomed_store(path, n_records: int = 40, seed: int = 0) -> str:
    """Records whose first scored code sets the frequency of a sine in every lead (learnable, multi-label)."""
    rng = np.random.default_rng(seed)
    codes = scored_codes()[:4]
    t = np.arange(1000) / 500
    batches = []
    for i in range(n_records):
        dx = list(rng.choice(codes, rng.integers(1, 3), replace=False))
        f = 1 + scored_codes().index(dx[0]) % 5
        sig = rng.normal(0, 30, (1, 12, 1000)) + 400 * np.sin(2 * np.pi * f * t)
        batches.append(WindowBatch.for_record(
            sig.astype(np.int16), np.ones(12, bool), np.zeros(1, np.int64), np.full(1, 1000), np.zeros(1, np.uint8),
            record=f"S{i:03d}", source="challenge-2020", database="georgia", dx=dx, patient_id=f"P{i}"))  # fmt: skip
    with StoreWriter(path, fs=500, window_samples=1000, chunk_windows=16) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"challenge-2020": {"version": "test"}}, dx_systems={"challenge-2020": "snomed-ct"})
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return snomed_store(tmp_path_factory.mktemp("cells") / "store")


def _cfg(store: str, **kw) -> FinetuneConfig:
    base = dict(store=store, encoder=TINY, threshold_grid=5, threshold_passes=1, num_threads=1,
                optim={"epochs": 2, "batch_size": 16, "patience": 5})  # fmt: skip
    base.update(kw)
    return FinetuneConfig.model_validate(base)


def _comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "out_dir")}


def test_cell_is_identical_alone_and_beside_a_parallel_cell(store, tmp_path):
    # dropout in the encoder (attention + MLP) and before the head: every random draw of the cell is exercised
    cfg = _cfg(store, encoder={**TINY, "dropout": 0.2}, seed=3, fraction=0.6,
               optim={"epochs": 2, "batch_size": 8, "head_dropout": 0.3, "patience": 5})  # fmt: skip
    other = _cfg(store, encoder={**TINY, "dropout": 0.2}, seed=7, optim={"epochs": 3, "batch_size": 4})
    data = prepare_task(cfg)
    alone = finetune(cfg, tmp_path / "alone", progress=False, data=data)

    torch.manual_seed(123)  # the global generator's state must not matter either
    errors: list[BaseException] = []

    def run_other():
        try:
            finetune(other, tmp_path / "other", progress=False)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    thread = threading.Thread(target=run_other)
    thread.start()
    beside = finetune(cfg, tmp_path / "beside", progress=False, data=data)
    thread.join()
    assert not errors, errors
    assert _comparable(alone) == _comparable(beside)
    a, b = (np.load(tmp_path / d / "test_predictions.npz") for d in ("alone", "beside"))
    np.testing.assert_array_equal(a["probs"], b["probs"])
    sa, sb = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in ("alone", "beside"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("alone", "beside"))
    assert ha == hb and len(ha) == 2
    # a different seed is a different cell (the comparison above can fail)
    third = finetune(cfg.model_copy(update={"seed": 4}), tmp_path / "seed4", progress=False)
    assert not np.array_equal(np.load(tmp_path / "seed4" / "test_predictions.npz")["probs"][:3], a["probs"][:3]) \
        or third["n_labelled"] != alone["n_labelled"]


def test_early_stopping_and_budget_limit(store, tmp_path):
    # the ceiling reached while the best epoch is inside the last `patience` epochs: budget-limited
    capped = finetune(_cfg(store, init="random", optim={"epochs": 2, "batch_size": 16, "patience": 5}), tmp_path / "a",
                      progress=False)  # fmt: skip
    assert capped["epochs_trained"] == 2 and capped["max_epochs"] == 2 and capped["patience"] == 5
    assert capped["budget_limited"] is True and 1 <= capped["best_epoch"] <= 2
    # a model that cannot move (lr ~ 0): the first epoch stays best, training stops after `patience` more epochs
    frozen = finetune(_cfg(store, optim={"epochs": 30, "batch_size": 16, "patience": 2, "lr": 1e-12,
                                         "weight_decay": 0.0}), tmp_path / "b", progress=False)  # fmt: skip
    assert (frozen["best_epoch"], frozen["epochs_trained"], frozen["budget_limited"]) == (1, 3, False)
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())) == 3
    # warm-up: no stop before it ends (patience counted from the end of the warm-up)
    warm = finetune(_cfg(store, optim={"epochs": 30, "batch_size": 16, "patience": 2, "lr": 1e-12,
                                       "weight_decay": 0.0, "warmup_fraction": 0.2}), tmp_path / "c", progress=False)  # fmt: skip
    assert warm["epochs_trained"] == 6 + 2


def test_linear_probe_is_the_saved_model_and_counts_nested_val(store, tmp_path):
    cfg = _cfg(store, mode="linear", fraction=0.5, probe={"C_grid": [0.01, 1.0, 100.0]})
    data = prepare_task(cfg)
    res = finetune(cfg, tmp_path / "probe", progress=False, data=data)
    assert res["n_labels_used"] == res["n_labelled"] + res["n_val"] == len(data.train.records) + len(data.val.records)
    assert res["probe_C"] in (0.01, 1.0, 100.0)
    assert res["grid_edge"] == (res["probe_C"] != 1.0)
    assert res["budget_limited"] is False and 0 < res["best_epoch"] == res["epochs_trained"] < res["max_epochs"]
    history = json.loads((tmp_path / "probe" / "history.json").read_text())
    assert [h["C"] for h in history] == [0.01, 1.0, 100.0] and all(h["converged"] for h in history)
    chosen = max(history, key=lambda h: (h["val_challenge_score"], -h["C"]))
    assert chosen["C"] == res["probe_C"]
    # the folded probe in model.pt predicts, through the frozen encoder, what the probe predicted
    model, meta = load_downstream_model(tmp_path / "probe" / "model.pt")
    assert (meta["arch"], meta["pooling"], meta["mode"]) == ("transformer", "meanmax", "linear")
    direct = predict_records(model, data.test, meta["input_samples"], True, 8)
    np.testing.assert_allclose(np.load(tmp_path / "probe" / "test_predictions.npz")["probs"], direct, atol=1e-5)
    assert model.head.in_features == 2 * TINY["d_model"]
    # a probe whose solver cap is hit is budget-limited
    capped_cfg = FinetuneConfig.model_validate({**cfg.model_dump(), "probe": {"C_grid": [100.0], "max_iter": 2}})
    capped = finetune(capped_cfg, tmp_path / "capped", progress=False, data=data)
    assert capped["budget_limited"] is True and capped["epochs_trained"] == 2 and capped["grid_edge"] is False


def test_supervised_arm_trains_saves_and_reloads(store, tmp_path):
    with pytest.raises(ValueError, match="supervised.*mode='full' only"):
        FinetuneConfig(store=store, init="supervised", mode="linear")
    cfg = _cfg(store, init="supervised", supervised=TINY_CNN, optim={"epochs": 2, "batch_size": 16, "patience": 1})
    data = prepare_task(cfg)
    res = finetune(cfg, tmp_path / "sup", progress=False, data=data)
    assert res["arch"] == "xresnet1d" and res["init"] == "supervised" and np.isfinite(res["test_macro_auroc"])
    model, meta = load_downstream_model(tmp_path / "sup" / "model.pt")
    assert meta["arch"] == "xresnet1d" and meta["input_samples"] == TINY["input_samples"]
    assert meta["model_config"]["layers"] == [1, 1] and "encoder_config" not in meta
    direct = predict_records(model, data.test, meta["input_samples"], True, 8)
    np.testing.assert_allclose(np.load(tmp_path / "sup" / "test_predictions.npz")["probs"], direct, atol=1e-5)


def test_load_downstream_model_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a fine-tuned ecgssl model"):
        load_downstream_model(tmp_path / "x.pt")


def test_probe_cell_is_identical_with_a_cold_or_shared_feature_cache(store, tmp_path, monkeypatch):
    """Probe cells share the process-wide crop-feature cache; which cell embeds a crop first must not matter."""
    import ecgmodel.downstream.finetune as ft
    from ecgmodel.downstream.evaluate import FeatureCache
    from ecgmodel.models.encoder import EncoderConfig, build_encoder
    from ecgmodel.train.checkpoint import save_encoder

    enc_cfg = EncoderConfig(**TINY)
    encoder = str(save_encoder(tmp_path / "enc.pt", build_encoder(enc_cfg, torch.Generator().manual_seed(0)), enc_cfg))
    cfg = _cfg(store, init=encoder, mode="linear", fraction=0.6, seed=2, probe={"C_grid": [0.1, 1.0]})
    other = cfg.model_copy(update={"fraction": 1.0, "seed": 5})
    monkeypatch.setattr(ft, "FEATURE_CACHE", FeatureCache())
    alone = finetune(cfg, tmp_path / "alone", progress=False)
    shared = FeatureCache()
    monkeypatch.setattr(ft, "FEATURE_CACHE", shared)
    thread = threading.Thread(target=finetune, args=(other, tmp_path / "other"), kwargs={"progress": False})
    thread.start()
    beside = finetune(cfg, tmp_path / "beside", progress=False)
    thread.join()
    hits = shared.hits
    warm = finetune(cfg, tmp_path / "warm", progress=False)  # every crop now served from the cache
    assert shared.hits > hits
    assert _comparable(alone) == _comparable(beside) == _comparable(warm)
    a, b, c = (np.load(tmp_path / d / "test_predictions.npz") for d in ("alone", "beside", "warm"))
    np.testing.assert_array_equal(a["probs"], b["probs"])
    np.testing.assert_array_equal(a["probs"], c["probs"])


def test_cli_rejects_a_supervised_linear_probe_in_one_line(capsys):
    from flows import cli

    assert cli.main(["finetune", "--store", "s.zarr", "--init", "supervised", "--mode", "linear"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "full mode only" in err and "--init supervised --mode full" in err


@pytest.mark.slow  # the first MLflow access of a process creates its SQLite schema (~10 s)
def test_child_run_carries_the_convergence_bookkeeping(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import setup_mlflow

    experiment_id = setup_mlflow("ecgssl-cells-test")
    client = MlflowClient()
    for name, cfg in {
        "full": _cfg(store, optim={"epochs": 3, "batch_size": 16, "patience": 1, "lr": 1e-12, "weight_decay": 0.0}),
        "supervised": _cfg(store, init="supervised", supervised=TINY_CNN, optim={"epochs": 2, "batch_size": 16}),
        "probe": _cfg(store, mode="linear", probe={"C_grid": [0.1, 1.0, 10.0]}),
    }.items():
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        res = finetune(cfg, tmp_path / name, run_id=run_id, progress=False)
        run = client.get_run(run_id)
        assert run.data.metrics["best_epoch"] == res["best_epoch"]
        assert run.data.metrics["epochs_trained"] == res["epochs_trained"]
        assert run.data.tags["ecgssl.budget_limited"] == str(res["budget_limited"]).lower()
        assert run.data.params["arch"] == res["arch"] and run.data.params["num_threads"] == "1"
        if name == "probe":
            assert run.data.tags["ecgssl.grid_edge"] == str(res["grid_edge"]).lower()
            assert run.data.metrics["probe_C"] == res["probe_C"]
            assert len(client.get_metric_history(run_id, "val_challenge_score")) == 3
        else:
            assert "ecgssl.grid_edge" not in run.data.tags
    assert (res["budget_limited"], client.get_run(run_id).data.params["init"]) == (False, "random")
