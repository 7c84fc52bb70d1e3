"""One persisted, versioned train/val/test assignment per store, consumed by pretraining AND fine-tuning.

Why: an encoder pretrained on the recordings a downstream model is tested on has seen its test set; a random-init
baseline never has. So the store's records are split ONCE (per store content and split settings), the assignment is
written next to the data (``<store>/splits/assignment-v<N>-<store hash>-<settings hash>.csv``), and:

* pretraining reads only the rows of ``train`` records by default (``ecgmodel.train.pretrain``) and records which
  recordings it saw (``pretrain_records.csv`` beside the encoder);
* fine-tuning takes every record's split from the same file;
* an ablation compares the encoder's recordings with its own val/test recordings and refuses an overlap unless
  told to allow it (:func:`seen_overlap`).

Rules of the assignment (each pinned by a unit test):

1. **Recordings, not files.** Copies of one recording share a *recording key* (``splits.recording_keys``): Challenge
   2020 and 2021 ship the same CPSC / Georgia / PTB / INCART / PTB-XL files, and the Challenge's PTB-XL ``HR00001``
   is PTB-XL's ``00001``. One copy per recording is *canonical* (:data:`SOURCE_PRIORITY`); the others are counted
   nowhere (training rows, test records and subset sizes all use canonical copies only).
2. **Patients.** Records are grouped by patient: PTB-XL's ``patient_id`` (for the Challenge's PTB-XL copies too,
   from the store's own ``ptb-xl`` rows or from PTB-XL's ``ptbxl_database.csv`` given as ``ptbxl_metadata``); PTB
   (549 records of 290 patients) and St Petersburg INCART (75 records of 32 patients) carry no patient id in the
   Challenge files, but both databases number their records in patient order and the Challenge headers keep age
   and sex, so a run of consecutive record numbers with the same age and sex is taken as one patient. The rule can
   only merge two neighbouring patients (which keeps the split safe), never split one. Other records without a
   patient id are their own group.
3. **Folds.** Groups with a PTB-XL ``strat_fold`` follow it (1-8 train, 9 val, 10 test: the official split) unless
   ``ptbxl_split='patientwise'``, where PTB-XL patients are drawn like every other group.
4. **Stratified.** The other groups are split by iterative stratification on the union of their records' labels
   (scored SNOMED codes with the equivalent pairs merged, and PTB-XL diagnostic superclasses).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ecgmodel.data.splits import draw_val_test, recording_keys

#: Format version of the assignment file; a change in the rules bumps it (old files are then ignored).
ASSIGNMENT_VERSION = 1
SPLITS_DIR = "splits"
#: Which copy of a recording is canonical: the lower the better (then store order).
SOURCE_PRIORITY = {"ptb-xl": 0, "challenge-2021": 1, "challenge-2020": 2}
#: Databases whose patients are inferred from consecutive record numbers with equal age and sex.
ORDERED_PATIENT_DATABASES = ("ptb", "st_petersburg_incart")


class SplitConfig(BaseModel):
    """How a store's records are split (one assignment per store and settings; see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed of the stratified draw of the groups without folds.")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Share of patient groups without folds put in val.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of patient groups without folds put in test.")
    train_folds: list[int] = Field([1, 2, 3, 4, 5, 6, 7, 8], description="PTB-XL strat_folds used for training.")
    val_folds: list[int] = Field([9], description="PTB-XL strat_folds used for validation (thresholds, best epoch).")
    test_folds: list[int] = Field([10], description="PTB-XL strat_folds held out for the test metrics.")
    ptbxl_split: Literal["official", "patientwise"] = Field(
        "official",
        description="official: PTB-XL patients follow strat_fold (train/val/test folds above); patientwise: "
        "they are drawn patient-wise and stratified by val_fraction/test_fraction like every other group (use it "
        "when the store holds few records of folds 9 and 10).",
    )
    ptbxl_metadata: str | None = Field(
        None,
        description="Path or URL of PTB-XL's ptbxl_database.csv: links the Challenge's PTB-XL copies (HRnnnnn) to "
        "their PTB-XL patient and fold when the store has no ptb-xl rows for them. None: the store's own rows only.",
    )


