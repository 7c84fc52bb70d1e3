"""Prefect task: one fine-tuning run as an MLflow run (a child of the ablation's parent run when given).

Only a config dict, paths and ids go in; a small dict of metrics comes out. The MLflow run is created with
``MlflowClient.create_run`` and an explicit ``mlflow.parentRunId`` tag: no global "active run" is involved, so
cells running in worker threads keep their parent (``mlflow.start_run(nested=True)`` loses it across threads).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

FINETUNE_TAG = "ecgssl-finetune"  # Prefect tag: a tag concurrency limit on it queues GPU runs across flows


def cell_name(init: str, mode: str, fraction: float, seed: int) -> str:
    return f"{init}-{mode}-f{fraction:g}-s{seed}"


def start_run(experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    """Create an MLflow run (RUNNING) under ``experiment``; returns its id."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK, setup_mlflow

    with MLFLOW_WRITE_LOCK:
        experiment_id = setup_mlflow(experiment)
        all_tags = {"mlflow.runName": run_name, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = MlflowClient().create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    with MLFLOW_WRITE_LOCK:
        MlflowClient().set_terminated(run_id, status=status)


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

    from ecgmodel.config import config_hash
    from ecgmodel.data.store import content_hash
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.downstream.finetune import finetune
    from ecgmodel.tracking import run_tags

    cfg = FinetuneConfig.model_validate(config)
    name = run_name or cell_name(cfg.init if cfg.init == "random" else "pretrained", cfg.mode, cfg.fraction, cfg.seed)
    tags = run_tags(
        config_hash=config_hash(cfg),
        store_hash=content_hash(cfg.store),
        store_path=cfg.store,
        flow_run_id=flow_run.get_id(),
        extra={"ecgssl.task": cfg.task, "ecgssl.metric": cfg.primary_metric, **(extra_tags or {})},
    )
    run_id = start_run(cfg.experiment, name, tags, parent_run_id)
    try:
        result = finetune(cfg, out_dir, run_id=run_id, progress=False)
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id, "FINISHED")
    return {**result, "run_id": run_id, "run_name": name}
