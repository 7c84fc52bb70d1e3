"""Registry rules: which name a pretraining run registers under, the classifier and encoder gates, how the final
model's init and schedule are chosen on validation, and the deployments' default encoder."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ecgmodel.serving.register import choose_final, classifier_gate, encoder_gate
from ecgmodel.train.pretrain import SMOKE_STEPS, build_config, encoder_registry_name


def test_encoder_registry_names():
    assert encoder_registry_name(build_config("cpu")) == "ecgssl-encoder"  # a main run
    assert encoder_registry_name(build_config("smoke")) == "ecgssl-encoder"  # the demo's pipeline encoder
    assert encoder_registry_name(build_config("cpu", {"optim.max_steps": SMOKE_STEPS - 1})) == "ecgssl-encoder-smoke"
    arm = build_config("cpu", {"run.registered_model": "ecgssl-encoder-mask"})
    assert encoder_registry_name(arm) == "ecgssl-encoder-mask"  # the pipeline's pretext arms


def _npz(path: Path, y: np.ndarray, probs: np.ndarray, classes: list[str]) -> Path:
    outputs = probs >= 0.5 if y.ndim == 2 else probs.argmax(axis=1)
    np.savez_compressed(path, keys=np.array([f"r{i}" for i in range(len(y))]), y=y, probs=probs, outputs=outputs,
                        classes=np.array(classes), task=np.array("x"))
    return path


def test_classifier_gate_passes_a_good_model_and_refuses_noise(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random((120, 5)) < 0.3
    y[~y.any(axis=1), 0] = True
    good = _npz(tmp_path / "good.npz", y, np.where(y, 0.8, 0.2) + rng.normal(0, 0.05, y.shape), list("ABCDE"))
    g = classifier_gate(good, "ptbxl-superclass", "test_macro_auroc", n_boot=200)
    assert g["passed"] and g["baseline"] == pytest.approx(0.5) and g["ci_low"] > 0.9 and g["n_test"] == 120
    noise = _npz(tmp_path / "noise.npz", y, rng.random(y.shape), list("ABCDE"))
    g = classifier_gate(noise, "ptbxl-superclass", "macro_auroc", n_boot=200)
    assert not g["passed"] and g["ci_low"] < 0.5 < g["ci_high"] and "not passed" in g["detail"]
    # single-label: the trivial predictor is the majority class (accuracy = its share)
    lab = np.array([0] * 60 + [1] * 30 + [2] * 10)
    probs = np.eye(3)[lab] * 0.4 + 0.2
    g = classifier_gate(_npz(tmp_path / "loc.npz", lab, probs, ["a", "b", "c"]), "localization", "accuracy", n_boot=200)
    assert g["baseline"] == pytest.approx(0.6) and g["value"] == 1.0 and g["passed"]


def test_encoder_gate():
    assert encoder_gate({"metric": "m", "gain_ci": {"0.1": [0.01, 0.2], "1": [-0.1, 0.3]}})["passed"]
    assert not encoder_gate({"gain_ci": {"0.1": [-0.01, 0.2], "1": [float("nan"), float("nan")]}})["passed"]
    assert not encoder_gate({})["passed"]


def test_final_model_is_chosen_on_validation_not_test(tmp_path):
    """The best mean validation score at the largest fraction wins, even when another cell has the best test score."""
    rows = []
    for init, mode, val, test in (("ssl", "full", 0.8, 0.5), ("random", "full", 0.6, 0.9), ("ssl", "linear", 0.7, 0.7)):
        for seed in (0, 1):
            out = tmp_path / f"{init}-{mode}-{seed}"
            out.mkdir()
            (out / "metrics.json").write_text(json.dumps({"best_val_macro_auroc": val + 0.01 * seed}))
            rows.append({"mode": mode, "init": init, "fraction": 1.0, "seed": seed, "test_macro_auroc": test,
                         "out_dir": str(out), "error": ""})
            rows.append({"mode": mode, "init": init, "fraction": 0.1, "seed": seed, "test_macro_auroc": 0.0,
                         "out_dir": "", "error": ""})  # smaller fractions never decide
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    sched = {"lr": 0.001, "encoder_lr_scale": 0.1, "warmup_fraction": 0.1}
    ablation = {"summary_csv": str(tmp_path / "summary.csv"), "metric": "test_macro_auroc",
                "schedules": {"ssl/full": sched, "random/full": {**sched, "lr": 0.01}}}
    choice = choose_final(ablation, {"ssl": "enc.pt"})
    assert (choice["init"], choice["mode"], choice["init_ref"]) == ("ssl", "full", "enc.pt")
    assert choice["schedule"] == sched and choice["val_score"] == pytest.approx(0.805)


def test_ablation_deployment_uses_the_registry_champion():
    """The on-demand ablation reads the encoder from the registry (any worker), not a file on one worker's disk."""
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    ablation = next(d for d in spec["deployments"] if d["name"] == "ablation")
    assert ablation["parameters"]["encoder"] == "models:/ecgssl-encoder@champion"
