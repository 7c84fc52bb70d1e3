"""Ingest flow: download (verified) -> convert (Dask processes) -> Zarr store; and ``ecgssl inspect``.

    ecgssl ingest --source ptb-xl --source ludb --mirror ../shared/physionet --store data/store.zarr
    ecgssl ingest --folder my_ecgs/ --labels my_ecgs/labels.csv --store data/mine.zarr    # your own WFDB / EDF
    ecgssl inspect data/store.zarr [--json]

Re-running with the same sources changes nothing (committed records are skipped, the content hash stays);
adding a source appends it. Invalid records are quarantined with their reason and the run carries on. The
command exits non-zero only when a source cannot be listed or nothing could be ingested.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect import flow, get_run_logger

from ecgmodel.data.ingest_config import IngestConfig
from ecgmodel.data.sources import DEFAULT_MIRROR
from ecgmodel.data.store import StoreError, open_store
from tasks.convert import convert_to_store
from tasks.fetch import fetch_source


@flow(name="ingest")
def ingest_flow(
    sources: list[str] = ["ptb-xl"],  # noqa: B006 - Prefect parameters are JSON; the list is never mutated
    mirror: str = DEFAULT_MIRROR,
    store: str = "data/store.zarr",
    raw_dir: str = "data/raw",
    fs: int = 500,
    window_s: float = 10.0,
    workers: int = 2,
    max_windows_per_record: int | None = 6,
    dask_address: str | None = None,
    copy_mirror: bool = False,
) -> dict:
    """Download ``sources`` from ``mirror`` into ``raw_dir``, convert them into the store at ``store``.

    A local mirror folder is verified in place (its SHA256SUMS) and read from there, unless ``copy_mirror``.

    Returns the store summary (``ecgssl inspect --json``) plus ``store_hash``, this run's per-source counts
    (``run``) and ``failed_sources`` (sources that could not be listed or downloaded: {slug: reason}).
    """
    logger = get_run_logger()
    cfg = IngestConfig(
        sources=sources, mirror=mirror, store=store, raw_dir=raw_dir, fs=fs, window_s=window_s, workers=workers,
        max_windows_per_record=max_windows_per_record, dask_address=dask_address, copy_mirror=copy_mirror,
    )  # fmt: skip
    fetched, failed = [], {}
    for slug in cfg.sources:
        state = fetch_source(slug, cfg.mirror, cfg.raw_dir, cfg.download_workers, groups=cfg.groups(slug),
                             progress=cfg.progress, in_place=not cfg.copy_mirror, return_state=True)  # fmt: skip
        if state.is_completed():
            fetched.append(state.result())
        else:
            failed[slug] = str(state.result(raise_on_failure=False))
            logger.error("source %s could not be fetched: %s", slug, failed[slug])
    summary = convert_to_store(cfg.model_dump(), fetched) if fetched else _empty_summary(cfg)
    summary["failed_sources"] = failed
    return summary


@flow(name="ingest-folder")
def ingest_folder_flow(
    folder: str,
    store: str = "data/store.zarr",
    labels: str | None = None,
    source: str | None = None,
    label_system: str = "user-label",
    fs: int = 500,
    window_s: float = 10.0,
    max_windows_per_record: int | None = 6,
) -> dict:
    """Ingest a folder of your own WFDB (.hea) / EDF records, with optional labels (``ecgmodel.data.folder``).

    Returns the store summary plus ``store_hash``, this run's counts (``run``) and ``failed_sources`` (empty).
    """
    from ecgmodel.data.folder import FolderConfig
    from tasks.convert import convert_folder

    cfg = FolderConfig(root=folder, labels=labels, source=source, label_system=label_system, fs=fs,
                       window_s=window_s, max_windows=max_windows_per_record)  # fmt: skip
    res = convert_folder(cfg.model_dump(), store)
    summary = open_store(store).summary()
    summary.update(store_hash=summary["hash"], failed_sources={},
                   run={res["source"]: {k: v if k != "quarantined" else len(v) for k, v in res.items() if k != "source"}})  # fmt: skip
    return summary


def _empty_summary(cfg: IngestConfig) -> dict[str, Any]:
    try:
        summary = open_store(cfg.store).summary()
    except StoreError:
        summary = {"path": cfg.store, "windows": 0, "records": 0, "sources": {}, "quarantined": [], "hash": None}
    summary.update(run={}, store_hash=summary["hash"])
    return summary


def exit_code(summary: dict[str, Any]) -> int:
    """0, unless a source could not be listed/fetched or the store holds nothing."""
    return 1 if summary.get("failed_sources") or not summary.get("windows") else 0


# ------------------------------------------------------------------------------------------------- CLI
def format_summary(s: dict[str, Any]) -> str:
    """A readable table of a store summary."""
    lines = [
        f"store   {s['path']}",
        f"schema  v{s.get('schema_version')}   fs {s.get('fs')} Hz   window {s.get('window_samples')} samples"
        f"   chunk {s.get('chunk_windows')} windows   hash {s.get('hash')}",
        f"total   {s['windows']} windows from {s['records']} records",
        "",
        f"{'source':<18}{'version':<10}{'records':>9}",
    ]
    for slug, n in sorted(s["sources"].items()):
        lines.append(f"{slug:<18}{str(s.get('source_versions', {}).get(slug, '')):<10}{n:>9}")
    if s.get("databases"):
        lines += ["", f"{'database':<18}{'records':>9}{'windows':>10}"]
        for db, c in sorted(s["databases"].items()):
            lines.append(f"{db:<18}{c['records']:>9}{c['windows']:>10}")
    lines += ["", f"quarantined: {len(s['quarantined'])}"]
    for q in s["quarantined"]:
        key = f"{q['source']}/{q['record']}"
        lines.append(f"  {q['reason']}" if q["reason"].startswith(key) else f"  {key}: {q['reason']}")
    for slug, reason in s.get("failed_sources", {}).items():
        lines.append(f"FAILED source {slug}: {reason}")
    return "\n".join(lines)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ecgmodel import cli_checks
    from ecgmodel.errors import UserError

    if args.folder:
        return _cmd_ingest_folder(args)
    if args.labels:
        raise UserError("--labels goes with --folder (a catalog source brings its own labels)",
                        "ecgssl ingest --folder DIR --labels FILE.csv --store STORE")  # fmt: skip
    sources = args.sources or ["ptb-xl"]
    cli_checks.check_sources(sources)  # before Prefect starts: a typo costs milliseconds and one line
    cli_checks.check_store_writable(args.store)
    cli_checks.check_writable_dir(args.raw_dir, "--raw-dir")
    cli_checks.check_mirror(args.mirror, sources)
    summary = ingest_flow(
        sources=sources, mirror=args.mirror, store=args.store, raw_dir=args.raw_dir,
        fs=args.fs, window_s=args.window_s, workers=args.workers,
        max_windows_per_record=args.max_windows or None, dask_address=args.dask_address, copy_mirror=args.copy,
    )  # fmt: skip
    print(json.dumps(summary, indent=1, default=str) if args.json else format_summary(summary))
    return exit_code(summary)


def _cmd_ingest_folder(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ecgmodel import cli_checks
    from ecgmodel.data.folder import read_labels, scan
    from ecgmodel.data.store import DX_SYSTEMS
    from ecgmodel.errors import UserError

    if args.sources:
        raise UserError("--folder and --source are two ways to ingest: give one",
                        f"ecgssl ingest --folder {args.folder} --store {args.store}")  # fmt: skip
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"--folder {folder}: no such folder", "ecgssl ingest --folder DIR_WITH_HEA_OR_EDF_FILES ...")
    if not scan(folder):
        raise UserError(f"--folder {folder}: no .hea or .edf file below it",
                        "ecgssl ingest --folder DIR_WITH_HEA_OR_EDF_FILES ...")  # fmt: skip
    if args.label_system not in DX_SYSTEMS:
        raise UserError(f"--label-system {args.label_system}: not one of {', '.join(DX_SYSTEMS)}",
                        f"ecgssl ingest --folder {folder} --label-system user-label ...")  # fmt: skip
    if args.labels:
        read_labels(args.labels)  # a missing file or column fails here, in milliseconds
    cli_checks.check_store_writable(args.store)
    summary = ingest_folder_flow(
        folder=str(folder), store=args.store, labels=args.labels, source=args.source_name,
        label_system=args.label_system, fs=args.fs, window_s=args.window_s,
        max_windows_per_record=args.max_windows or None,
    )  # fmt: skip
    print(json.dumps(summary, indent=1, default=str) if args.json else format_summary(summary))
    return exit_code(summary)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ecgmodel.data.store import migrate_store, recover_store

    # a StoreError is a UserError: the CLI prints its problem and fix on one line and exits 2
    if getattr(args, "recover", False):
        recover_store(args.store)
    if getattr(args, "migrate", False):
        migrate_store(args.store)
    summary = open_store(args.store).summary()
    print(json.dumps(summary, indent=1, default=str) if args.json else format_summary(summary))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="download sources and convert them into the Zarr store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--source", dest="sources", action="append", metavar="SLUG",
                   help="catalog slug (repeatable): challenge-2020, challenge-2021, ptb-xl, ludb (default ptb-xl)")
    p.add_argument("--mirror", default=DEFAULT_MIRROR, metavar="URL_OR_DIR",
                   help=f"PhysioNet-style base URL or folder (default {DEFAULT_MIRROR})")
    p.add_argument("--store", required=True, metavar="PATH", help="Zarr store to create or extend")
    p.add_argument("--raw-dir", default="data/raw", metavar="DIR", help="verified raw files (default data/raw)")
    p.add_argument("--folder", metavar="DIR", help="ingest your own records instead: every .hea (WFDB) and .edf "
                   "file below DIR (see ecgmodel/data/folder.py)")
    p.add_argument("--labels", metavar="FILE.csv", help="with --folder: CSV with a `record` column and label "
                   "column(s) (optional patient_id, age)")
    p.add_argument("--label-system", default="user-label", help="with --folder: code system of the labels "
                   "(default user-label; snomed-ct when they are SNOMED-CT codes)")
    p.add_argument("--source-name", default=None, metavar="SLUG",
                   help="with --folder: source name in the store (default folder-<DIR name>)")
    p.add_argument("--copy", action="store_true",
                   help="copy a local mirror's files into --raw-dir (default: verify them in place, copy nothing)")
    p.add_argument("--fs", type=int, default=500, help="sampling rate of the store, Hz (default 500)")
    p.add_argument("--window-s", type=float, default=10.0, help="window length, s (default 10)")
    p.add_argument("--max-windows", type=int, default=6, metavar="N",
                   help="windows per record at most (default 6; 0: all)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2; 0: no Dask)")
    p.add_argument("--dask-address", default=None, metavar="ADDR", help="use a running Dask scheduler")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_ingest)  # fmt: skip

    q = sub.add_parser("inspect", help="summarise a store: windows, records per source/database, quarantine")
    q.add_argument("store", metavar="STORE", help="path of the store")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--recover", action="store_true",
                   help="first restore a lost commit.json from commit.prev.json (the commit before the last)")
    q.add_argument("--migrate", action="store_true", help="first upgrade an older store schema in place")
    q.set_defaults(func=_cmd_inspect)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
