"""Pipeline stages as cached Prefect tasks: ingest -> pretrain -> ablation.

Each stage wraps the flow that owns the work (``flows.ingest`` / ``flows.pretrain`` / ``flows.ablation``; they
run as nested flow runs under the stage's task run) and adds stage-level caching, so a re-run of the pipeline
after a crash or a schedule tick continues instead of redoing finished stages.

Why the cache keys carry *state*, not only inputs: an inputs-only key stays "Cached" after the output it
produced was deleted or changed. So every stage takes the fingerprint of what the previous stage produced as
an explicit input (the mirror's checksum listings for ingest, the store's content hash for pretraining, the
encoder file's sha256 for the ablations), and the pipeline checks the cached output still matches the
world (:func:`store_fingerprint`, :func:`file_fingerprint`, :func:`mlflow_run_exists`) before trusting it;
when it does not, the stage is re-run with ``refresh_cache=True``.

Only paths, hashes and small records cross these task boundaries, never arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_LAUNCHER = REPO_ROOT / "infra" / "torchrun" / "pretrain.sh"

# Cached stage results live in the Prefect result storage (PREFECT_HOME/storage by default; point
# PREFECT_RESULTS_LOCAL_STORAGE_PATH or a storage block at shared storage when workers run on several hosts).
STAGE_CACHE = INPUTS + TASK_SOURCE
STAGE_CACHE_EXPIRATION = timedelta(days=30)


def _sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


@task(cache_policy=NO_CACHE)
def mirror_fingerprint(mirror: str, sources: list[str]) -> str:
    """Hash of the ``SHA256SUMS.txt`` listings of ``sources`` in a local mirror (or the URL for a remote one).

    A local mirror that gains or changes records gets a new fingerprint, so ingest runs again; a remote mirror
    is identified by its URL (its content is versioned by the slug/version folders).
    """
    root = Path(mirror.removeprefix("file://"))
    digest = hashlib.sha256()
    if not root.is_dir():
        digest.update(f"url:{mirror}|{sorted(sources)}".encode())
        return digest.hexdigest()[:16]
    for slug in sorted(sources):
        listings = sorted((root / slug).glob("*/SHA256SUMS.txt"))
        if not listings:
            digest.update(f"{slug}:missing".encode())
        for listing in listings:
            digest.update(f"{listing.relative_to(root).as_posix()}:{_sha256_file(listing)}".encode())
    return digest.hexdigest()[:16]


@task(cache_policy=NO_CACHE)
def store_fingerprint(store: str) -> str | None:
    """The store's content hash (from its commit manifest), or ``None`` when there is no committed store."""
    from ecgmodel.data.store import StoreError, content_hash

    try:
        return content_hash(store)
    except (FileNotFoundError, StoreError, OSError, KeyError, ValueError):
        return None


@task(cache_policy=NO_CACHE)
def file_fingerprint(path: str | None) -> str | None:
    """sha256 of a file (first 16 hex digits), ``None`` when it does not exist."""
    if not path or not Path(path).is_file():
        return None
    return _sha256_file(Path(path))[:16]


@task(cache_policy=NO_CACHE)
def mlflow_run_exists(run_id: str | None, tracking_uri: str) -> bool:
    """True when ``run_id`` exists (and is not deleted) in the MLflow store at ``tracking_uri``."""
    if not run_id:
        return False
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"


@task(cache_policy=STAGE_CACHE, cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def ingest_stage(ingest: dict[str, Any], mirror_state: str) -> dict[str, Any]:
    """Download + convert into the store (``flows.ingest.ingest_flow``). Key: config + mirror listings.

    A source that could not be fetched fails the stage (a failed task run is never cached), so the next run
    retries it instead of training on partial data for the cache's lifetime.
    """
    from flows.ingest import ingest_flow

    summary = dict(ingest_flow(**ingest))
    if summary.get("failed_sources"):
        raise RuntimeError(f"ingest: source(s) could not be fetched: {summary['failed_sources']} (the store at "
                           f"{summary.get('path')} holds the others; the stage fails so that it is retried)")
    return summary


@task(cache_policy=STAGE_CACHE - "rebuild", cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def pretrain_stage(pretrain: dict[str, Any], store: str, store_hash: str, rebuild: bool = False) -> dict[str, Any]:
    """Self-supervised pretraining (``flows.pretrain.pretrain_flow``). Key: config + store content hash.

    The training loop resumes from its own checkpoint, so a stage interrupted mid-way continues when re-run.
    ``rebuild`` (not part of the cache key, so the new result replaces the stale cache entry) trains from
    scratch: used when a finished run's encoder file has disappeared.
    """
    pretrain = dict(pretrain)
    if rebuild:
        pretrain["resume"] = False
    launcher = pretrain.pop("launcher", "inline")
    nproc = pretrain.pop("nproc_per_node", None)
    if launcher == "torchrun":
        from flows.pipeline import pretrain_ddp_flow

        return dict(pretrain_ddp_flow(store=store, nproc_per_node=nproc, **pretrain))
    from flows.pretrain import pretrain_flow

    return dict(pretrain_flow(store=store, **pretrain))


@task(cache_policy=STAGE_CACHE, cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def ablation_stage(
    task_name: str,
    ablation: dict[str, Any],
    store: str,
    store_hash: str,
    encoder: str | None,
    encoder_hash: str | None,
    tracking_uri: str,
) -> dict[str, Any]:
    """Label-fraction ablation of one downstream task (``flows.ablation.ablation_flow``).

    Key: config + store content hash + encoder sha256 + tracking URI (the results live there).
    """
    from flows.ablation import ablation_flow

    return dict(ablation_flow(task=task_name, store=store, encoder=encoder, **ablation))


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30)
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
