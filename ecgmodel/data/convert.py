"""Convert verified raw records into the store, in parallel with Dask worker processes.

Reading and resampling a record is GIL-bound Python/numpy, so the work runs in worker PROCESSES
(``LocalCluster(processes=True)``, or any running cluster given by address). Records travel in batches: a
worker reads, harmonises and returns one compact :class:`~ecgmodel.data.store.WindowBatch` (int16) per batch.
The main process is the store's single writer: it appends results in submission order as they arrive, with at
most ``max_in_flight`` batches outstanding (memory stays flat whatever the number of records), and commits
every ``commit_every`` batches and after each source. Records already committed are skipped, so an interrupted
run resumes and a repeated run changes nothing. Invalid records are quarantined with their reason.

What is refused or contained:

* a source the store holds at another version or with other harmonisation settings (``fs``, window, cap,
  :data:`~ecgmodel.data.signal.HARMONISE_VERSION`): :class:`~ecgmodel.data.store.StoreError` before any work;
* two record paths with one record name (records are keyed by name): the later one is quarantined with both
  paths in the reason;
* a header whose sampling rate is not the catalog's rate for its database: quarantined before the signal is
  read;
* a batch whose worker dies (``KilledWorker``, out of memory): split in halves and retried until the record
  that kills it is alone, which is quarantined; the other records are stored.

    report = convert_sources(cfg, [{"slug": "ptb-xl", "root": "data/raw/ptb-xl/1.0.3",
                                    "records_file": ".../.ecgssl-records.txt", "failures": []}])
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ecgmodel.data.ingest_config import IngestConfig
from ecgmodel.data.signal import HARMONISE_VERSION, LeadError, harmonise
from ecgmodel.data.sources import Source
from ecgmodel.data.store import StoreWriter, WindowBatch, open_store
from ecgmodel.data.wfdb_io import MetadataTable, RecordError, read_record

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a worker sends back for one batch of records (small, besides the int16 windows)."""

    batch: WindowBatch | None
    records: list[str] = field(default_factory=list)  # record names stored in `batch`
    failures: list[dict[str, str]] = field(default_factory=list)  # {"record", "reason"}


@functools.lru_cache(maxsize=8)
def _metadata(root: str, layout: str, slug: str) -> MetadataTable:
    # one CSV parse per worker process and source, not per batch
    return MetadataTable(root, layout, slug)


def convert_batch(
    root: str,
    source: Source,
    record_paths: Sequence[str],
    fs: int,
    window_s: float,
    max_windows: int | None,
) -> BatchResult:
    """Read and harmonise ``record_paths`` of ``source`` below ``root`` (runs in a worker process)."""
    batches, names, failures = [], [], []
    try:
        meta = _metadata(str(root), source.layout, source.slug)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable table: every record of it is quarantined
        reason = str(e) if isinstance(e, FileNotFoundError) else \
            f"{source.slug}: metadata table unreadable ({type(e).__name__}: {e})"  # fmt: skip
        return BatchResult(None, [], [{"record": Source.record_name(p), "reason": reason} for p in record_paths])
    for path in record_paths:
        name = Source.record_name(path)
        label = f"{source.slug}/{name}"
        try:
            rec = read_record(root, path, source.slug, source.layout, meta, expected_fs=source.expected_fs(path))
            try:
                h = harmonise(rec.signal, rec.sig_name, rec.fs, fs=fs, window_s=window_s, max_windows=max_windows)
            except LeadError as e:
                raise RecordError(f"{label}: {e} (lead names)") from e
            if len(h.signal) == 0:
                raise RecordError(f"{label}: record has no samples (empty signal)")
            batches.append(
                WindowBatch.for_record(
                    h.signal, h.lead_present, h.window_start, h.valid_length, h.qc,
                    record=name, source=source.slug, database=source.database_of(path), dx=rec.dx,
                    patient_id=rec.patient_id, age=rec.age, sex=rec.sex, fold=rec.fold, record_path=path,
                    raw_sha256=rec.raw_sha256,
                )  # fmt: skip
            )
            names.append(name)
        except RecordError as e:
            failures.append({"record": name, "reason": str(e)})
        except Exception as e:  # a reader bug must not stop the other records: quarantine it, loudly
            failures.append({"record": name, "reason": f"{label}: unexpected {type(e).__name__}: {e}"})
    return BatchResult(WindowBatch.concat(batches) if batches else None, names, failures)


