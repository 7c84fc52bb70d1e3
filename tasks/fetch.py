"""Prefect task: download one catalog source into the raw-data folder (verified, resumable).

All the work is in :func:`ecgmodel.data.download.download_source`; this task adds orchestration only: retries
for the whole source (e.g. the mirror is down), logging, and a small JSON-able result. Files are the output;
the record list travels as a path (and inline only when short).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from ecgmodel.data.download import PHYSIONET_URL, SourceUnavailableError, UnsafePathError, download_source
from ecgmodel.data.sources import RecordPathError, UnknownSourceError, get_source
from tasks.retry import is_permanent, user_facing_os_errors

# Record lists longer than this travel only as ``records_file``.
INLINE_RECORDS_MAX = 200

# Errors that another attempt cannot fix: bad slug, hostile or out-of-catalog listings, bad arguments.
_PERMANENT = (UnknownSourceError, UnsafePathError, RecordPathError, ValueError, TypeError)


def _retry_unless_permanent(task, task_run, state) -> bool:
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the state could not be read back: let the retry policy decide
        return True
    if isinstance(exc, SourceUnavailableError) and not str(exc.url).startswith(("http://", "https://")):
        return False  # a local mirror folder that is missing or broken will not heal by waiting
    return not (isinstance(exc, _PERMANENT) or is_permanent(exc))  # e.g. disk full, read-only raw folder


@task(
    name="fetch-source",
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=_retry_unless_permanent,
    # No result cache: the downloader's own manifest makes a re-run cheap and notices deleted files.
    cache_policy=NONE,
    task_run_name="fetch-{slug}",
)
def fetch_source(
    slug: str,
    mirror: str = PHYSIONET_URL,
    raw_dir: str | Path = "data/raw",
    workers: int = 4,
    records: int | list[str] | None = None,
    groups: list[str] | None = None,
    progress: bool = True,
    in_place: bool = False,
) -> dict:
    """Download source ``slug`` from ``mirror`` into ``raw_dir/<slug>/<version>/``.

    ``records`` limits the records (first N, or explicit record paths); ``groups`` overrides the source's
    default record groups (e.g. ``["records100"]`` for PTB-XL at 100 Hz). ``in_place``: a local mirror is
    verified where it lies (``root`` is then the mirror's folder; nothing is copied). Returns
    ``{"slug", "version", "mirror", "root", "records_file", "n_records", "records", "failures",
    "metadata_files", "files_downloaded", "files_skipped", "bytes_downloaded"}``; ``records`` is the list of
    verified record paths when it has at most ``INLINE_RECORDS_MAX`` entries, else ``None``.
    """
    try:
        logger = get_run_logger()
    except MissingContextError:  # called as fetch_source.fn(...) outside a run
        logger = logging.getLogger(__name__)
    source = get_source(slug)
    if groups:
        source = source.select(*groups)
    fix = f"free disk space or give a writable folder: ecgssl ingest --raw-dir OTHER_DIR (now {raw_dir})"
    with user_facing_os_errors(fix):
        result = download_source(source, mirror, Path(raw_dir), workers=workers, records=records,
                                 progress=progress, in_place=in_place)  # fmt: skip
    summary = result.summary()
    summary.update(
        slug=source.slug,
        version=source.version,
        mirror=str(mirror),
        records=list(result.records) if len(result.records) <= INLINE_RECORDS_MAX else None,
    )
    logger.info(
        "%s %s: %d records verified, %d failed; %d files downloaded (%.1f MB), %d already verified",
        source.slug, source.version, len(result.records), len(result.failures), result.files_downloaded,
        result.bytes_downloaded / 1e6, result.files_skipped,
    )
    for failure in result.failures[:20]:
        logger.warning("%s: %s", failure["record"], failure["reason"])
    return summary