# ------------------------------------------------------------------------------------------ records and patients
def store_records(meta: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, record) in store order: source, record, database, dx, patient_id, age, sex, fold."""
    meta = meta.reset_index(drop=True)
    keys = meta["source"].astype(str) + "\x00" + meta["record"].astype(str)
    first = ~keys.duplicated()
    cols = [c for c in ("source", "record", "database", "dx", "patient_id", "age", "sex", "fold") if c in meta]
    return meta.loc[first, cols].reset_index(drop=True)


def read_ptbxl_metadata(location: str) -> pd.DataFrame:
    """ecg_id, patient_id, strat_fold of PTB-XL's ``ptbxl_database.csv`` (a local path, file:// or http(s) URL)."""
    try:
        db = pd.read_csv(location.removeprefix("file://"), usecols=["ecg_id", "patient_id", "strat_fold"])
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read PTB-XL metadata {location!r} (rule: a ptbxl_database.csv with ecg_id, "
                         f"patient_id, strat_fold): {e}") from e  # fmt: skip
    db["ecg_id"] = db["ecg_id"].astype(int)
    db["patient_id"] = db["patient_id"].map(lambda v: f"{float(v):.0f}")
    return db


def _record_number(record: str) -> int | None:
    m = re.search(r"(\d+)$", str(record))
    return int(m.group(1)) if m else None


def link_patients(records: pd.DataFrame, ptbxl: pd.DataFrame | None = None) -> pd.DataFrame:
    """``records`` with ``patient_id`` / ``fold`` filled where rule 2 knows them (a copy; see module docstring)."""
    out = records.copy()
    out["patient_id"] = out["patient_id"].astype(str).str.strip().replace("nan", "")
    out["fold"] = out["fold"].fillna(-1).astype(int)
    db = out["database"].astype(str).str.strip().str.lower() if "database" in out else out["source"].astype(str)
    # Challenge PTB-XL copies (HRnnnnn): PTB-XL's own patient and fold
    if ptbxl is not None and len(ptbxl):
        hr = out["record"].astype(str).str.fullmatch(r"HR\d{5}") & (db == "ptb-xl")
        ids = out.loc[hr, "record"].astype(str).str[2:].astype(int)
        by_id = ptbxl.set_index("ecg_id")
        known = ids.isin(by_id.index)
        idx = ids[known].index
        missing = out.loc[idx, "patient_id"] == ""
        out.loc[idx[missing.to_numpy()], "patient_id"] = by_id.loc[ids[known], "patient_id"].to_numpy()[missing.to_numpy()]
        nofold = out.loc[idx, "fold"] < 1
        out.loc[idx[nofold.to_numpy()], "fold"] = by_id.loc[ids[known], "strat_fold"].to_numpy()[nofold.to_numpy()]
    # PTB and INCART: consecutive numbers with equal age and sex = one patient (per recording, so copies agree)
    for name in ORDERED_PATIENT_DATABASES:
        part = out[(db == name) & (out["patient_id"] == "")]
        if part.empty:
            continue
        num = part["record"].map(_record_number)
        if num.isna().any():
            bad = part.loc[num.isna(), "record"].iloc[0]
            raise ValueError(f"{name} record {bad!r}: no record number (rule: PTB/INCART names end in digits)")
        age = part["age"].astype(float).round(0).fillna(-1) if "age" in part else pd.Series(-1, index=part.index)
        sex = part["sex"].astype(str).str.strip().str.lower() if "sex" in part else pd.Series("", index=part.index)
        rec = pd.DataFrame({"num": num.astype(int), "age": age, "sex": sex}).drop_duplicates("num").sort_values("num")
        patient, pid, prev = {}, None, None
        for n, a, s in rec.itertuples(index=False):
            if prev is None or (a, s) != prev[1:] or n != prev[0] + 1:
                pid = f"{name}-{n:05d}"
            patient[n] = pid
            prev = (n, a, s)
        out.loc[part.index, "patient_id"] = num.astype(int).map(patient).to_numpy()
    return out


