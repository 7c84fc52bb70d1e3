"""Prefect tasks of the pipeline flow: the fingerprints its stage caches are keyed on, and its MLflow summary run.

The stages themselves (``flows/stages.py``) wrap the flows that own the work and are cached. Why their cache keys
carry *state*, not only inputs: an inputs-only key stays "Cached" after the output it
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
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy

from ecgmodel.code_digest import code_digest
from ecgmodel.pipeline_config import PipelineConfig


@dataclass
class CodeDigest(CachePolicy):
    """Cache-key part: the digest of the library code a stage runs (:func:`ecgmodel.code_digest.code_digest`
    over the ``ecgmodel``, ``flows`` and ``tasks`` packages, or over ``roots`` when given).

    ``TASK_SOURCE`` hashes only the stage wrapper's own source; the work happens in ``ecgmodel/``, so without
    this part an edit there would keep handing back results of the old code until the cache expires. The
    digest is computed when the key is (a few ms), so a worker that pulled new code misses the old entries.
    """

    roots: list[str] | None = field(default=None)

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        return code_digest(self.roots)


# Cached stage results live in the Prefect result storage (PREFECT_HOME/storage by default; point
# PREFECT_RESULTS_LOCAL_STORAGE_PATH or a storage block at shared storage when workers run on several hosts).
# The key: the stage's inputs (config + the state it consumes), its wrapper's source and the library's code.
STAGE_CACHE = INPUTS + TASK_SOURCE + CodeDigest()
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


@task(cache_policy=NO_CACHE)
def experiment_ids(uri: str, run_ids: list[str | None]) -> dict[str, str | None]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out: dict[str, str | None] = {}
    for run_id in filter(None, run_ids):
        try:
            out[run_id] = client.get_run(run_id).info.experiment_id
        except MlflowException:
            out[run_id] = None
    return out


@task(cache_policy=NO_CACHE)
def log_pipeline_run(
    cfg: PipelineConfig,
    uri: str,
    summary_md: str,
    ingested: dict[str, Any],
    pretrained: dict[str, Any],
    ablations: dict[str, dict[str, Any]],
    flow_run_id: str | None,
    encoder_hash: str | None,
    failed: bool = False,
) -> str:
    """One MLflow run per pipeline run: params, tags linking every stage's runs, headline metrics, summary."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from ecgmodel.config import config_hash, flatten
    from ecgmodel.report import numeric_items
    from ecgmodel.tracking import run_tags, setup_mlflow

    exp_id = setup_mlflow(cfg.experiment, uri)
    extra: dict[str, Any] = {
        "ecgssl.stage": "pipeline",
        "ecgssl.pretrain_run_id": pretrained.get("run_id") or "",
        "ecgssl.encoder_path": pretrained.get("encoder_path") or "",
        "ecgssl.encoder_sha256": encoder_hash or "",
    }
    for name, res in ablations.items():
        extra[f"ecgssl.ablation.{name}.parent_run_id"] = res.get("parent_run_id") or ""
    tags = run_tags(
        config_hash=config_hash(cfg),
        store_hash=ingested.get("store_hash"),
        store_path=cfg.ingest.store,
        flow_run_id=flow_run_id,
        extra=extra,
    )
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(exp_id, run_name=f"pipeline-{config_hash(cfg)}", tags=tags)
    run_id = run.info.run_id
    params = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flatten(cfg).items()}
    metrics = []
    now = int(time.time() * 1000)
    for name, res in ablations.items():
        for key in ("labels_to_match", "gains", "best"):
            for sub, value in numeric_items(res.get(key), f"{name}.{key}").items():
                metrics.append(Metric(key=sub, value=value, timestamp=now, step=0))
    client.log_batch(
        run_id, metrics=metrics, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
    )
    client.log_text(run_id, summary_md, "summary.md")
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    return run_id
