"""Prefect tasks: one pretraining run in-process (``ecgmodel.train.pretrain.train``) or under torchrun.

Paths, a preset name and overrides go in; a small dict (checkpoint path, encoder path/URI, MLflow run id,
final metrics) comes out. No caching: training resumes from its own checkpoint in ``out``, whatever the
orchestrator remembers, so a retry or a re-run after a crash continues where the last checkpoint left off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.retry import retry_unless_permanent, user_facing_os_errors

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_LAUNCHER = REPO_ROOT / "infra" / "torchrun" / "pretrain.sh"

PRETRAIN_TAG = "ecgssl-pretrain"  # a tag concurrency limit on it queues GPU runs across flows
# Bad settings, a folder another run trains into, a full or read-only disk: another attempt cannot fix them.
_NO_RETRY = retry_unless_permanent(ValueError, KeyError, TypeError)
_DISK_FIX = "free disk space or give a writable folder: ecgssl pretrain ... --out OTHER_DIR"


@task(name="pretrain", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, tags=[PRETRAIN_TAG],
      retry_condition_fn=_NO_RETRY)
def pretrain_task(
    store: str,
    preset: str = "smoke",
    overrides: dict[str, Any] | list[str] | None = None,
    resume: bool = True,
    out: str = "runs/pretrain",
) -> dict[str, Any]:
    """Pretrain on ``store`` into ``out`` (resuming from ``out/ckpt_last.pt`` when present and ``resume``)."""
    from prefect.runtime import flow_run

    from ecgmodel.train.out_lock import training_lock
    from ecgmodel.train.pretrain import build_config, train
    from tasks.progress import ProgressArtifact

    cfg = build_config(preset, overrides)
    progress = ProgressArtifact("pretrain-progress", "pretraining steps")
    # a Prefect retry always resumes: the first attempt's checkpoint is this run's own progress
    with user_facing_os_errors(_DISK_FIX), training_lock(out):
        result = train(cfg, store, out, resume=resume, flow_run_id=flow_run.get_id(), on_progress=progress)
    return {k: v for k, v in result.items() if k != "history"}


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30, retry_condition_fn=_NO_RETRY)
def torchrun_pretrain(
    store: str,
    preset: str,
    overrides: dict[str, Any] | None,
    resume: bool,
    out: str,
    nproc_per_node: int | None = None,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """Multi-process pretraining through ``infra/torchrun/pretrain.sh`` (DDP: one process per GPU).

    The training entry point resumes from ``<out>/ckpt_last.pt``, so the retry continues the interrupted run.
    Rank 0 prints its result as one JSON line last; that line is the task's result.
    """
    logger = get_run_logger()
    cmd = ["bash", str(TORCHRUN_LAUNCHER), "--store", store, "--preset", preset, "--out", out]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    if not resume:
        cmd.append("--no-resume")
    env = dict(os.environ, ECGSSL_HOME=str(REPO_ROOT))
    env.setdefault("PYTHON", sys.executable)  # the interpreter of this environment, not whatever is on PATH
    if nproc_per_node:
        env["NPROC_PER_NODE"] = str(nproc_per_node)
    if flow_run_id:
        env["PREFECT__FLOW_RUN_ID"] = flow_run_id  # ecgmodel.tracking.run_tags reads it: MLflow run tag
    logger.info("launching %s", " ".join(cmd))
    from ecgmodel.train.out_lock import training_lock

    with training_lock(Path(REPO_ROOT, out)):  # relative `out` is resolved in REPO_ROOT by the launcher
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchrun pretraining on {store} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    else:
        raise RuntimeError(f"torchrun pretraining printed no result line; output ends with:\n{proc.stdout[-2000:]}")
    if "encoder_path" not in result:
        raise RuntimeError(f"pretraining stopped at step {result.get('step')} without exporting an encoder")
    return result