def read_record_list(item: dict[str, Any]) -> list[str]:
    """Record paths of a fetch result: inline ``records`` or the ``records_file`` it points to."""
    if item.get("records") is not None:
        return list(item["records"])
    path = item.get("records_file")
    if not path:
        raise ValueError(f"{item.get('slug')}: fetch result has neither 'records' nor 'records_file'")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def dask_client(workers: int, address: str | None = None) -> Iterator[Any]:
    """A dask.distributed Client: on ``address`` if given, else a local cluster of ``workers`` processes.

    Yields None when ``workers == 0`` and no address is given (convert in this process).
    """
    if address is None and workers == 0:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if address is not None:
        with Client(address) as client:
            log.info("Dask cluster at %s (dashboard: %s)", address, client.dashboard_link)
            yield client
        return
    import dask

    # the scheduler and nannies live in this process: keep their INFO chatter out of the run's log
    quiet = [logging.getLogger(name) for name in ("distributed", "distributed.scheduler", "distributed.nanny")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    # distributed starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB, which also pins glibc's mmap threshold:
    # every 120 kB window array is then mmapped and page-faulted afresh, and conversion runs 2.5x slower
    # (measured, bench/ingest.py). A 128 MiB threshold keeps the speed; worker memory stays bounded by the
    # batches in flight.
    trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}
    try:
        with dask.config.set(trim), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
            silence_logs=logging.WARNING,
        ) as cluster, Client(cluster) as client:  # fmt: skip
            # the way into the cluster while it runs (PREFECT_LOGGING_EXTRA_LOGGERS=ecgmodel shows it in a flow's log)
            log.info("local Dask cluster at %s, %d worker processes (dashboard: %s)", cluster.scheduler_address,
                        workers, client.dashboard_link)  # fmt: skip
            yield client
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def _results(client: Any, fn, jobs: list[tuple], max_in_flight: int) -> Iterator[BatchResult]:
    """Run ``fn(*job)`` for each job, yielding results in job order with <= max_in_flight outstanding.

    A job whose worker fails (the process died: ``KilledWorker``; or any other error outside ``fn``'s own
    per-record handling) is bisected by :func:`_contained`, so one bad record never stops the others.
    """
    if client is None:
        for job in jobs:
            yield fn(*job)
        return
    pending: deque = deque()
    it = iter(jobs)
    for job in it:
        pending.append((job, client.submit(fn, *job, pure=False)))
        if len(pending) >= max_in_flight:
            break
    while pending:
        job, future = pending.popleft()
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 - the worker died or the task failed as a whole
            log.warning("batch of %d records failed (%s: %s): bisecting it", len(job[2]), type(e).__name__, e)
            result = _contained(client, fn, job, e)
        finally:
            future.release()
        next_job = next(it, None)
        if next_job is not None:
            pending.append((next_job, client.submit(fn, *next_job, pure=False)))
        yield result


def _contained(client: Any, fn, job: tuple, error: BaseException) -> BatchResult:
    """Re-run a failed batch in halves until the failing record is alone; quarantine it (one retry alone)."""
    root, source, paths, *rest = job
    if len(paths) == 1:
        try:
            return client.submit(fn, root, source, paths, *rest, pure=False).result()
        except Exception as e:  # noqa: BLE001
            name = Source.record_name(paths[0])
            reason = (f"{source.slug}/{name}: the worker failed twice converting this record "
                      f"({type(error).__name__}; then {type(e).__name__}: {e}) (worker crash)")  # fmt: skip
            return BatchResult(None, [], [{"record": name, "reason": reason}])
    half = len(paths) // 2
    parts = []
    for sub in (paths[:half], paths[half:]):
        sub_job = (root, source, sub, *rest)
        try:
            parts.append(client.submit(fn, *sub_job, pure=False).result())
        except Exception as e:  # noqa: BLE001
            parts.append(_contained(client, fn, sub_job, e))
    batches = [p.batch for p in parts if p.batch is not None]
    return BatchResult(WindowBatch.concat(batches) if batches else None,
                       [r for p in parts for r in p.records], [f for p in parts for f in p.failures])  # fmt: skip


def source_settings(cfg: IngestConfig) -> dict[str, Any]:
    """What decides the stored content of a source besides its files: refused when it changes in a store."""
    return {"fs": cfg.fs, "window_s": cfg.window_s, "max_windows": cfg.max_windows_per_record,
            "harmonise": HARMONISE_VERSION}  # fmt: skip


