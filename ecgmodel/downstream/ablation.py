"""Summary maths of a label-efficiency ablation: per-cell results -> the figures users come for.

Input: one row per fine-tuning run (cell) with ``mode``, ``init``, ``fraction``, ``seed`` and the metric.
Output:

* :func:`summarize`: per (mode, init, fraction) the number of seeds, mean, standard deviation and a 95%
  Student-t confidence interval of the mean over seeds (NaN half-width with a single seed);
* :func:`gains`: SSL mean minus random mean at every fraction both have (point estimates);
* :func:`evidence`: the figures a reviewer checks, from the cells' saved test predictions: per mode and fraction
  the paired-bootstrap CI of SSL - random (the gain) and of SSL(f) - random(100 %), and the non-inferiority
  ``labels_to_match`` (``ecgmodel.metrics.bootstrap.labels_to_match``: NaN = "not reached");
* :func:`arm_contrasts`: pretext ablation, every pair of SSL arms head to head (A - B with its CI);
* :func:`choose_schedule`: the per-init schedule picked on the validation split from the tuning runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ecgmodel.metrics.bootstrap import paired_bootstrap

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


def evidence(
    cells: pd.DataFrame,
    task: str,
    metric: str,
    modes: list[str],
    margin: float,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    ssl: str = SSL,
    random: str = RANDOM,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Paired-bootstrap table and non-inferiority ``labels_to_match`` per mode (see the module docstring).

    ``cells``: one row per finished run with mode, init, fraction, seed and ``out_dir`` (where the run saved
    ``test_predictions.npz``). Rows: mode, fraction, gain (SSL - random at f) with its CI and whether the CI
    excludes 0, and ``vs_full`` (SSL(f) - random(100 %)) with its CI and whether its lower bound clears -margin.
    """
    from ecgmodel.metrics.bootstrap import (
        PREDICTIONS_FILE,
        labels_to_match,
        load_predictions,
        metric_function,
        prepare,
    )

    fn = metric_function(task, metric)
    cache: dict[str, object] = {}

    def arm(mode: str, init: str, fraction: float) -> list:
        part = cells[(cells["mode"] == mode) & (cells["init"] == init)
                     & np.isclose(cells["fraction"].astype(float), fraction)]  # fmt: skip
        if "error" in part:
            part = part[part["error"].isna() | (part["error"].astype(str) == "")]
        out = []
        for _, row in part.sort_values("seed").iterrows():
            path = Path(str(row.get("out_dir", ""))) / PREDICTIONS_FILE
            if path.is_file():
                key = str(path)
                if key not in cache:
                    cache[key] = prepare(load_predictions(path), metric)
                out.append(cache[key])
        return out

    rows, ltm = [], {}
    for mode in modes:
        fracs = sorted(set(cells.loc[(cells["mode"] == mode) & (cells["init"] == ssl), "fraction"].astype(float))
                       & set(cells.loc[(cells["mode"] == mode) & (cells["init"] == random), "fraction"].astype(float)))
        reference = arm(mode, random, 1.0)
        lower: dict[float, float] = {}
        for i, f in enumerate(fracs):
            ssl_arm = arm(mode, ssl, f)
            g = paired_bootstrap(ssl_arm, arm(mode, random, f), fn, n_boot, confidence, seed + i)
            v = paired_bootstrap(ssl_arm, reference, fn, n_boot, confidence, seed + 1000 + i)
            lower[f] = v["ci_low"]
            rows.append({"arm": ssl, "mode": mode, "fraction": f, "gain": g["estimate"], "gain_ci_low": g["ci_low"],
                         "gain_ci_high": g["ci_high"], "gain_significant": _excludes_zero(g),
                         "vs_full": v["estimate"], "vs_full_ci_low": v["ci_low"], "vs_full_ci_high": v["ci_high"],
                         "non_inferior": bool(math.isfinite(v["ci_low"]) and v["ci_low"] >= -margin),
                         "n_test_records": g["n_records"], "n_seeds": g["n_seeds_a"], "n_boot": g["n_boot"]})  # fmt: skip
        ltm[mode] = labels_to_match(lower, margin) if reference else math.nan
    columns = ["arm", "mode", "fraction", "gain", "gain_ci_low", "gain_ci_high", "gain_significant", "vs_full",
               "vs_full_ci_low", "vs_full_ci_high", "non_inferior", "n_test_records", "n_seeds", "n_boot"]
    return pd.DataFrame(rows, columns=columns), ltm


