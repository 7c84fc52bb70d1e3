"""Summary maths of a label-efficiency ablation: per-cell results -> the figures users come for.

Input: one row per fine-tuning run (cell) with ``mode``, ``init``, ``fraction``, ``seed`` and the metric.
Output:

* :func:`summarize`: per (mode, init, fraction) the number of seeds, mean, standard deviation and a 95%
  Student-t confidence interval of the mean over seeds (NaN half-width with a single seed);
* :func:`labels_to_match`: the smallest fraction at which the SSL mean reaches the random-init mean at 100%
  of the labels (NaN if it never does, or when there is no random run at 100%);
* :func:`gains`: SSL mean minus random mean at every fraction both have.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

SSL = "ssl"
RANDOM = "random"


def summarize(cells: pd.DataFrame, metric: str, confidence: float = 0.95) -> pd.DataFrame:
    """mode, init, fraction, n, mean, std, ci_low, ci_high of ``metric`` over seeds (sorted by fraction)."""
    missing = {"mode", "init", "fraction", metric} - set(cells.columns)
    if missing:
        raise KeyError(f"ablation cells lack columns {sorted(missing)}")
    rows = []
    for (mode, init, fraction), group in cells.groupby(["mode", "init", "fraction"], sort=True):
        values = group[metric].astype(float).dropna().to_numpy()
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        std = float(values.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        rows.append({"mode": mode, "init": init, "fraction": float(fraction), "n": n, "mean": mean, "std": std,
                     "ci_low": mean - half, "ci_high": mean + half})  # fmt: skip
    columns = ["mode", "init", "fraction", "n", "mean", "std", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def _curve(summary: pd.DataFrame, mode: str, init: str) -> pd.Series:
    part = summary[(summary["mode"] == mode) & (summary["init"] == init)]
    return part.set_index("fraction")["mean"].sort_index()


def labels_to_match(summary: pd.DataFrame, mode: str, ssl: str = SSL, random: str = RANDOM) -> float:
    """Smallest fraction where the SSL mean >= the random-init mean at fraction 1.0; NaN if never."""
    rand = _curve(summary, mode, random)
    ssl_curve = _curve(summary, mode, ssl)
    if 1.0 not in rand.index or not np.isfinite(rand.loc[1.0]):
        return math.nan
    reached = ssl_curve[ssl_curve >= rand.loc[1.0]]
    return float(reached.index.min()) if len(reached) else math.nan


def gains(summary: pd.DataFrame, mode: str, ssl: str = SSL, random: str = RANDOM) -> dict[float, float]:
    """``{fraction: ssl_mean - random_mean}`` for the fractions both inits have."""
    rand = _curve(summary, mode, random)
    ssl_curve = _curve(summary, mode, ssl)
    common = sorted(set(rand.index) & set(ssl_curve.index))
    return {float(f): float(ssl_curve.loc[f] - rand.loc[f]) for f in common}


def best_cell(summary: pd.DataFrame) -> dict[str, object]:
    """The (mode, init, fraction) with the highest mean, as a small dict."""
    if summary.empty or summary["mean"].isna().all():
        return {}
    row = summary.loc[summary["mean"].idxmax()]
    return {"mode": row["mode"], "init": row["init"], "fraction": float(row["fraction"]), "mean": float(row["mean"])}


def metric_key(fraction: float) -> str:
    """MLflow-safe name of a per-fraction metric suffix: 0.05 -> '0.05', 1.0 -> '1'."""
    return f"{fraction:g}"
