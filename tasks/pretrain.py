"""Prefect task: one pretraining run (``ecgmodel.train.pretrain.train``).

Paths, a preset name and overrides go in; a small dict (checkpoint path, encoder path/URI, MLflow run id,
final metrics) comes out. No caching: training resumes from its own checkpoint in ``out``, whatever the
orchestrator remembers, so a retry or a re-run after a crash continues where the last checkpoint left off.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

PRETRAIN_TAG = "ecgssl-pretrain"  # a tag concurrency limit on it queues GPU runs across flows


@task(name="pretrain", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, tags=[PRETRAIN_TAG])
def pretrain_task(
    store: str,
    preset: str = "smoke",
    overrides: dict[str, Any] | list[str] | None = None,
    resume: bool = True,
    out: str = "runs/pretrain",
) -> dict[str, Any]:
    """Pretrain on ``store`` into ``out`` (resuming from ``out/ckpt_last.pt`` when present and ``resume``)."""
    from prefect.runtime import flow_run

    from ecgmodel.train.pretrain import build_config, train

    cfg = build_config(preset, overrides)
    # a Prefect retry always resumes: the first attempt's checkpoint is this run's own progress
    result = train(cfg, store, out, resume=resume, flow_run_id=flow_run.get_id())
    return {k: v for k, v in result.items() if k != "history"}
