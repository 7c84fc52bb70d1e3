"""Prefect task: convert fetched sources into the Zarr store (Dask processes do the work).

All the work is in :func:`ecgmodel.data.convert.convert_sources`; this task adds orchestration only (logging,
retry policy). In: the ingest config and the fetch results (paths and small dicts). Out: the store summary.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from ecgmodel.data.convert import convert_sources
from ecgmodel.data.ingest_config import IngestConfig
from ecgmodel.data.store import StoreError, StoreLockedError
from tasks.progress import ProgressArtifact
from tasks.retry import is_permanent, user_facing_os_errors

# Every task that writes a store carries this tag. `prefect concurrency-limit create store-writer 1` makes
# Prefect queue concurrent writers (e.g. the daily ingest and the weekly pipeline sharing one store) instead of
# letting the second one wait on the store's lock (IngestConfig.lock_timeout_s) or fail.
STORE_WRITER_TAG = "store-writer"

# Another attempt cannot fix these: an incompatible store, a bad config. A store still locked by another
# writer after the config's lock_timeout_s (StoreLockedError) is worth another attempt.
_PERMANENT = (StoreError, ValueError, TypeError)


def _retry_unless_permanent(task, task_run, state) -> bool:
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return True
    if isinstance(exc, StoreLockedError):
        return True
    return not (isinstance(exc, _PERMANENT) or is_permanent(exc))  # e.g. disk full, read-only store


@task(
    name="convert-sources",
    # A retry resumes: committed records are skipped (e.g. after a worker process died).
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_unless_permanent,
    # No result cache: the store's commit manifest makes a repeated run a cheap no-op.
    cache_policy=NONE,
    tags=[STORE_WRITER_TAG],
)
def convert_to_store(config: dict[str, Any], fetched: list[dict[str, Any]]) -> dict[str, Any]:
    """Convert the records of ``fetched`` (fetch-task results) into ``config["store"]``; returns the summary."""
    try:
        logger = get_run_logger()
    except MissingContextError:  # convert_to_store.fn(...) outside a run
        logger = logging.getLogger(__name__)
    cfg = IngestConfig.model_validate(config)
    progress = ProgressArtifact("ingest-progress", "records converted into the store")
    fix = f"free disk space or give a writable folder: ecgssl ingest --store OTHER.zarr (now {cfg.store})"
    with user_facing_os_errors(fix):
        summary = convert_sources(cfg, fetched, on_progress=progress)
    for slug, stats in summary["run"].items():
        logger.info("%s: %s", slug, stats)
    for q in summary["quarantined"][:20]:
        logger.warning("quarantined %s/%s: %s", q["source"], q["record"], q["reason"])
    logger.info("store %s: %d windows, %d records, hash %s", summary["path"], summary["windows"],
                summary["records"], summary["store_hash"])  # fmt: skip
    return summary


@task(
    name="convert-folder",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_unless_permanent,
    cache_policy=NONE,
    tags=[STORE_WRITER_TAG],
)
def convert_folder(folder_config: dict[str, Any], store: str) -> dict[str, Any]:
    """Ingest a user's folder of WFDB/EDF records (:func:`ecgmodel.data.folder.ingest_folder`) into ``store``;
    returns this run's counts (``written``, ``skipped``, ``quarantined``) and the source slug."""
    from ecgmodel.data.folder import FolderConfig, ingest_folder

    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger(__name__)
    cfg = FolderConfig.model_validate(folder_config)
    with user_facing_os_errors(f"free disk space or give a writable folder: ecgssl ingest --store OTHER.zarr "
                               f"(now {store})"):  # fmt: skip
        res = ingest_folder(cfg, store)
    for q in res["quarantined"][:20]:
        logger.warning("quarantined %s/%s: %s", q["source"], q["record"], q["reason"])
    logger.info("%s: %d records written, %d already stored, %d quarantined", res["source"], res["written"],
                res["skipped"], len(res["quarantined"]))  # fmt: skip
    return res
