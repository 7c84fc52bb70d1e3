"""Summary maths of a label-efficiency ablation: per-cell results -> the figures users come for.

Input: one row per fine-tuning run (cell) with ``mode``, ``init``, ``fraction``, ``seed`` and the metric.
Output:

* :func:`summarize`: per (mode, init, fraction) the number of cells, mean, standard deviation and a 95% bootstrap
  interval over pretraining runs and seeds (inside the metric's range; NaN with a single cell);
* :func:`gains`: SSL mean minus random mean at every fraction both have (point estimates);
* :func:`choose_schedule`: the per-arm schedule picked on the validation split from the tuning runs, and
  :func:`schedule_edges`: whether that choice sits at the edge of the grid.

The CIs of gains and ``labels_to_match`` (hierarchical paired bootstrap over the saved test predictions) are in
``ecgmodel.ablation.report``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SSL = "ssl"
RANDOM = "random"


def summarize(cells: pd.DataFrame, metric: str, confidence: float = 0.95, n_boot: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """mode, init, fraction, n, mean, std, ci_low, ci_high of ``metric`` over the cells (sorted by fraction).

    ``mean`` is the mean over pretraining runs (column ``pretrain_id`` when present) of the mean over seeds; the
    interval is a percentile bootstrap over pretraining runs and seeds (``ecgmodel.metrics.bootstrap.
    seed_interval``), so it stays inside the range of the scores (a t-interval over 2 seeds does not); NaN with one
    cell. ``n_budget_limited``: cells whose best epoch fell in the last patience window of the epoch ceiling."""
    from ecgmodel.metrics.bootstrap import seed_interval

    missing = {"mode", "init", "fraction", metric} - set(cells.columns)
    if missing:
        raise KeyError(f"ablation cells lack columns {sorted(missing)}")
    rows = []
    for (mode, init, fraction), group in cells.groupby(["mode", "init", "fraction"], sort=True):
        group = group[group[metric].astype(float).notna()]
        runs = group["pretrain_id"].fillna("").astype(str) if "pretrain_id" in group else pd.Series("", group.index)
        values = {(r, int(s)): float(v) for r, s, v in zip(runs, group["seed"], group[metric], strict=True)} \
            if "seed" in group else {("", i): float(v) for i, v in enumerate(group[metric])}  # fmt: skip
        n = len(values)
        per_run = pd.Series(list(values.values()), index=[r for r, _ in values]).groupby(level=0).mean()
        mean = float(per_run.mean()) if n else math.nan
        std = float(np.std(list(values.values()), ddof=1)) if n > 1 else math.nan
        lo, hi = seed_interval(values, n_boot, confidence, seed)
        limited = int(group["budget_limited"].astype(bool).sum()) if "budget_limited" in group else 0
        rows.append({"mode": mode, "init": init, "fraction": float(fraction), "n": n, "mean": mean, "std": std,
                     "ci_low": lo, "ci_high": hi, "n_budget_limited": limited})  # fmt: skip
    columns = ["mode", "init", "fraction", "n", "mean", "std", "ci_low", "ci_high", "n_budget_limited"]
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


def schedule_edges(grid: list[dict[str, float]], chosen: dict[tuple[str, str], dict[str, float]]) -> dict[
        tuple[str, str], bool]:
    """Per (arm, mode): True when the chosen learning rate is the smallest or the largest of the grid's (two or
    more) distinct learning rates: the best schedule may lie outside the grid, so its verdicts are withheld."""
    lrs = sorted({float(g["lr"]) for g in grid})
    if len(lrs) < 2:
        return {k: False for k in chosen}
    return {k: float(v["lr"]) in (lrs[0], lrs[-1]) for k, v in chosen.items()}


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
