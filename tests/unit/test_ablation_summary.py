"""Ablation summary maths on synthetic per-cell tables: mean and bootstrap interval over seeds, gains."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgmodel.downstream.ablation import best_cell, gains, summarize

FRACTIONS = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]


def cells(ssl_means: dict[float, float], random_means: dict[float, float], spread=(-0.01, 0.0, 0.01), mode="full"):
    rows = []
    for init, means in (("ssl", ssl_means), ("random", random_means)):
        for f, m in means.items():
            for seed, d in enumerate(spread):
                rows.append({"mode": mode, "init": init, "fraction": f, "seed": seed, "score": m + d})
    return pd.DataFrame(rows)


def test_mean_std_and_a_bootstrap_interval_inside_the_scores():
    df = cells({1.0: 0.5}, {1.0: 0.4}, spread=(0.0, 0.1, 0.2))
    s = summarize(df, "score")
    row = s[(s.init == "ssl")].iloc[0]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(0.6)
    assert row["std"] == pytest.approx(0.1)
    # percentile bootstrap over seeds: inside the range of the scores (a t-interval over 3 seeds, 0.6 +- 0.248,
    # is not), and it contains the mean
    assert 0.5 <= row["ci_low"] <= 0.6 <= row["ci_high"] <= 0.7


def test_two_seeds_never_give_an_interval_outside_the_metric_range():
    df = cells({1.0: 0.5}, {1.0: 0.5}, spread=(-0.45, 0.45))  # accuracy 0.05 and 0.95: t-interval [-5.2, 6.2]
    s = summarize(df, "score")
    assert s["ci_low"].between(0, 1).all() and s["ci_high"].between(0, 1).all()


def test_single_seed_has_no_interval():
    s = summarize(cells({1.0: 0.5}, {1.0: 0.4}, spread=(0.0,)), "score")
    assert s["n"].eq(1).all() and s["ci_low"].isna().all() and s["std"].isna().all()


def test_gains_and_best_cell():
    random = {f: 0.2 + 0.4 * f for f in FRACTIONS}
    ssl = {f: 0.45 + 0.3 * f for f in FRACTIONS}
    s = summarize(cells(ssl, random), "score")
    g = gains(s, "full")
    assert list(g) == FRACTIONS
    for f in FRACTIONS:
        assert g[f] == pytest.approx(ssl[f] - random[f])
    assert best_cell(s) == {"mode": "full", "init": "ssl", "fraction": 1.0, "mean": pytest.approx(0.75)}


def test_missing_values_and_columns():
    df = cells({1.0: 0.5}, {1.0: 0.4})
    df.loc[0, "score"] = np.nan  # a failed cell does not poison the mean
    s = summarize(df, "score")
    assert s[(s.init == "ssl")]["n"].iloc[0] == 2
    with pytest.raises(KeyError, match="score"):
        summarize(df.drop(columns="score"), "score")
