"""The ablation's MLflow conventions, defined once: the ``ecgssl.*`` tag names, run creation, child-run search and
what resume reads back.

Runs are created with ``MlflowClient.create_run`` and an explicit ``mlflow.parentRunId`` tag: no global "active
run", so cells training in worker threads keep their parent.
"""

from __future__ import annotations

import math
from typing import Any

from ecgmodel.ablation.cell import CELL, Cell

# ---------------------------------------------------------------------------------------------- tag names
ROLE = "ecgssl.role"  # "ablation-parent" on the parent run
PARENT_ROLE = "ablation-parent"
ABLATION_HASH = "ecgssl.ablation_hash"
ABLATION_METRIC = "ecgssl.ablation_metric"
TASK = "ecgssl.task"
CELL_ROLE = "ecgssl.cell_role"  # tuning | cell
CELL_INIT = "ecgssl.cell_init"  # the arm
PRETRAIN_ID = "ecgssl.pretrain_id"  # content digest of the pretraining run's encoder ("" when not pretrained)
PRETRAIN_REF = "ecgssl.pretrain_ref"  # the reference given (path / URI), informative only
GRID_INDEX = "ecgssl.grid_index"
OUT_DIR = "ecgssl.out_dir"
BUDGET_LIMITED = "ecgssl.budget_limited"  # "true" / "false", set by fine-tuning
GRID_EDGE = "ecgssl.grid_edge"  # "true" when the linear probe's regularisation was chosen at its grid edge
LABELS_TO_MATCH = "ecgssl.labels_to_match"
HEADLINE_MODE = "ecgssl.headline_mode"
WITHHELD = "ecgssl.withheld"
REPORT_DIR = "ecgssl.report_dir"
PRETRAIN_OVERLAP = "ecgssl.pretrain_overlap"
NOTE = "mlflow.note.content"  # the run description the MLflow UI shows on the run page
PARENT = "mlflow.parentRunId"

RESULT_METRIC_PREFIXES = ("best_", "test_")
EXTRA_METRICS = ("epochs_trained", "n_labels_used", "n_val")


def start_run(experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    """Create an MLflow run (RUNNING) under ``experiment``; returns its id."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK, setup_mlflow

    with MLFLOW_WRITE_LOCK:
        experiment_id = setup_mlflow(experiment)
        all_tags = {"mlflow.runName": run_name, **tags}
        if parent_run_id:
            all_tags[PARENT] = parent_run_id
        run = MlflowClient().create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    with MLFLOW_WRITE_LOCK:
        MlflowClient().set_terminated(run_id, status=status)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    with MLFLOW_WRITE_LOCK:
        client = MlflowClient()
        for k, v in tags.items():
            client.set_tag(run_id, k, str(v)[:5000])


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log params once (a resumed run already has them: params are immutable, the second write is skipped)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    with MLFLOW_WRITE_LOCK:
        try:
            MlflowClient().log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        except Exception:  # already logged by the run being resumed
            pass


def cell_tags(cell: Cell, ablation_hash: str, out_dir: str) -> dict[str, str]:
    return {CELL_INIT: cell.arm, CELL_ROLE: cell.role, PRETRAIN_ID: cell.pretrain_id, PRETRAIN_REF: cell.pretrain_ref,
            GRID_INDEX: str(cell.grid), ABLATION_HASH: ablation_hash, OUT_DIR: out_dir}  # fmt: skip


def resumable_parent(experiment: str, ablation_hash: str) -> str | None:
    """The newest parent run with these settings when it did not finish (None otherwise)."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import setup_mlflow

    exp_id = setup_mlflow(experiment)
    runs = MlflowClient().search_runs(
        [exp_id], filter_string=f"tags.`{ABLATION_HASH}` = '{ablation_hash}' and tags.`{ROLE}` = '{PARENT_ROLE}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    if runs and runs[0].info.status != "FINISHED":
        return runs[0].info.run_id
    return None


def children(experiment: str, parent_run_id: str, status: str | None = None) -> list:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import setup_mlflow

    exp_id = setup_mlflow(experiment)
    flt = f"tags.`{PARENT}` = '{parent_run_id}'" + (f" and attributes.status = '{status}'" if status else "")
    return MlflowClient().search_runs([exp_id], filter_string=flt, max_results=5000)


def kill_stale_children(experiment: str, parent_run_id: str) -> list[str]:
    """Mark the child runs a killed process left RUNNING as KILLED (on resume); returns their ids."""
    stale = [r.info.run_id for r in children(experiment, parent_run_id, "RUNNING")]
    for run_id in stale:
        end_run(run_id, "KILLED")
    return stale


def result_row(run) -> tuple[tuple, dict[str, Any]] | None:
    """(cell key, result row) of a finished child run, as the runner's results look; None if not a cell."""
    p, tags, m = run.data.params, run.data.tags, run.data.metrics
    try:
        cell = Cell(tags.get(CELL_ROLE, CELL), tags[CELL_INIT], tags.get(PRETRAIN_ID, ""), p["mode"],
                    float(p["fraction"]), int(p["seed"]), int(tags.get(GRID_INDEX, -1)))  # fmt: skip
    except (KeyError, ValueError):
        return None
    row: dict[str, Any] = {**cell.row(), "n_labelled": int(p.get("n_labelled", 0)), "run_id": run.info.run_id,
                           "out_dir": tags.get(OUT_DIR, "")}  # fmt: skip
    for k in ("lr", "encoder_lr_scale", "warmup_fraction"):
        if f"optim.{k}" in p:
            row[k] = float(p[f"optim.{k}"])
    row.update({k: v for k, v in m.items() if k.startswith(RESULT_METRIC_PREFIXES) or k in EXTRA_METRICS})
    if BUDGET_LIMITED in tags:
        row["budget_limited"] = tags[BUDGET_LIMITED] == "true"
    if GRID_EDGE in tags:
        row["grid_edge"] = tags[GRID_EDGE] == "true"
    return cell.key, row


def finished_cells(experiment: str, parent_run_id: str) -> dict[tuple, dict[str, Any]]:
    """Finished child runs of ``parent_run_id``: cell key -> result row (for resuming)."""
    out = {}
    for run in children(experiment, parent_run_id, "FINISHED"):
        item = result_row(run)
        if item is not None:
            out[item[0]] = item[1]
    return out


def log_parent_metrics(run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK, MetricBuffer

    with MLFLOW_WRITE_LOCK:
        buf = MetricBuffer(run_id, MlflowClient())
        buf.add({k: float(v) for k, v in metrics.items() if v is not None and not isinstance(v, str)}, 0)
        buf.flush()


def log_artifacts(run_id: str, paths: list[str]) -> None:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    with MLFLOW_WRITE_LOCK:
        for path in paths:
            MlflowClient().log_artifact(run_id, path)


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