def patient_groups(records: pd.DataFrame) -> pd.Series:
    """Group key per record: its patient when any copy of its recording has one, else the recording itself."""
    rec_key = recording_keys(records)
    db = (records["database"] if "database" in records else records["source"]).astype(str).str.strip().str.lower()
    pid = records["patient_id"].astype(str).str.strip()
    patient = ("pid:" + db + ":" + pid).where(pid != "", "")
    known = patient[patient != ""].groupby(rec_key[patient != ""]).first()
    linked = rec_key.map(known)
    return linked.where(linked.notna(), rec_key).astype(str)


def canonical_copies(records: pd.DataFrame, candidates: np.ndarray | None = None) -> np.ndarray:
    """bool per record: the one copy of its recording that counts (:data:`SOURCE_PRIORITY`, then store order).

    ``candidates`` (bool) restricts the choice (e.g. to the copies that carry a task's label)."""
    keys = recording_keys(records).to_numpy()
    cand = np.ones(len(records), bool) if candidates is None else np.asarray(candidates, bool)
    prio = records["source"].map(lambda s: SOURCE_PRIORITY.get(str(s), 9)).to_numpy()
    order = np.lexsort((np.arange(len(records)), prio))
    out = np.zeros(len(records), bool)
    seen: set[str] = set()
    for i in order:
        if cand[i] and keys[i] not in seen:
            seen.add(keys[i])
            out[i] = True
    return out


def stratification_labels(records: pd.DataFrame) -> np.ndarray:
    """Multi-hot per record used only to balance the split: merged scored SNOMED codes + PTB-XL superclasses."""
    from ecgmodel.data import labels as L
    from ecgmodel.data.ptbxl import superclass_matrix

    dx = records["dx"].astype(str).fillna("")
    snomed = L.encode_snomed(dx, L.merged_scored_codes())
    # a dx is either SNOMED codes (digits) or PTB-XL scp keys; the other matrix stays zero for it
    is_scp = ~dx.str.contains(r"\d{6,}", regex=True)
    scp = superclass_matrix([L.split_dx(d) if s else [] for d, s in zip(dx, is_scp, strict=True)]).astype(bool)
    return np.hstack([snomed, scp])


# ------------------------------------------------------------------------------------------------ assignment
def assign(records: pd.DataFrame, cfg: SplitConfig, ptbxl: pd.DataFrame | None = None) -> pd.DataFrame:
    """The assignment table: one row per record with recording_key, group, patient_id, fold, split, canonical."""
    linked = link_patients(records, ptbxl)
    groups = patient_groups(linked).to_numpy()
    y = stratification_labels(linked)
    uniq, inverse = np.unique(groups, return_inverse=True)
    folds = linked["fold"].to_numpy().astype(int)
    fold_map = {**{f: "train" for f in cfg.train_folds}, **{f: "val" for f in cfg.val_folds},
                **{f: "test" for f in cfg.test_folds}}  # fmt: skip
    group_split = np.full(len(uniq), "", dtype=object)
    if cfg.ptbxl_split == "official":
        group_fold = np.full(len(uniq), -1)
        for g, f in zip(inverse, folds, strict=True):
            if f >= 1 and group_fold[g] < 1:
                group_fold[g] = f
        has = group_fold >= 1
        group_split[has] = [fold_map.get(int(f), "unused") for f in group_fold[has]]
    free = np.flatnonzero(group_split == "")
    if len(free):
        gy = np.zeros((len(uniq), y.shape[1] + 1), dtype=bool)
        np.logical_or.at(gy[:, :-1], inverse, y)
        group_split[free] = draw_val_test(gy[free], cfg.val_fraction, cfg.test_fraction,
                                          np.random.default_rng(cfg.seed))
    table = linked[["source", "record"]].copy()
    table["database"] = linked["database"] if "database" in linked else linked["source"]
    table["recording_key"] = recording_keys(linked).to_numpy()
    table["group"] = groups
    table["patient_id"] = linked["patient_id"].to_numpy()
    table["fold"] = folds
    table["split"] = group_split[inverse]
    table["canonical"] = canonical_copies(linked)
    return table