def _plan(w: StoreWriter, source: Source, paths: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Records left to convert, and the quarantine of paths whose record name is taken by another path."""
    committed = w.committed_paths()
    first: dict[str, str] = {}
    todo, dup = [], []
    for p in paths:
        name = Source.record_name(p)
        stored = committed.get((source.slug, name))
        other = first.setdefault(name, stored if stored else p)
        if other != p:
            dup.append({"source": source.slug, "record": p,
                        "reason": f"{source.slug}/{name}: record name also used by {other}; {p} is not stored "
                                  "(records are keyed by name: duplicate record name)"})  # fmt: skip
        elif stored is None:
            todo.append(p)
    return todo, dup


def convert_sources(
    cfg: IngestConfig | dict,
    fetched: list[dict[str, Any]],
    client: Any = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Convert fetched sources into ``cfg.store``; returns the store summary plus this run's counts.

    ``fetched``: one dict per source with ``slug``, ``root``, the record list (``records`` or
    ``records_file``), ``version``/``mirror`` and download ``failures`` (quarantined as they are).
    ``client``: a dask Client, None (in-process) or "auto": a cluster from ``cfg.workers`` /
    ``cfg.dask_address``, started only when some record is left to convert. ``on_progress(done, total)``: called
    with the records handled so far out of those left to convert, after every batch.
    """
    cfg = cfg if isinstance(cfg, IngestConfig) else IngestConfig.model_validate(cfg)
    max_in_flight = cfg.max_in_flight or 2 * max(cfg.workers, 1) + 1
    run: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        w = stack.enter_context(
            StoreWriter(cfg.store, fs=cfg.fs, window_samples=cfg.window_samples, chunk_windows=cfg.chunk_windows,
                        lock_timeout=cfg.lock_timeout_s)  # fmt: skip
        )
        plans = []
        for item in fetched:
            source = cfg.source(item["slug"])
            # before any work: a source of another version or other settings must not mix with the stored one
            w.check_source(source.slug, item.get("version", source.version), source_settings(cfg))
            paths = read_record_list(item)
            todo, duplicates = _plan(w, source, paths)
            plans.append((item, source, paths, todo, duplicates))
        if client == "auto":
            need = any(plan[3] for plan in plans)
            client = stack.enter_context(dask_client(cfg.workers, cfg.dask_address)) if need else None
        total, handled = sum(len(plan[3]) for plan in plans), 0
        for item, source, paths, todo, duplicates in plans:
            report = None if on_progress is None else functools.partial(_report_from, on_progress, handled, total)
            run[source.slug] = _convert_one(w, cfg, item, source, paths, todo, client, max_in_flight, duplicates,
                                            report)  # fmt: skip
            handled += len(todo)
    summary = open_store(cfg.store).summary()
    summary["run"] = run
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["store_hash"] = summary["hash"]
    return summary


def _report_from(on_progress: Callable[[int, int], None], base: int, total: int, done: int) -> None:
    on_progress(base + done, total)


def _convert_one(
    w: StoreWriter,
    cfg: IngestConfig,
    item: dict[str, Any],
    source: Source,
    paths: list[str],
    todo: list[str],
    client: Any,
    max_in_flight: int,
    duplicates: list[dict[str, str]] = (),
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    info = {"version": item.get("version", source.version), "base_url": source.base_url(item.get("mirror", cfg.mirror)),
            "settings": source_settings(cfg)}  # fmt: skip
    quarantine = [{"source": source.slug, "record": Source.record_name(f["record"]), "reason": f["reason"]}
                  for f in item.get("failures", [])]  # fmt: skip
    quarantine += list(duplicates)
    stats = {"records_listed": len(paths) + len(item.get("failures", [])),
             "skipped": len(paths) - len(todo) - len(duplicates), "stored": 0, "quarantined": len(quarantine),
             "windows": 0}  # fmt: skip
    jobs = [
        (str(item["root"]), source, todo[i : i + cfg.batch_records], cfg.fs, cfg.window_s, cfg.max_windows_per_record)
        for i in range(0, len(todo), cfg.batch_records)
    ]
    commit = functools.partial(w.commit, sources={source.slug: info}, dx_systems={source.slug: source.dx_system})
    handled = 0
    with tqdm(total=len(todo), desc=f"convert {source.slug}", unit="rec", disable=not cfg.progress) as bar:
        for i, res in enumerate(_results(client, convert_batch, jobs, max_in_flight)):
            if res.batch is not None:
                w.append(res.batch)
                stats["windows"] += len(res.batch)
            stats["stored"] += len(res.records)
            stats["quarantined"] += len(res.failures)
            quarantine += [{"source": source.slug, **f} for f in res.failures]
            bar.update(len(res.records) + len(res.failures))
            handled += len(res.records) + len(res.failures)
            if on_progress is not None:
                on_progress(handled)
            if (i + 1) % cfg.commit_every == 0:
                commit(quarantine=quarantine)
                quarantine = []
    commit(quarantine=quarantine)
    log.info("%s: %s", source.slug, stats)
    return stats
