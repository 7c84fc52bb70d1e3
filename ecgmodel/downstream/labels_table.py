"""A downstream task's labels as a table: one row per canonical record of a store (``ecgssl labels``).

The rows and label columns are exactly what fine-tuning uses (:func:`ecgmodel.downstream.dataset.labelled_records`:
the same label rules, one copy per recording, the split from the store's persisted assignment), so anyone can
evaluate an encoder in their own harness with ``ecgssl embed`` + ``ecgssl labels`` and join on ``key``.

Columns: ``key`` (``source/record``, the key ``ecgssl embed`` and the saved predictions use), ``source``,
``record``, ``database``, ``split`` (train / val / test), ``patient_id``, ``fold``, then the task's labels:

* ``arrhythmia27``: one 0/1 column per merged scored class (24), named by its SNOMED CT code, in scoring order;
* ``ptbxl-superclass``: ``NORM``, ``MI``, ``STTC``, ``CD``, ``HYP`` (0/1);
* ``localization``: ``label`` (the class name; rare classes merged as fine-tuning merges them).

The class definitions (index, code, abbreviation, name, equivalence group, source, PTB-XL statements) go into a
sidecar ``<out stem>.classes.csv`` beside the table, and into the Parquet schema metadata (``ecgssl.classes``,
JSON records; ``ecgssl.task``) when the table is Parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ecgmodel.errors import UserError

TASKS = ("arrhythmia27", "ptbxl-superclass", "localization")
FORMATS = (".parquet", ".csv")
KEY_COLUMNS = ["key", "source", "record", "database", "split", "patient_id", "fold"]


def labels_table(task: str, store: str | Path, overrides: dict | list[str] | None = None):
    """``(table, definitions)`` of ``task`` on ``store``; ``overrides`` are FinetuneConfig keys (e.g.
    ``{"split.ptbxl_metadata": ".../ptbxl_database.csv"}``): the split settings must be the fine-tuning run's to
    read the same persisted assignment. Expected failures raise :class:`UserError`."""
    from ecgmodel.config import apply_overrides
    from ecgmodel.data.store import StoreError, open_store
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.downstream.dataset import labelled_records

    fix = f"ecgssl labels --task arrhythmia27 --store {store} --out labels.parquet"
    if task not in TASKS:
        raise UserError(f"unknown task {task!r} (rule: one of {', '.join(TASKS)})", fix)
    try:
        cfg = apply_overrides(FinetuneConfig(task=task, store=str(store)), overrides)
    except (KeyError, ValueError) as e:
        raise UserError(f"bad --set: {e}", f"ecgssl labels --task {task} --store {store} --out FILE "
                        "--set split.seed=0") from e  # fmt: skip
    try:
        handle = open_store(str(store))
    except StoreError as e:
        raise UserError(str(e), f"ecgssl ingest --store {store} --source ptb-xl") from e
    try:
        lab = labelled_records(cfg, handle)
    except ValueError as e:
        if "ptbxl_metadata" in str(e):  # PTB-XL records whose heart_axis file cannot be read
            raise UserError(str(e).split("; give it with")[0], f"ecgssl labels --task {task} --store {store} --out "
                            "FILE --set split.ptbxl_metadata=<PTB-XL folder>/ptbxl_database.csv") from e  # fmt: skip
        # no record carries the task's labels: add a source that does
        raise UserError(str(e), f"ecgssl ingest --store {store} --source ptb-xl") from e
    records, y, classes = lab["records"], np.asarray(lab["y"]), list(lab["classes"])
    table = pd.DataFrame({
        "key": records["source"].astype(str) + "/" + records["record"].astype(str),
        "source": records["source"].astype(str), "record": records["record"].astype(str),
        "database": records["database"].astype(str), "split": records["split"].astype(str),
        "patient_id": records["patient_id"].astype(str), "fold": records["fold"].astype(int),
    })  # fmt: skip
    if task == "localization":
        table["label"] = [classes[i] for i in y.argmax(axis=1)]
    else:
        for j, c in enumerate(classes):
            table[str(c)] = y[:, j].astype(np.int8)
    return table, lab["definitions"].reset_index(drop=True)


def sidecar_path(out: str | Path) -> Path:
    """``labels.parquet`` -> ``labels.classes.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".classes.csv")


def check_out(out: str | Path, task: str) -> Path:
    """``out`` as a Path; :class:`UserError` unless it ends in .parquet or .csv."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: unknown format {out.suffix!r} (rule: {' or '.join(FORMATS)})",
                        f"ecgssl labels --task {task} --store STORE --out {out.with_suffix('.parquet')}")  # fmt: skip
    return out


def write_labels_table(table: pd.DataFrame, definitions: pd.DataFrame, out: str | Path, task: str) -> dict:
    """Write ``table`` to ``out`` (.parquet or .csv) and the class definitions beside it; returns a summary."""
    out = check_out(out, task)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        table.to_csv(out, index=False)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        meta = dict(arrow.schema.metadata or {})
        meta[b"ecgssl.task"] = task.encode()
        meta[b"ecgssl.classes"] = json.dumps(definitions.to_dict("records"), default=str).encode()
        pq.write_table(arrow.replace_schema_metadata(meta), out)
    definitions.to_csv(sidecar_path(out), index=False)
    counts = table["split"].value_counts()
    return {"out": str(out), "classes_csv": str(sidecar_path(out)), "task": task, "records": len(table),
            **{f"{s}_records": int(counts.get(s, 0)) for s in ("train", "val", "test")},
            "classes": len(definitions)}  # fmt: skip


def read_labels_table(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(table, definitions)`` of a file written by :func:`write_labels_table`."""
    path = Path(path)
    table = pd.read_csv(path, dtype={"record": str, "patient_id": str}, keep_default_na=False) \
        if path.suffix.lower() == ".csv" else pd.read_parquet(path)  # fmt: skip
    return table, pd.read_csv(sidecar_path(path), dtype={"code": str}, keep_default_na=False)
