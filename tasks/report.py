"""Prefect task: the ablation report on the parent MLflow run (summary CSV, label-efficiency plot, headline metrics).

On the parent run:

* artifacts ``cells.csv`` (one row per child run), ``summary.csv`` (mean / std / 95% CI over seeds per
  mode x init x fraction) and ``label_efficiency.png``;
* metrics ``labels_to_match`` and ``gain_at_<fraction>`` for the headline mode (``full`` when run, else the first
  mode), ``labels_to_match_<mode>`` / ``gain_<mode>_at_<fraction>`` for every mode;
* param and tag ``ecgssl.ablation_metric``: which metric the figures use (``test_challenge_score`` for
  arrhythmia27, ``test_accuracy`` for localization).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE


def headline_mode(modes: list[str]) -> str:
    return "full" if "full" in modes else modes[0]


@task(name="ablation-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def ablation_report(
    cells: list[dict[str, Any]],
    metric: str,
    modes: list[str],
    out_dir: str,
    parent_run_id: str | None = None,
    title: str = "Label efficiency",
) -> dict[str, Any]:
    """Summarise ``cells`` (finetune results) on ``metric``; write + log the report; return the headline."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ecgmodel.downstream.ablation import best_cell, gains, labels_to_match, metric_key, summarize
    from ecgmodel.plots_downstream import plot_label_efficiency

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(cells)
    if metric not in frame.columns:
        frame[metric] = math.nan
    cells_csv = out / "cells.csv"
    keep = [c for c in ["mode", "init", "fraction", "seed", "n_labelled", metric, "best_epoch", "run_id", "error"]
            if c in frame.columns]  # fmt: skip
    frame[keep].sort_values(["mode", "init", "fraction", "seed"]).to_csv(cells_csv, index=False)
    summary = summarize(frame, metric)
    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    ltm = {mode: labels_to_match(summary, mode) for mode in modes}
    gain = {mode: gains(summary, mode) for mode in modes}
    fig = plot_label_efficiency(summary, metric, ltm, title=title)
    plot = out / "label_efficiency.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)

    head = headline_mode(modes)
    metrics: dict[str, float] = {}
    metrics["labels_to_match"] = ltm[head]  # NaN when SSL never reaches full-label random init
    for f, g in gain[head].items():
        metrics[f"gain_at_{metric_key(f)}"] = g
    for mode in modes:
        metrics[f"labels_to_match_{mode}"] = ltm[mode]
        for f, g in gain[mode].items():
            metrics[f"gain_{mode}_at_{metric_key(f)}"] = g
    if parent_run_id:
        from mlflow.tracking import MlflowClient

        from ecgmodel.tracking import MLFLOW_WRITE_LOCK, MetricBuffer

        client = MlflowClient()
        with MLFLOW_WRITE_LOCK:
            buf = MetricBuffer(parent_run_id, client)
            # NaN is logged as NaN ("never matched"; MLflow stores it), and spelled out in the tag below
            buf.add(metrics, 0)
            buf.flush()
            client.set_tag(parent_run_id, "ecgssl.ablation_metric", metric)
            client.set_tag(parent_run_id, "ecgssl.labels_to_match", f"{ltm[head]:g}" if math.isfinite(ltm[head]) else "never")
            client.set_tag(parent_run_id, "ecgssl.headline_mode", head)
            for path in (cells_csv, summary_csv, plot):
                client.log_artifact(parent_run_id, str(path))
    return {
        "labels_to_match": ltm[head],
        "labels_to_match_by_mode": ltm,
        "gains": {metric_key(f): g for f, g in gain[head].items()},
        "gains_by_mode": {m: {metric_key(f): g for f, g in v.items()} for m, v in gain.items()},
        "summary_csv": str(summary_csv),
        "cells_csv": str(cells_csv),
        "plot": str(plot),
        "best": best_cell(summary),
        "metric": metric,
    }
