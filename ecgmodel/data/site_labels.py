"""Adapter for private site-labelled data: a folder of WFDB records plus ``labels.csv`` -> an ecgssl store.

``labels.csv`` has one row per record with columns ``record`` (WFDB record name, relative to the folder,
without extension) and ``site`` (the ventricular-arrhythmia origin, free text); an optional ``patient_id``
column keeps a patient's records in one split. It is the folder ingest (``ecgmodel.data.folder``, ``ecgssl ingest
--folder``) with a fixed label column: records are read by the same reader (``folder.read_wfdb``), by lead NAME,
in mV from the header's units, resampled and windowed exactly as the public databases are
(``ecgmodel.data.signal.harmonise``), and written by :func:`write_labelled_records`, which both share.

The store gets ``dx = "site=<site>"`` and ``dx_systems[source] = "site-label"``; fine-tune with
``--task localization`` (``localization_target='site'`` or ``auto``).

Bad input never stops the others and never touches what is stored: a record that cannot be read, has unknown
leads or no label is quarantined with a reason naming the record and the rule. Re-runs skip committed records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ecgmodel.data.labels import SITE_SYSTEM

UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


class SiteLabelsConfig(BaseModel):
    """Where the private data lives and how it becomes store rows."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="Folder holding the WFDB records and labels.csv.")
    labels_file: str = Field("labels.csv", description="CSV with columns record, site (and optional patient_id).")
    source: str = Field("site-private", description="Source slug written to the store (one per database).")
    version: str = Field("1", description="Version recorded in the store's sources attribute.")
    fs: int = Field(500, gt=0, description="Store sampling rate (must match an existing store).")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds (must match an existing store).")
    max_windows: int | None = Field(None, ge=1, description="At most this many windows per record.")
    commit_every: int = Field(100, ge=1, description="Records per commit (what a crash can cost).")


def _clean(value: object) -> str:
    """A label value safe inside the comma-separated dx field."""
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
    return text.replace(",", ";").replace("=", "-")


def write_labelled_records(
    store_path: str | Path,
    items: Iterable[tuple[str, Callable[[], tuple[np.ndarray, list[str], float]], dict]],
    *,
    source: str,
    version: str,
    dx_system: str,
    fs: int = 500,
    window_s: float = 10.0,
    max_windows: int | None = None,
    commit_every: int = 100,
    source_info: dict | None = None,
    total: int | None = None,
    settings: dict | None = None,
) -> dict:
    """Write records into a store. ``items`` yields ``(record, read, fields)``: ``read()`` returns
    ``(signal (n_leads, T) in mV, lead names, fs_in)`` and ``fields`` holds dx, patient_id, database, age and
    the provenance ``record_path`` (path below the root) and ``raw_files`` (the files whose sha256 is stored).
    ``source_info`` (base_url, citation, assumptions, ...) is stored in the store's ``sources`` attribute;
    ``settings`` (what decides the stored content besides the files, e.g. an amplitude scale) joins fs,
    window, cap and harmonisation version, and the store refuses a change of any of them for this source.

    Records already committed are skipped; a record whose ``read`` or harmonisation raises is quarantined
    with ``"<rule>: <message>"``; so is a second file with the name of a record already taken (records are
    keyed by name). Returns counts and the quarantine of this run.
    """
    from ecgmodel.data.signal import HARMONISE_VERSION, harmonise
    from ecgmodel.data.store import StoreWriter, WindowBatch

    window_samples = int(round(window_s * fs))
    written = skipped = 0
    quarantine: list[dict[str, str]] = []
    pending: list[WindowBatch] = []
    all_settings = {"fs": fs, "window_s": window_s, "max_windows": max_windows, "harmonise": HARMONISE_VERSION,
                    **(settings or {})}  # fmt: skip
    info = {"version": version, **(source_info or {}), "settings": all_settings}
    with StoreWriter(store_path, fs=fs, window_samples=window_samples, create=True) as writer:
        writer.check_source(source, version, all_settings)
        done = writer.committed_keys()
        taken = {rec: path for (src, rec), path in writer.committed_paths().items() if src == source}

        def commit() -> None:
            if pending:
                writer.append(WindowBatch.concat(pending))
                pending.clear()
            writer.commit(sources={source: info}, quarantine=quarantine, dx_systems={source: dx_system})

        for record, read, fields in tqdm(items, total=total, desc=f"ingest {source}", leave=False):
            path = str(fields.get("record_path", record))
            other = taken.setdefault(record, path) or path
            if other != path:
                quarantine.append({"source": source, "record": path, "reason": f"duplicate rule: record name "
                                   f"{record!r} is also used by {other}; {path} is not stored"})  # fmt: skip
                continue
            if (source, record) in done:
                skipped += 1
                continue
            try:
                sig, names, fs_in = read()
                h = harmonise(np.asarray(sig, dtype=np.float64), names, fs_in, fs, window_s, max_windows)
                if len(h.signal) == 0:
                    raise ValueError("record has no samples")
            except Exception as e:  # noqa: BLE001 - any bad record is quarantined with its reason, never fatal
                quarantine.append({"source": source, "record": record, "reason": f"{type(e).__name__}: {e}"})
                continue
            pending.append(
                WindowBatch.for_record(
                    h.signal, h.lead_present, h.window_start, h.valid_length, h.qc, record=record, source=source,
                    database=fields.get("database", source), dx=fields.get("dx", ""),
                    patient_id=fields.get("patient_id", ""), age=fields.get("age"), sex="", record_path=path,
                    raw_sha256=_sha256(*fields["raw_files"]) if fields.get("raw_files") else "",
                )  # fmt: skip
            )
            written += 1
            if written % commit_every == 0:
                commit()
        commit()
    return {"written": written, "skipped": skipped, "quarantined": quarantine}


