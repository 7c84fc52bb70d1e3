"""From a store to the labelled, split, in-memory data of one fine-tuning run.

``prepare_task(cfg)`` reads the store's metadata, derives one label row per record (arrhythmia27: multi-hot of
the scored codes of SNOMED sources and of PTB-XL records through ``aux_data/ptbxl_to_snomed_scored.csv`` (their
heart axis read from PTB-XL's ``ptbxl_database.csv``), equivalent pairs merged into 24 outputs; localization: one class per record;
ptbxl-superclass: multi-hot NORM/MI/STTC/CD/HYP of PTB-XL records with a diagnostic statement), keeps ONE copy of
every recording (``split_assignment.canonical_copies`` among the copies that carry the label), takes each record's
split from the store's persisted assignment (``ecgmodel.data.split_assignment``, the one pretraining reads), draws
the nested label subsets of ``cfg.fraction`` for ``cfg.seed`` (training records, and validation records when
``cfg.validation == 'nested'``), and loads the signal rows of the used records ONCE with ``store.load_signal``
(whole-chunk reads) into memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ecgmodel.data import labels as L
from ecgmodel.data.split_assignment import canonical_copies, ensure_assignment
from ecgmodel.data.splits import nested_fractions
from ecgmodel.downstream.config import FinetuneConfig


class TooFewClasses(ValueError):
    """Fewer than 2 classes keep ``min_class_records`` records: nothing to learn (an expected, fixable failure).

    ``counts`` are the records per label before merging; ``suggested`` is the ``min_class_records`` that leaves
    2 classes (None when the store holds a single label: only more labelled records help).
    """

    def __init__(self, task: str, target: str, store: str, counts: dict[str, int], min_class_records: int):
        self.task, self.target, self.store, self.min_class_records = task, target, str(store), int(min_class_records)
        self.counts = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))}
        self.suggested = max(self.counts.values()) if len(self.counts) >= 2 else None
        shown = ", ".join(f"{k} {v}" for k, v in list(self.counts.items())[:8]) + (" ..." if len(counts) > 8 else "")
        n_kept = sum(v >= self.min_class_records for v in self.counts.values())
        self.problem = (f"{self.store}: {task} (target '{target}') has {n_kept} class(es) with at least "
                        f"min_class_records={self.min_class_records} records (records per label: {shown or 'none'}); "
                        "need at least 2")  # fmt: skip
        super().__init__(f"{self.problem}: lower min_class_records (--set min_class_records=N) or add labelled records")

    def fix(self) -> str:
        """The ``ecgssl`` command that fixes it."""
        if self.suggested is None:
            return f"add records of a second class: ecgssl ingest --folder DIR --labels FILE.csv --store {self.store}"
        return f"ecgssl finetune --task {self.task} --store {self.store} ... --set min_class_records={self.suggested}"


@dataclass
class WindowSet:
    """Windows of a set of records, in memory. ``record_index`` maps each window to its record (0..n_records-1)."""

    signal: np.ndarray  # int16 (W, 12, T)
    lead_present: np.ndarray  # bool (W, 12)
    valid_length: np.ndarray  # int64 (W,)
    record_index: np.ndarray  # int64 (W,)
    y: np.ndarray  # per RECORD: bool (n, C) multi-hot, or int64 (n,) class index
    records: pd.DataFrame  # per record: source, record, patient_id, fold, split

    @property
    def n_records(self) -> int:
        return len(self.records)


@dataclass
class TaskData:
    task: str
    classes: list[str]
    definitions: pd.DataFrame  # label definition table (index, code, abbreviation, name, equivalence_group, source)
    records: pd.DataFrame  # every labelled record with its split and (train only) membership in the subset
    y: np.ndarray  # bool (n_records, C) for all labelled records (one-hot for localization)
    train: WindowSet
    val: WindowSet
    test: WindowSet
    subsets: dict[float, np.ndarray]  # nested subsets: fraction -> indices into the TRAIN records
    target: str = "snomed-ct"
    info: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        return self.task in ("arrhythmia27", "ptbxl-superclass")


def record_table(meta: pd.DataFrame) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """One row per (source, record) in store order, and the store rows (windows) of each record."""
    meta = meta.reset_index(drop=True)
    keys = meta["source"].astype(str) + "\x00" + meta["record"].astype(str)
    codes, uniques = pd.factorize(keys, sort=False)
    first = np.unique(codes, return_index=True)[1]
    records = meta.loc[first, ["source", "record", "database", "dx", "patient_id", "fold"]].reset_index(drop=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    rows = [order[bounds[i] : bounds[i + 1]] for i in range(len(uniques))]
    return records, rows


def _labels(cfg: FinetuneConfig, records: pd.DataFrame, dx_systems: dict[str, str], store_path: str,
            sources: dict | None = None):
    """(keep mask, y bool (n, C), classes, definitions, target, info) for the task."""
    if cfg.task == "arrhythmia27":
        systems = records["source"].map(lambda s: dx_systems.get(s, ""))
        has_dx = records["dx"].astype(str).str.strip() != ""
        snomed, scp = (systems == L.SNOMED_SYSTEM) & has_dx, (systems == L.PTBXL_SYSTEM) & has_dx
        if not (snomed | scp).any():
            raise ValueError(
                f"{store_path}: no labelled records for arrhythmia27 (rule: source dx_system '{L.SNOMED_SYSTEM}' "
                f"or '{L.PTBXL_SYSTEM}' and a non-empty dx); dx_systems are {dx_systems}"
            )
        dx, info = records["dx"].astype(str).copy(), {}
        if scp.any():  # PTB-XL statements + heart_axis -> scored SNOMED codes (aux_data/ptbxl_to_snomed_scored.csv)
            dx.loc[scp], info = _ptbxl_snomed_dx(cfg, records.loc[scp], sources or {}, store_path)
        keep = snomed | scp
        classes = L.merged_scored_codes()
        y = L.encode_snomed(dx[keep], classes)
        definitions = L.label_definition_table(merged=True)
        definitions["ptbxl_statements"] = definitions["code"].map(_ptbxl_statements_of()).fillna("")
        return keep.to_numpy(), y, classes, definitions, L.SNOMED_SYSTEM, info
    if cfg.task == "ptbxl-superclass":
        from ecgmodel.data.ptbxl import SUPERCLASSES, superclass_matrix

        systems = records["source"].map(lambda s: dx_systems.get(s, ""))
        scp = systems == L.PTBXL_SYSTEM
        y_all = superclass_matrix([L.split_dx(d) if k else [] for d, k in zip(records["dx"], scp, strict=True)])
        keep = scp.to_numpy() & (y_all.sum(axis=1) > 0)  # rule: records without a diagnostic superclass are out
        if not keep.any():
            raise ValueError(
                f"{store_path}: no PTB-XL record with a diagnostic superclass for ptbxl-superclass (rule: source "
                f"dx_system '{L.PTBXL_SYSTEM}' and at least one diagnostic scp_code); dx_systems are {dx_systems}"
            )
        definitions = pd.DataFrame({"index": range(len(SUPERCLASSES)), "code": SUPERCLASSES,
                                    "abbreviation": SUPERCLASSES, "name": SUPERCLASSES, "equivalence_group": "",
                                    "source": "PTB-XL scp_statements.csv diagnostic_class"})  # fmt: skip
        return keep, y_all[keep].astype(bool), list(SUPERCLASSES), definitions, L.PTBXL_SYSTEM, {}
    target = L.localization_target_of(dx_systems, records["source"].unique(), cfg.localization_target)
    names = pd.Series(
        [
            L.localization_label(dx, dx_systems.get(src, ""), target)
            for dx, src in zip(records["dx"], records["source"], strict=True)
        ],
        index=records.index,
    )
    keep = names.notna()
    if keep.sum() == 0:
        raise ValueError(f"{store_path}: no record carries a '{target}' localization label")
    merged, rule = L.merge_rare(names[keep], cfg.min_class_records)
    classes = sorted(c for c in merged.unique() if c != "other") + (["other"] if (merged == "other").any() else [])
    if len(classes) < 2:
        raise TooFewClasses(cfg.task, target, store_path, names[keep].value_counts().to_dict(), cfg.min_class_records)
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((int(keep.sum()), len(classes)), dtype=bool)
    y[np.arange(len(y)), merged.map(index).to_numpy()] = True
    definitions = L.localization_definition_table(classes, target, rule)
    return keep.to_numpy(), y, classes, definitions, target, {"merge_rule": rule}


def _ptbxl_statements_of() -> dict[str, str]:
    """merged arrhythmia27 class -> the PTB-XL statements that set it (``scp_codes:KEY`` / ``heart_axis:VALUE``)."""
    from ecgmodel.data.ptbxl import snomed_table

    t = snomed_table()
    out: dict[str, list[str]] = {}
    for row in t.itertuples(index=False):
        out.setdefault(L.representative(row.snomed_code), []).append(f"{row.ptbxl_field}:{row.ptbxl_value}")
    return {k: " ".join(v) for k, v in out.items()}


def _ptbxl_snomed_dx(cfg: FinetuneConfig, records: pd.DataFrame, sources: dict, store_path: str):
    """The scored SNOMED codes (comma-separated dx) of PTB-XL records and info naming the heart_axis source."""
    from ecgmodel.data import ptbxl

    locations = ptbxl.metadata_locations(sources, cfg.split.ptbxl_metadata)
    try:
        axes, location = ptbxl.load_heart_axes(locations)
    except ValueError as e:
        raise ValueError(
            f"{store_path}: arrhythmia27 needs PTB-XL's heart_axis (left/right axis deviation) for its "
            f"{len(records)} PTB-XL records and found no readable ptbxl_database.csv ({e}); give it with "
            "--set split.ptbxl_metadata=<PTB-XL folder>/ptbxl_database.csv"
        ) from e
    ids = records["record"].map(ptbxl.ecg_id)
    unknown = ids.isna() | ~ids.isin(list(axes))
    if unknown.any():
        raise ValueError(f"{store_path}: PTB-XL record {records.loc[unknown, 'record'].iloc[0]!r} has no row in "
                         f"{location} (rule: every PTB-XL record's ecg_id is in the ptbxl_database.csv its "
                         "heart_axis is read from)")  # fmt: skip
    dx = [",".join(ptbxl.snomed_codes(L.split_dx(d), axes.get(int(i))))
          for d, i in zip(records["dx"], ids, strict=True)]  # fmt: skip
    return pd.Series(dx, index=records.index), {"ptbxl_heart_axis": location}


def labelled_records(cfg: FinetuneConfig, store=None) -> dict:
    """The task's labelled records, one canonical copy per recording, each with its split (no signal read).

    Returns a dict: records (source, record, database, dx, patient_id, fold, split), rows (store rows per record),
    y, classes, definitions, target, info, assignment_file, n_copies_dropped."""
    from ecgmodel.data.store import open_store

    store = store or open_store(cfg.store)
    meta = store.meta()
    dx_systems = dict(store.attrs.get("dx_systems", {}))
    records, rows = record_table(meta)
    keep, y, classes, definitions, target, info = _labels(cfg, records, dx_systems, str(cfg.store),
                                                          dict(store.attrs.get("sources", {})))
    records = records[keep].reset_index(drop=True)
    rows = [r for r, k in zip(rows, keep, strict=True) if k]
    if cfg.max_windows_per_record:
        rows = [r[: cfg.max_windows_per_record] for r in rows]

    # one copy per recording (Challenge 2020/2021 and PTB-XL copies are counted once), split from the store's
    # persisted assignment (the one pretraining reads)
    assignment, assignment_file = ensure_assignment(store, cfg.split)
    canon = canonical_copies(records)
    n_copies = int((~canon).sum())
    records, rows, y = records[canon].reset_index(drop=True), [r for r, c in zip(rows, canon, strict=True) if c], y[canon]
    lookup = assignment.set_index(["source", "record"])
    keys = pd.MultiIndex.from_arrays([records["source"].astype(str), records["record"].astype(str)])
    missing = ~keys.isin(lookup.index)
    if missing.any():
        raise ValueError(f"{cfg.store}: record {records.loc[missing, 'record'].iloc[0]!r} is not in the split "
                         f"assignment {assignment_file} (rule: one assignment per store content; delete it to rebuild)")
    found = lookup.loc[keys]
    records["split"] = found["split"].to_numpy()
    records["patient_id"] = found["patient_id"].astype(str).to_numpy()
    return {"store": store, "meta": meta, "records": records, "rows": rows, "y": y, "classes": classes,
            "definitions": definitions, "target": target, "info": info, "assignment_file": assignment_file,
            "n_copies_dropped": n_copies}  # fmt: skip


def check_classes(cfg: FinetuneConfig, store=None) -> None:
    """Raise :class:`TooFewClasses` (or another ValueError naming the rule) when ``cfg``'s task has no two classes
    to learn; reads the store's metadata only (the CLI runs it before starting Prefect or MLflow)."""
    if cfg.task != "localization":  # the only task whose classes depend on min_class_records
        return
    if store is None:
        from ecgmodel.data.store import open_store

        store = open_store(cfg.store)
    records, _ = record_table(store.meta())
    _labels(cfg, records, dict(store.attrs.get("dx_systems", {})), str(cfg.store), dict(store.attrs.get("sources", {})))


