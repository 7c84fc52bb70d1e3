"""The pipeline's report, as pure functions: markdown summary, MLflow run links, table rows, flattened numbers.

The flow (``flows/pipeline.py``) gathers the stage results and publishes what these return as Prefect artifacts,
an MLflow artifact and the CLI's output.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ecgmodel.config import config_hash
from ecgmodel.pipeline_config import PipelineConfig


def numeric_items(obj: Any, prefix: str = "") -> dict[str, float]:
    """Flatten the numbers of a nested result (dicts / lists / scalars) into ``{"a.b": 1.0}``."""
    out: dict[str, float] = {}
    if isinstance(obj, bool) or obj is None:
        return out
    if isinstance(obj, int | float):
        if math.isfinite(float(obj)):
            out[prefix or "value"] = float(obj)
        return out
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):  # numpy scalar
        try:
            return numeric_items(obj.item(), prefix)
        except (TypeError, ValueError):
            return out
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else []
    for key, value in items:
        out.update(numeric_items(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    return "-" if value is None else str(value)


# the MLflow UI's query parameter for its model-training view (it otherwise may open an experiment in its GenAI view)
MLFLOW_TRAINING_VIEW = "workflowType=machine_learning"


def mlflow_run_link(uri: str, run_id: str | None, experiment_id: str | None = None) -> str:
    """Markdown link to an MLflow run in the UI's model-training view: a URL for a tracking server, the
    ``ecgssl ui`` URL for a local store."""
    if not run_id:
        return "-"
    anchor = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"#/runs/{run_id}"
    anchor += f"?{MLFLOW_TRAINING_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"[{run_id}]({uri.rstrip('/')}/{anchor})"
    return f"[{run_id}](http://127.0.0.1:5000/{anchor}) (start `ecgssl ui` first)"


def _gain_text(res: dict[str, Any], f: str, g: Any) -> str:
    """One fraction's gain: withheld (a budget-limited arm, an edge-of-grid schedule: the number stays in MLflow),
    too few test records, or the value with its CI."""
    ci, sig, withheld = res.get("gain_ci") or {}, res.get("significant") or {}, res.get("withheld") or {}
    if withheld.get(f):
        return f"{f}: {withheld[f]}"
    if f in ci and all(isinstance(v, float) and math.isfinite(v) for v in [g, *ci[f]]):
        return f"{f}: {g:+.3f} [{ci[f][0]:+.3f}, {ci[f][1]:+.3f}]{'' if sig.get(f) else ' (not significant)'}"
    return f"{f}: {_fmt(g)}"


def render_summary(
    cfg: PipelineConfig,
    uri: str,
    ingested: dict[str, Any],
    pretrained: dict[str, Any],
    ablations: dict[str, dict[str, Any]],
    n_windows: int | None,
    flow_run_id: str | None,
    experiment_ids: dict[str, str | None] | None = None,
    seconds: dict[str, float] | None = None,
    failures: list[str] | None = None,
) -> str:
    """The markdown summary of one pipeline run (Prefect artifact, MLflow artifact, CLI output).

    ``failures``: one line per stage that failed (a source not fetched, fine-tuning cells that failed); they
    head the summary, so a run that ends Failed says why where its numbers are shown."""
    exp = experiment_ids or {}
    lines = ["# ecgssl pipeline", ""]
    if failures:
        lines += ["**The run failed:**", ""] + [f"- {line}" for line in failures] + [""]
    lines += [
        f"- config hash `{config_hash(cfg)}`; Prefect flow run `{flow_run_id or '-'}`",
        f"- store `{cfg.ingest.store}`: content hash `{ingested.get('store_hash', '-')}`, "
        f"{n_windows if n_windows is not None else '?'} windows from {', '.join(cfg.ingest.sources)}",
        f"- encoder `{pretrained.get('encoder_path', '-')}`; pretraining run "
        f"{mlflow_run_link(uri, pretrained.get('run_id'), exp.get(str(pretrained.get('run_id'))))}",
        f"- MLflow tracking URI `{uri}`",
    ]
    if seconds:
        lines.append("- stage wall time (cached stages take seconds): "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    lines.append("")
    if ingested.get("failed_sources"):
        lines += [f"> Sources that could not be fetched: {_fmt(ingested['failed_sources'])}", ""]
    if n_windows is not None and n_windows < 2000:
        lines += [
            f"> These numbers come from only {n_windows} windows: they are noisy and show that the pipeline",
            "> runs end to end; they are not evidence about label efficiency. Run on full databases for that.",
            "",
        ]
    for name, res in ablations.items():
        parent = res.get("parent_run_id")
        gains = ", ".join(_gain_text(res, f, g) for f, g in (res.get("gains") or {}).items()) or "-"
        limited = {k: v for k, v in (res.get("budget_limited") or {}).items() if v}
        lines += [
            f"## {name}",
            "",
            "| headline | value |",
            "|---|---|",
            f"| labels to match (smallest label fraction from which SSL is non-inferior to random init on all "
            f"labels: 95% CI, margin {_fmt(cfg.ablation.margin)}) "
            f"| {res.get('labels_to_match_text') or _fmt(res.get('labels_to_match'))} |",
            f"| gains (SSL - random per fraction, hierarchical paired-bootstrap 95% CI) | {gains} |",
            f"| budget-limited cells (arm/mode: count) | {_fmt(limited) if limited else 'none'} |",
            f"| report folder (`ecgssl report` re-derives it) | `{_fmt(res.get('report_dir'))}` |",
            f"| best | {_fmt(res.get('best'))} |",
            f"| MLflow parent run | {mlflow_run_link(uri, parent, exp.get(str(parent)))} |",
            f"| experiment | {_fmt(res.get('experiment'))} |",
            f"| summary table | `{_fmt(res.get('summary_csv'))}` |",
            f"| label-efficiency plot | `{_fmt(res.get('plot'))}` |",
            "",
        ]
        if res.get("pretrain_overlap"):
            lines += [f"> {res['pretrain_overlap']}", ""]
        lines += [f"- {line}" for line in res.get("statements") or []]
        lines += [""] if res.get("statements") else []
    return "\n".join(lines)


def table_records(
    summary_csv: str | None, metric: str | None = None, digits: int = 4, max_rows: int = 500
) -> list[dict[str, Any]]:
    """The ablation summary CSV as JSON-safe row dicts for a Prefect table artifact
    (``ecgmodel.downstream.report.table_rows``, the one table function)."""
    if not summary_csv or not Path(summary_csv).is_file():
        return []
    import pandas as pd

    from ecgmodel.downstream.report import table_rows

    return table_rows(pd.read_csv(summary_csv).head(max_rows), metric, digits)