def settings_hash(cfg: SplitConfig) -> str:
    payload = json.dumps({"version": ASSIGNMENT_VERSION, **cfg.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def assignment_path(store_path: str | os.PathLike, store_hash: str, cfg: SplitConfig) -> Path:
    return Path(store_path) / SPLITS_DIR / f"assignment-v{ASSIGNMENT_VERSION}-{store_hash}-{settings_hash(cfg)}.csv"


def ensure_assignment(store, cfg: SplitConfig | None = None) -> tuple[pd.DataFrame, Path]:
    """The store's assignment for ``cfg`` (read when persisted, else computed and written atomically)."""
    from ecgmodel.data.store import open_store

    cfg = cfg or SplitConfig()
    store = open_store(store) if isinstance(store, str | os.PathLike) else store
    path = assignment_path(store.path, store.hash, cfg)
    if path.is_file():
        table = pd.read_csv(path, dtype={"record": str, "patient_id": str, "group": str}, keep_default_na=False)
        return table, path
    ptbxl = read_ptbxl_metadata(cfg.ptbxl_metadata) if cfg.ptbxl_metadata else None
    table = assign(store_records(store.meta()), cfg, ptbxl)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps(
        {"version": ASSIGNMENT_VERSION, "store_hash": store.hash, "settings": cfg.model_dump(mode="json"),
         "canonical_records": {s: int(((table["split"] == s) & table["canonical"]).sum())
                               for s in ("train", "val", "test", "unused")}},
        indent=1))  # fmt: skip
    return table, path


def rows_of(meta: pd.DataFrame, table: pd.DataFrame, splits: Iterable[str] = ("train",)) -> np.ndarray:
    """Store rows (windows) whose record is a canonical copy in one of ``splits``."""
    keep = table[table["split"].isin(list(splits)) & table["canonical"].astype(bool)]
    wanted = set(zip(keep["source"].astype(str), keep["record"].astype(str), strict=True))
    pairs = zip(meta["source"].astype(str), meta["record"].astype(str), strict=True)
    return np.flatnonzero(np.fromiter((p in wanted for p in pairs), bool, count=len(meta)))


def file_sha(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ leak check
SEEN_FILE = "pretrain_records.csv"
SEEN_INFO = "pretrain_data.json"


def write_seen(out_dir: str | os.PathLike, table: pd.DataFrame, info: dict) -> list[Path]:
    """Record what a pretraining run saw: its recordings (``pretrain_records.csv``) and how they were chosen."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table[["source", "record", "recording_key", "split"]].to_csv(out / SEEN_FILE, index=False)
    (out / SEEN_INFO).write_text(json.dumps(info, indent=1, default=str))
    return [out / SEEN_FILE, out / SEEN_INFO]


def read_seen(encoder_ref: str, tracking_uri: str | None = None) -> pd.DataFrame | None:
    """The recordings an encoder was pretrained on, or None when the encoder does not say.

    Looks beside a local encoder file, and in the ``encoder/`` artifacts of an MLflow run reference."""
    ref = str(encoder_ref)
    path = Path(ref)
    candidates = [path.parent / SEEN_FILE] if path.suffix else [path / SEEN_FILE]
    for c in candidates:
        if c.is_file():
            return pd.read_csv(c, dtype=str, keep_default_na=False)
    if path.exists():
        return None
    try:
        import mlflow

        from ecgmodel.train.checkpoint import resolve_encoder_ref

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        local = Path(resolve_encoder_ref(ref, tracking_uri))
        if (local.parent / SEEN_FILE).is_file():
            return pd.read_csv(local.parent / SEEN_FILE, dtype=str, keep_default_na=False)
    except Exception:  # an unresolvable reference fails later, in load_encoder, with its own message
        return None
    return None


def seen_overlap(seen: pd.DataFrame | None, records: pd.DataFrame, splits: Iterable[str] = ("val", "test")) -> dict:
    """How many of ``records``' (task records with a ``split`` column) val/test recordings the encoder saw."""
    if seen is None:
        return {"known": False, "n_overlap": 0, "examples": []}
    keys = recording_keys(records)
    mask = records["split"].isin(list(splits)).to_numpy() & keys.isin(set(seen["recording_key"])).to_numpy()
    hit = records.loc[mask]
    examples = [f"{s}/{r}" for s, r in zip(hit["source"], hit["record"], strict=True)][:5]
    by_split = hit["split"].value_counts().to_dict()
    return {"known": True, "n_overlap": int(mask.sum()), "by_split": {k: int(v) for k, v in by_split.items()},
            "examples": examples}  # fmt: skip
