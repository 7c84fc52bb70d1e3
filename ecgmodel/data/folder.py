"""Your own ECGs: a folder of WFDB records (``.hea`` + signal files) and EDF files -> an ecgssl store.

    ecgssl ingest --folder my_ecgs/ [--labels labels.csv] --store data/mine.zarr

Every ``*.hea`` and ``*.edf`` file below the folder is one record, named by its file name without the
extension (``0001``, as the catalog sources name theirs; its path below the folder is kept as ``record_path``;
two files with one name are the duplicate rule's case). WFDB records are read by ``wfdb.rdrecord`` (Challenge-style ``.mat`` headers by the
catalog sources' reader, ``ecgmodel.data.wfdb_io``), EDF files by wfdb's EDF reader; signals are taken by lead NAME, converted to mV from each channel's units,
resampled and windowed exactly as the public databases are (``ecgmodel.data.signal.harmonise``). Provenance: each row keeps its file's path below the folder and the
sha256 of the record's files.

Labels (optional): a CSV with a ``record`` column (the record's name or its path below the folder, with or
without the extension) and one or
more label columns (``label``, or any others: every non-empty cell becomes one label; ``;`` separates several
labels in a cell). ``patient_id`` (keeps a patient's records in one split) and ``age`` columns are used when
present. The labels are stored as the record's ``dx`` in the system ``label_system`` (``user-label`` unless the
labels are e.g. SNOMED-CT codes).

The quarantine rules of the ingest hold: a file that cannot be read, has no known lead, no samples or an unknown
unit, a second file with the name of a record already taken, and a label row naming no file are quarantined
with a reason naming the record and the rule; the others are stored. Re-runs skip committed records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ecgmodel.data.site_labels import _clean, signal_mv, write_labelled_records
from ecgmodel.errors import UserError

SUFFIXES = (".hea", ".edf")
USER_LABEL_SYSTEM = "user-label"
_RESERVED_COLUMNS = {"record", "patient_id", "age"}


class FolderConfig(BaseModel):
    """A user's folder of WFDB/EDF records and how it becomes store rows."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="Folder holding the records (searched recursively for .hea and .edf).")
    labels: str | None = Field(None, description="CSV with a `record` column and label column(s); None: unlabelled.")
    source: str | None = Field(None, description="Source slug written to the store (None: `folder-<folder name>`).")
    version: str = Field("1", description="Version recorded in the store's sources attribute.")
    label_system: str = Field(USER_LABEL_SYSTEM, description="Code system of the labels (a store dx system).")
    fs: int = Field(500, gt=0, description="Store sampling rate (must match an existing store).")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds (must match an existing store).")
    max_windows: int | None = Field(6, ge=1, description="At most this many windows per record (None: all).")
    commit_every: int = Field(100, ge=1, description="Records per commit (what a crash can cost).")

    def slug(self) -> str:
        return self.source or f"folder-{Path(self.root).resolve().name}"


def read_edf_mv(path: Path) -> tuple[np.ndarray, list[str], float]:
    """An EDF file as (signal (n_leads, T) in mV, lead names, fs), through wfdb's EDF reader."""
    from wfdb.io.convert.edf import read_edf

    rec = read_edf(str(path))
    return signal_mv(rec), [str(n).strip() for n in rec.sig_name], float(rec.fs)


def read_wfdb(hea: Path) -> tuple[np.ndarray, list[str], float]:
    """A WFDB record as (signal (n_leads, T) in mV, lead names, fs).

    ``wfdb.rdrecord`` with each channel's units; a header it cannot parse (the Challenge's ``<name>.mat`` record
    lines) goes through the catalog sources' reader (``ecgmodel.data.wfdb_io``). Not that reader first: its
    quirk for the Challenge's PTB headers reads a gain of 100000 adu/mV or more as per volt, and ``wfdb.wrsamp``
    writes such gains for ordinary files.
    """
    from wfdb.io.header import HeaderSyntaxError

    from ecgmodel.data.site_labels import read_wfdb_mv
    from ecgmodel.data.wfdb_io import read_header, read_signal

    try:
        return read_wfdb_mv(hea.with_suffix(""))
    except HeaderSyntaxError:
        header = read_header(hea.with_suffix(""), hea.stem)
        return read_signal(header, hea.parent, hea.stem), list(header.sig_name), float(header.fs)