def _sha256(*paths: str | Path) -> str:
    """sha256 over the names and bytes of ``paths`` (the raw files of one record)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_wfdb_mv(path: Path) -> tuple[np.ndarray, list[str], float]:
    """A WFDB record as (signal (n_leads, T) in mV, lead names, fs) using each channel's units."""
    import wfdb

    rec = wfdb.rdrecord(str(path))
    return signal_mv(rec), list(rec.sig_name), float(rec.fs)


def signal_mv(rec) -> np.ndarray:
    """A wfdb record's physical signal as (n_leads, T) float64 in mV, each channel scaled by its own unit."""
    sig = np.asarray(rec.p_signal, dtype=np.float64).T
    for i, unit in enumerate(rec.units or []):
        key = str(unit).strip().lower()
        if key not in UNIT_TO_MV:
            raise ValueError(f"unit rule: channel {rec.sig_name[i]} has unknown unit {unit!r}")
        sig[i] *= UNIT_TO_MV[key]
    return sig


def read_labels(cfg: SiteLabelsConfig) -> pd.DataFrame:
    path = Path(cfg.root) / cfg.labels_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found (expected columns record, site)")
    table = pd.read_csv(path, dtype=str).rename(columns=str.strip)
    missing = {"record", "site"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)} (expected record, site[, patient_id])")
    dup = table["record"][table["record"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: records listed twice: {dup[:5]} (rule: one label row per record)")
    return table


def ingest_site_labels(cfg: SiteLabelsConfig, store_path: str | Path) -> dict:
    """Ingest the labelled WFDB folder ``cfg.root`` into the store at ``store_path`` (created if needed)."""
    root = Path(cfg.root)
    table = read_labels(cfg)

    def items():
        for row in table.itertuples(index=False):
            record = str(row.record).strip()
            site = _clean(row.site)
            name = Path(record).name

            def read(record=record, site=site):
                if not site:
                    raise ValueError(f"label rule: record {record} has an empty site in {cfg.labels_file}")
                if not (root / f"{record}.hea").is_file():
                    raise FileNotFoundError(f"file rule: {root / record}.hea not found")
                from ecgmodel.data.folder import read_wfdb  # the folder ingest's reader

                return read_wfdb(root / f"{record}.hea")

            pid = _clean(getattr(row, "patient_id", "")) if "patient_id" in table.columns else ""
            yield name, read, {"dx": f"site={site}", "patient_id": pid, "database": cfg.source,
                               "record_path": record,
                               "raw_files": sorted((root / record).parent.glob(f"{Path(record).name}.*"))}

    return write_labelled_records(
        store_path, items(), source=cfg.source, version=cfg.version, dx_system=SITE_SYSTEM, fs=cfg.fs,
        window_s=cfg.window_s, max_windows=cfg.max_windows, commit_every=cfg.commit_every,
        source_info={"base_url": str(root.resolve())}, total=len(table),
    )  # fmt: skip
