"""Prefect task: the ablation report on the parent MLflow run (tables, plot, headline metrics, description).

On the parent run:

* artifacts ``cells.csv`` (one row per child run), ``arm_contrasts.csv`` (pretext ablation: the SSL arms head to
  head, A - B with paired-bootstrap CIs; also a table in ``report.md``), ``summary.csv`` (mean / std / 95% t-interval over seeds per
  mode x init x fraction), ``evidence.csv`` (paired-bootstrap CIs of every SSL - random gain and of
  SSL(f) - random(100 %), per arm and mode), ``report.md`` and ``label_efficiency.png`` (curves + gains with CIs);
* metrics ``labels_to_match`` (non-inferiority; NaN = not reached) and ``gain_at_<f>`` / ``gain_ci_low_at_<f>`` /
  ``gain_ci_high_at_<f>`` for the headline arm and mode (``full`` when run), ``labels_to_match_<mode>`` and
  ``gain_<mode>_at_<f>`` (+ CI bounds) for every mode, with ``<arm>_`` in front for extra pretext arms;
* tags ``ecgssl.ablation_metric``, ``ecgssl.labels_to_match`` ("not reached" spelled out) and the run description
  (``mlflow.note.content``): the headline table, as the MLflow UI shows it on the run page.
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
    task_name: str = "arrhythmia27",
    arms: list[str] | None = None,
    margin: float = 0.01,
    bootstrap_samples: int = 1000,
    validation: str = "nested",
    overlap_note: str = "",
    schedules: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Summarise ``cells`` (finetune results with their ``out_dir``) on ``metric``; write + log the report."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ecgmodel.downstream.ablation import arm_contrasts, best_cell, evidence, metric_key, summarize
    from ecgmodel.downstream.report import (
        NOT_REACHED,
        contrasts_markdown,
        headline_markdown,
        significance_sentences,
    )
    from ecgmodel.plots_downstream import plot_label_efficiency

    arms = arms or ["ssl"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(cells)
    for col, default in ((metric, math.nan), ("out_dir", ""), ("error", "")):
        if col not in frame.columns:
            frame[col] = default
    cells_csv = out / "cells.csv"
    keep = [c for c in ["mode", "init", "fraction", "seed", "n_labelled", "n_val", "n_labels_used", metric,
                        "best_epoch", "lr", "encoder_lr_scale", "warmup_fraction", "run_id", "out_dir", "error"]
            if c in frame.columns]  # fmt: skip
    frame[keep].sort_values(["mode", "init", "fraction", "seed"]).to_csv(cells_csv, index=False)
    summary = summarize(frame, metric)
    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)

    tables, ltm = [], {}
    for i, arm in enumerate(arms):
        ev, by_mode = evidence(frame, task_name, metric, modes, margin, bootstrap_samples, seed=17 * i, ssl=arm)
        tables.append(ev)
        ltm.update({f"{arm}/{mode}": v for mode, v in by_mode.items()})
    ev_all = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    evidence_csv = out / "evidence.csv"
    ev_all.to_csv(evidence_csv, index=False)

    contrasts_csv = None
    if len(arms) > 1:  # pretext ablation: the arms head to head (joint first, so a pair reads joint - single task)
        order = sorted(arms, key=lambda a: not a.endswith("joint"))
        contrasts = arm_contrasts(frame, task_name, metric, modes, order, bootstrap_samples, seed=101)
        contrasts_csv = out / "arm_contrasts.csv"
        contrasts.to_csv(contrasts_csv, index=False)

    head, head_arm = headline_mode(modes), arms[0]
    fig = plot_label_efficiency(summary, metric, {m: ltm.get(f"{head_arm}/{m}", math.nan) for m in modes},
                                title=title, evidence=ev_all)  # fmt: skip
    plot = out / "label_efficiency.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    failed = int((frame["error"].astype(str) != "").sum()) if len(frame) else 0
    markdown = headline_markdown(task_name, metric, ev_all, ltm, margin, validation, bootstrap_samples,
                                 overlap_note, failed, len(frame), schedules)  # fmt: skip
    if contrasts_csv is not None:
        markdown += "\n\n" + contrasts_markdown(contrasts)
    report_md = out / "report.md"
    report_md.write_text(markdown + "\n")

    metrics: dict[str, float] = {"labels_to_match": ltm.get(f"{head_arm}/{head}", math.nan)}
    for arm in arms:
        prefix = "" if arm == head_arm else f"{arm}_"
        for mode in modes:
            metrics[f"{prefix}labels_to_match_{mode}"] = ltm.get(f"{arm}/{mode}", math.nan)
        part = ev_all[ev_all["arm"] == arm] if len(ev_all) else ev_all
        for row in part.itertuples(index=False):
            f = metric_key(row.fraction)
            names = [f"{prefix}gain_{row.mode}_at_{f}"] + ([f"gain_at_{f}"] if not prefix and row.mode == head else [])
            for name in names:
                metrics[name] = row.gain
                metrics[name.replace("gain_", "gain_ci_low_", 1)] = row.gain_ci_low
                metrics[name.replace("gain_", "gain_ci_high_", 1)] = row.gain_ci_high
    head_ltm = metrics["labels_to_match"]
    if parent_run_id:
        from mlflow.tracking import MlflowClient

        from ecgmodel.tracking import MLFLOW_WRITE_LOCK, MetricBuffer

        client = MlflowClient()
        with MLFLOW_WRITE_LOCK:
            buf = MetricBuffer(parent_run_id, client)
            buf.add(metrics, 0)  # NaN is logged as NaN ("not reached"), and spelled out in the tag below
            buf.flush()
            client.set_tag(parent_run_id, "ecgssl.ablation_metric", metric)
            client.set_tag(parent_run_id, "ecgssl.labels_to_match",
                           f"{head_ltm:g}" if math.isfinite(head_ltm) else NOT_REACHED)  # fmt: skip
            client.set_tag(parent_run_id, "ecgssl.headline_mode", head)
            client.set_tag(parent_run_id, "mlflow.note.content", markdown)
            for path in (cells_csv, summary_csv, evidence_csv, report_md, plot, contrasts_csv):
                if path is None:
                    continue
                client.log_artifact(parent_run_id, str(path))
    by_mode = {m: ltm.get(f"{head_arm}/{m}", math.nan) for m in modes}
    return {
        "labels_to_match": head_ltm,
        "labels_to_match_by_mode": by_mode,
        "labels_to_match_by_arm": ltm,
        "gains": {metric_key(r.fraction): r.gain for r in ev_all.itertuples(index=False)
                  if r.arm == head_arm and r.mode == head},
        "gain_ci": {metric_key(r.fraction): [r.gain_ci_low, r.gain_ci_high] for r in ev_all.itertuples(index=False)
                    if r.arm == head_arm and r.mode == head},
        "significant": {metric_key(r.fraction): bool(r.gain_significant) for r in ev_all.itertuples(index=False)
                        if r.arm == head_arm and r.mode == head},
        "statements": significance_sentences(ev_all, ltm),
        "summary_csv": str(summary_csv),
        "evidence_csv": str(evidence_csv),
        "cells_csv": str(cells_csv),
        "report_md": str(report_md),
        "markdown": markdown,
        "plot": str(plot),
        "best": best_cell(summary),
        "metric": metric,
    }
