"""The hierarchical paired bootstrap: pretraining variance inside the CI, pairing by identity, degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecgmodel.metrics.bootstrap import TOO_FEW_RECORDS, Predictions, hierarchical_bootstrap

N = 400
BASE = np.random.default_rng(0).random(N)  # record difficulty, shared by every run (the paired design)


def run(rate: float, seed: int, n: int = N) -> Predictions:
    correct = BASE[:n] + np.random.default_rng(seed).normal(0, 0.03, n) < rate
    return Predictions(np.array([f"r{i:03d}" for i in range(n)]), np.zeros(n, np.int64), np.zeros((n, 2)),
                       np.where(correct, 0, 1), ["a", "b"])  # fmt: skip


def acc(p: Predictions) -> float:
    return float(np.mean(p.outputs == p.y))


def test_two_pretraining_runs_that_differ_widen_the_ci():
    random = {"": {s: run(0.6, 100 + s) for s in range(3)}}
    good = {s: run(0.85, 200 + s) for s in range(3)}
    weak = {s: run(0.65, 300 + s) for s in range(3)}
    single = hierarchical_bootstrap({"p1": good}, random, acc, 400, seed=1)
    pooled = hierarchical_bootstrap({"p1": good, "p2": weak}, random, acc, 400, seed=1)
    assert single["n_pretrain_a"] == 1 and pooled["n_pretrain_a"] == 2
    assert pooled["estimate"] == pytest.approx((0.25 + 0.05) / 2, abs=0.03)
    w1, w2 = single["ci_high"] - single["ci_low"], pooled["ci_high"] - pooled["ci_low"]
    assert w2 > 2 * w1  # the pretraining run is a source of variance the single-run CI leaves out
    assert pooled["ci_low"] <= 0.06 and pooled["ci_high"] >= 0.24  # it spans both runs' results


def test_pairing_is_by_seed_number_so_a_failed_cell_shifts_nothing():
    a = {0: run(0.8, 1), 2: run(0.5, 3)}  # seed 1 failed
    b = {0: run(0.8, 1), 1: run(0.6, 2), 2: run(0.5, 3)}
    res = hierarchical_bootstrap({"": a}, {"": b}, acc, 200, seed=0)
    identity = np.mean([acc(a[0]), acc(a[2])]) - np.mean([acc(b[s]) for s in (0, 1, 2)])
    positional = np.mean([acc(a[0]), acc(a[2])]) - np.mean([acc(b[0]), acc(b[1])])
    assert res["estimate"] == pytest.approx(identity) and not res["estimate"] == pytest.approx(positional)
    # records are matched by key, not row: shuffling one arm's rows changes nothing
    order = np.random.default_rng(9).permutation(N)
    shuffled = {s: p.take(order) for s, p in b.items()}
    again = hierarchical_bootstrap({"": a}, {"": shuffled}, acc, 200, seed=0)
    assert (again["estimate"], again["ci_low"], again["ci_high"]) == (res["estimate"], res["ci_low"], res["ci_high"])


def test_a_bootstrap_that_cannot_vary_gives_no_verdict(tmp_path):
    two = hierarchical_bootstrap([run(0.99, 1, n=2)], [run(0.99, 2, n=2)], acc, 100)
    assert two["too_few"] and two["n_records"] == 2
    # through the report: too few test records, never a labels_to_match
    from ecgmodel.ablation.report import build_report

    rows = []
    for init in ("random", "ssl"):
        for f in (0.5, 1.0):
            out = tmp_path / f"{init}-{f}"
            out.mkdir()
            p = run(0.99, 1, n=2)
            np.savez(out / "test_predictions.npz", keys=p.keys, y=p.y, probs=p.probs, outputs=p.outputs,
                     classes=np.array(p.classes))  # fmt: skip
            rows.append({"mode": "full", "init": init, "fraction": f, "seed": 0, "out_dir": str(out),
                         "test_accuracy": 1.0})  # fmt: skip
    info = {"task": "localization", "metric": "test_accuracy", "modes": ["full"], "ssl_arms": ["ssl"],
            "margin": 0.01, "bootstrap_samples": 50}  # fmt: skip
    rep = build_report(pd.DataFrame(rows), info, tmp_path / "rep", plot=False)
    assert rep["labels_to_match_text"] == TOO_FEW_RECORDS and math.isnan(rep["labels_to_match"])
    assert rep["metrics"]["labels_to_match_reached"] == 0.0
    assert TOO_FEW_RECORDS in rep["markdown"] and rep["withheld"]["0.5"] == TOO_FEW_RECORDS
    assert not any(rep["significant"].values())


def test_edge_of_grid_choices_are_withheld_in_print_and_kept_in_the_metrics(tmp_path):
    from ecgmodel.ablation.report import build_report
    from ecgmodel.downstream.ablation import schedule_edges

    grid = [{"lr": 3e-4}, {"lr": 1e-3}, {"lr": 3e-3}]
    edges = schedule_edges(grid, {("random", "full"): {"lr": 3e-3}, ("ssl", "full"): {"lr": 1e-3}})
    assert edges == {("random", "full"): True, ("ssl", "full"): False}
    assert schedule_edges([{"lr": 1e-3}, {"lr": 1e-3}], {("ssl", "full"): {"lr": 1e-3}}) == {("ssl", "full"): False}
    rows = []
    for init, rate in (("random", 0.6), ("ssl", 0.8)):
        for f in (0.5, 1.0):
            for s in range(2):
                out = tmp_path / f"{init}-{f}-{s}"
                out.mkdir()
                p = run(rate, 10 * s + int(10 * f) + (0 if init == "random" else 100))
                np.savez(out / "test_predictions.npz", keys=p.keys, y=p.y, probs=p.probs, outputs=p.outputs,
                         classes=np.array(p.classes))  # fmt: skip
                rows.append({"mode": "full", "init": init, "fraction": f, "seed": s, "out_dir": str(out),
                             "test_accuracy": acc(p), "grid_edge": False})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.loc[(frame["init"] == "ssl") & (frame["fraction"] == 0.5), "grid_edge"] = True  # a probe's C at its edge
    info = {"task": "localization", "metric": "test_accuracy", "modes": ["full"], "ssl_arms": ["ssl"], "margin": 0.01,
            "bootstrap_samples": 100, "schedule_edges": {"random/full": True, "ssl/full": False}}  # fmt: skip
    rep = build_report(frame, info, tmp_path / "rep", plot=False)
    assert rep["withheld"]["1"] == "withheld: random schedule chosen at the edge of its grid"
    assert rep["withheld"]["0.5"].startswith("withheld: ssl regularisation at its grid edge at 0.5")
    assert math.isfinite(rep["metrics"]["gain_at_0.5"]) and rep["metrics"]["gain_at_0.5"] > 0.1  # kept in MLflow
    assert rep["labels_to_match_text"].startswith("withheld:") and "0.200" not in rep["markdown"].split("| mode |")[0]


def test_weighted_macro_auroc_is_the_auroc_of_the_repeated_records():
    """A replicate's per-record multiplicities score exactly as the records copied that many times would, ties
    included (scores rounded to 1-3 decimals), classes without both outcomes in the replicate left out."""
    from ecgmodel.metrics.bootstrap import Predictions, fast_macro_auroc, weighted_macro_auroc

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(5, 300))
        y = rng.random((n, 5)) < rng.random(5) * 0.5
        probs = np.round(rng.random((n, 5)), int(rng.integers(1, 4)))
        p = Predictions(np.arange(n).astype(str), y, probs, y, list("abcde"))
        idx = rng.integers(0, n, n)
        expected = fast_macro_auroc(y[idx], probs[idx])
        got = weighted_macro_auroc(p, np.bincount(idx, minlength=n))
        assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected, abs=1e-12)