def prepare_task(cfg: FinetuneConfig, store=None) -> TaskData:
    """Labels, splits, nested subset and in-memory windows for ``cfg`` (see module docstring)."""
    lab = labelled_records(cfg, store)
    store, meta, records, rows, y = lab["store"], lab["meta"], lab["records"], lab["rows"], lab["y"]
    classes, definitions, target, info = lab["classes"], lab["definitions"], lab["target"], lab["info"]
    assignment_file, n_copies = lab["assignment_file"], lab["n_copies_dropped"]
    s = cfg.split
    for name in ("train", "val"):
        if not (records["split"] == name).any():
            raise ValueError(
                f"{cfg.store}: the {name} split is empty ({len(records)} labelled records; rule: folds "
                f"{getattr(s, name + '_folds')} -> {name} where the data has folds, else a "
                f"{s.val_fraction:g}/{s.test_fraction:g} val/test share of patients). Adjust with --set "
                f"split.{name}_folds=[...] or add labelled records."
            )

    train_idx = np.flatnonzero(records["split"] == "train")
    ladder = sorted(set(cfg.fractions) | {cfg.fraction})
    subsets = nested_fractions(y[train_idx], ladder, seed=cfg.seed)
    chosen = train_idx[subsets[cfg.fraction]]
    records["labelled"] = False
    records.loc[chosen, "labelled"] = True

    val_all = np.flatnonzero(records["split"] == "val")
    if cfg.validation == "nested":  # the validation labels shrink with the fraction too (nested, stratified)
        val_ladder = nested_fractions(y[val_all], ladder, seed=cfg.seed, min_size=min(cfg.min_val_records, len(val_all)))
        val_idx = val_all[val_ladder[cfg.fraction]]
    else:
        val_idx = val_all
    test_idx = np.flatnonzero(records["split"] == "test")
    needed = [chosen, val_idx, test_idx]
    all_rows = np.concatenate([rows[i] for part in needed for i in part]) if len(records) else np.zeros(0, int)
    signal = store.load_signal(np.sort(all_rows))  # one pass, whole chunks
    position = {int(r): i for i, r in enumerate(np.sort(all_rows))}
    lead_present = store.lead_present()
    valid_length = meta["valid_length"].to_numpy().astype(np.int64)

    def window_set(idx: np.ndarray) -> WindowSet:
        win_rows = [rows[i] for i in idx]
        flat = np.concatenate(win_rows) if win_rows else np.zeros(0, np.int64)
        take = np.array([position[int(r)] for r in flat], dtype=np.int64)
        rec_index = np.concatenate([np.full(len(r), j) for j, r in enumerate(win_rows)]) if win_rows else take
        labels = y[idx] if cfg.task != "localization" else y[idx].argmax(axis=1)
        return WindowSet(signal[take], lead_present[flat], valid_length[flat], rec_index.astype(np.int64),
                         labels, records.iloc[idx].reset_index(drop=True))  # fmt: skip

    info.update(
        n_records=len(records),
        n_train_records=len(train_idx),
        n_labelled=len(chosen),
        n_val=len(val_idx),
        n_val_split=len(val_all),
        n_labels_used=len(chosen) + len(val_idx),
        n_test=len(test_idx),
        n_copies_dropped=n_copies,
        validation=cfg.validation,
        split_assignment=str(assignment_file),
        store_hash=getattr(store, "hash", ""),
    )
    return TaskData(cfg.task, classes, definitions, records, y, window_set(chosen), window_set(val_idx),
                    window_set(test_idx), subsets, target, info)  # fmt: skip