def scan(root: Path) -> list[Path]:
    """The record files below ``root`` (``.hea`` and ``.edf``, sorted; hidden folders skipped)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))  # fmt: skip


def fingerprint(root: str | Path, labels: str | Path | None = None) -> str:
    """Hash of what a folder ingest reads: every file below ``root`` (path below it, size, mtime; hidden folders
    skipped) and the labels CSV. A file added, removed or changed gives a new fingerprint (16 hex digits)."""
    import hashlib

    root = Path(root)
    digest = hashlib.sha256(f"{root.resolve()}\n".encode())
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts)) if root.is_dir() else []  # fmt: skip
    for p in [*files, *([Path(labels)] if labels and Path(labels).is_file() else [])]:
        st = p.stat()
        digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def read_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{record: {"dx": "a,b", "patient_id": ..., "age": ...}}`` from a labels CSV (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--labels {path}: no such file", "ecgssl ingest --folder DIR --labels FILE.csv ...")
    table = pd.read_csv(path, dtype=str).rename(columns=lambda c: str(c).strip())
    if "record" not in table.columns:
        raise UserError(f"--labels {path}: no `record` column (columns: {list(table.columns)})",
                        "add a header row `record,label` and run ecgssl ingest --folder DIR --labels FILE.csv")  # fmt: skip
    label_cols = [c for c in table.columns if c not in _RESERVED_COLUMNS]
    if not label_cols:
        raise UserError(f"--labels {path}: no label column besides {sorted(_RESERVED_COLUMNS & set(table.columns))}",
                        "add a `label` column and run ecgssl ingest --folder DIR --labels FILE.csv")  # fmt: skip
    names = table["record"].fillna("").map(lambda r: _record_name(str(r).strip()))
    dup = names[names.duplicated()].tolist()
    if dup:
        raise UserError(f"--labels {path}: records listed twice: {dup[:5]} (rule: one row per record)",
                        "merge the rows (labels separated by ';') and run ecgssl ingest --folder DIR --labels ...")  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for name, row in zip(names, table.itertuples(index=False), strict=True):
        row = row._asdict() if hasattr(row, "_asdict") else dict(zip(table.columns, row, strict=True))
        labels = [_clean(v) for c in label_cols for v in str(row.get(c) or "").split(";")
                  if str(row.get(c) or "").strip() and str(row.get(c)) != "nan"]  # fmt: skip
        age = pd.to_numeric(row.get("age"), errors="coerce") if "age" in table.columns else None
        out[name] = {"dx": ",".join(dict.fromkeys(lab for lab in labels if lab)),
                     "patient_id": _clean(row.get("patient_id")) if "patient_id" in table.columns else "",
                     "age": None if age is None or pd.isna(age) else float(age)}  # fmt: skip
    return out


def _record_name(text: str) -> str:
    p = Path(text.replace("\\", "/"))
    return (p.with_suffix("") if p.suffix.lower() in (*SUFFIXES, ".dat", ".mat") else p).as_posix()


def ingest_folder(cfg: FolderConfig, store_path: str | Path) -> dict:
    """Ingest ``cfg.root`` into the store at ``store_path`` (created if needed); returns counts and quarantine."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(f"--folder {root}: no such folder", "ecgssl ingest --folder DIR_WITH_HEA_OR_EDF_FILES ...")
    files = scan(root)
    if not files:
        raise UserError(f"--folder {root}: no .hea or .edf file below it",
                        "ecgssl ingest --folder DIR_WITH_HEA_OR_EDF_FILES ...")  # fmt: skip
    labels = read_labels(cfg.labels) if cfg.labels else {}
    slug = cfg.slug()
    paths = {_record_name(f.relative_to(root).as_posix()) for f in files}
    orphans = sorted(set(labels) - paths - {Path(p).name for p in paths})

    def items() -> Iterator[tuple[str, Any, dict]]:
        for file in files:
            rel = file.relative_to(root).as_posix()
            name = file.stem
            fields = dict(labels.get(_record_name(rel), labels.get(name, {})))
            edf = file.suffix.lower() == ".edf"

            def read(file=file, edf=edf):
                return read_edf_mv(file) if edf else read_wfdb(file)

            raw = [file] if edf else sorted(p for p in file.parent.glob(f"{file.stem}.*") if p.suffix.lower()
                                            not in (".edf",))  # fmt: skip
            yield name, read, {**fields, "database": slug, "record_path": rel, "raw_files": raw}
        for orphan in orphans:  # a label row naming no file: quarantined, so the store says so

            def missing(orphan=orphan):
                raise FileNotFoundError(f"file rule: {cfg.labels} labels {orphan}, but no {orphan}.hea or "
                                        f"{orphan}.edf is below {root}")  # fmt: skip

            yield orphan, missing, {"database": slug, "record_path": orphan}

    res = write_labelled_records(
        store_path, items(), source=slug, version=cfg.version, dx_system=cfg.label_system, fs=cfg.fs,
        window_s=cfg.window_s, max_windows=cfg.max_windows, commit_every=cfg.commit_every,
        source_info={"base_url": str(root.resolve()), "labels": str(Path(cfg.labels).resolve()) if cfg.labels else ""},
        total=len(files) + len(orphans),
    )  # fmt: skip
    res["source"] = slug
    return res
