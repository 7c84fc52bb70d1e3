"""Prefect task: one fine-tuning cell as an MLflow run (``ecgmodel.ablation.runner.train_cell``).

Only a config dict, paths and ids go in; a small dict of metrics comes out. The MLflow run is created with an
explicit ``mlflow.parentRunId`` tag (``ecgmodel.ablation.tracking``), so cells in worker threads keep their parent.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ecgmodel.ablation.tracking import end_run, start_run

FINETUNE_TAG = "ecgssl-finetune"  # Prefect tag: a tag concurrency limit on it queues GPU runs across flows

__all__ = ["FINETUNE_TAG", "cell_name", "end_run", "finetune_task", "start_run"]


def cell_name(init: str, mode: str, fraction: float, seed: int) -> str:
    return f"{init}-{mode}-f{fraction:g}-s{seed}"


def retry_transient_only(task, task_run, state) -> bool:
    """Retry policy filter: a config or data error (ValueError incl. pydantic's, KeyError, missing file) fails
    identically on every attempt, so only other failures (I/O, a locked database, out of memory) are retried."""
    return not isinstance(state.data, ValueError | KeyError | FileNotFoundError)


@task(name="finetune", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, tags=[FINETUNE_TAG],
      retry_condition_fn=retry_transient_only)  # fmt: skip
def finetune_task(
    config: dict[str, Any],
    out_dir: str,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fine-tune per ``config`` (a FinetuneConfig dict) into ``out_dir``; logs a complete MLflow run.

    A failure marks the MLflow run FAILED and re-raises (Prefect retries once with a fresh run).
    """
    from prefect.runtime import flow_run

    from ecgmodel.ablation.runner import train_cell

    return train_cell(config, out_dir, parent_run_id, run_name, extra_tags, flow_run_id=flow_run.get_id())