def arm_contrasts(
    cells: pd.DataFrame, task: str, metric: str, modes: list[str], arms: list[str], n_boot: int = 1000,
    seed: int = 0, confidence: float = 0.95,
) -> pd.DataFrame:
    """Pretext ablation: every pair of SSL arms compared head to head (A - B per mode and fraction, paired bootstrap
    over the same test records and seeds as :func:`evidence`), e.g. ssl-joint - ssl-mask. Arms earlier in
    ``arms`` come first in a pair. Empty with fewer than two arms."""
    rows = []
    columns = ["a", "b", "mode", "fraction", "diff", "ci_low", "ci_high", "significant", "n_test_records", "n_seeds"]
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            ev, _ = evidence(cells, task, metric, modes, 0.0, n_boot, seed=seed + 31 * len(rows), confidence=confidence,
                             ssl=a, random=b)  # fmt: skip
            for r in ev.itertuples(index=False):
                rows.append({"a": a, "b": b, "mode": r.mode, "fraction": r.fraction, "diff": r.gain,
                             "ci_low": r.gain_ci_low, "ci_high": r.gain_ci_high, "significant": r.gain_significant,
                             "n_test_records": r.n_test_records, "n_seeds": r.n_seeds})  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _excludes_zero(ci: dict[str, float]) -> bool:
    lo, hi = ci["ci_low"], ci["ci_high"]
    return bool(math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0))


def choose_schedule(tuning: pd.DataFrame, score: str) -> dict[tuple[str, str], dict[str, float]]:
    """Per (init, mode), the schedule (lr, encoder_lr_scale, warmup_fraction) with the best validation ``score``
    among the tuning runs (rows with init, mode, lr, encoder_lr_scale, warmup_fraction and ``score``); ties and
    failed runs: the first grid point wins. Raises when an (init, mode) has no finite score."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (init, mode), part in tuning.groupby(["init", "mode"], sort=True):
        values = part[score].astype(float) if score in part else pd.Series(dtype=float)
        if not np.isfinite(values).any():
            raise ValueError(f"schedule tuning for init {init!r} mode {mode!r}: no run produced a finite {score} "
                             "(all tuning runs failed; see their errors)")  # fmt: skip
        best = part.loc[values.fillna(-np.inf).idxmax()]
        out[(str(init), str(mode))] = {k: float(best[k]) for k in ("lr", "encoder_lr_scale", "warmup_fraction")}
    return out


def pretraining_overlap(cfg, encoder_ref: str, tracking_uri: str | None = None) -> dict:
    """How many of the task's val/test recordings (``cfg``: a FinetuneConfig) the encoder was pretrained on.

    ``known`` is False when the encoder does not say what it saw (no ``pretrain_records.csv`` beside it)."""
    from ecgmodel.data.split_assignment import read_seen, seen_overlap
    from ecgmodel.downstream.dataset import labelled_records

    return seen_overlap(read_seen(encoder_ref, tracking_uri), labelled_records(cfg)["records"])


def cell_config(base, init_ref: str, mode: str, fraction: float, seed: int, schedule) -> dict:
    """The FinetuneConfig dict of one cell: ``base`` with its init (``random`` or an encoder reference), mode,
    fraction, seed and the schedule chosen for that init (lr, encoder_lr_scale, warmup_fraction)."""
    from ecgmodel.downstream.config import FinetuneConfig

    data = base.model_copy(update={"init": init_ref, "mode": mode, "fraction": fraction, "seed": seed}).model_dump(
        mode="json")  # fmt: skip
    data["optim"].update(lr=schedule.lr, encoder_lr_scale=schedule.encoder_lr_scale,
                         warmup_fraction=schedule.warmup_fraction)  # fmt: skip
    return FinetuneConfig.model_validate(data).model_dump(mode="json")
