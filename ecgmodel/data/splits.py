"""Patient-aware, stratified train/val/test splits and nested label-fraction subsets.

* Records of one patient always land in the same split. Where the data gives folds (PTB-XL ``strat_fold``,
  itself patient-aware and stratified), folds decide: 1-8 train, 9 val, 10 test by default. Other records are
  grouped by ``patient_id`` (or by record when the database has no patient ids: Zheng 2020 has one record per
  patient) and the groups are split with iterative stratification (``iterstrat``, Sechidis et al. 2011) on the
  union of their labels.
* Label-fraction subsets are NESTED (5% within 10% within 20% ... within 100% of the training records),
  stratified and seeded: each smaller subset is drawn, stratified, from the next larger one. They are saved as
  artifacts (record ids per fraction) with every ablation so a result can be reproduced or compared.

Single-label tasks pass a one-hot matrix; multi-label tasks a multi-hot one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import IterativeStratification

SPLITS = ("train", "val", "test")


def _as_multilabel(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=bool)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[1] < 2:  # iterstrat needs a multilabel-indicator with >= 2 columns
        y = np.hstack([y, np.zeros((len(y), 1), dtype=bool)])
    return y


def stratified_pick(y: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_pick`` rows of ``y`` chosen by iterative stratification, exactly ``n_pick`` of them.

    Iterative stratification only approximates the requested size; the few rows it is off by are moved at
    random (seeded) so that subset sizes are exact and reproducible.
    """
    n = len(y)
    if not 0 <= n_pick <= n:
        raise ValueError(f"cannot pick {n_pick} of {n} rows")
    if n_pick in (0, n):
        return np.arange(n_pick)
    y = _as_multilabel(y)
    order = rng.permutation(n)
    r = np.array([n_pick / n, 1 - n_pick / n])
    folds = IterativeStratification(labels=y[order], r=r, random_state=np.random.RandomState(rng.integers(2**31)))
    picked = order[folds == 0]
    rest = order[folds != 0]
    if len(picked) > n_pick:
        picked = rng.choice(picked, n_pick, replace=False)
    elif len(picked) < n_pick:
        picked = np.concatenate([picked, rng.choice(rest, n_pick - len(picked), replace=False)])
    return np.sort(picked)


def draw_val_test(
    group_labels: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` for each patient group without a fixed fold: stratified on the groups'
    labels, test drawn first, then val from the rest; at least one group each when its fraction is positive."""
    n_free = len(group_labels)
    n_test = max(int(round(test_fraction * n_free)), 1 if test_fraction > 0 else 0)
    n_val = max(int(round(val_fraction * n_free)), 1 if val_fraction > 0 else 0)
    if n_test + n_val >= n_free:
        raise ValueError(
            f"only {n_free} patient groups without folds: too few for val {val_fraction} / test {test_fraction} "
            "(rule: at least one group each and one left for training)"
        )
    out = np.full(n_free, "train", dtype=object)
    test_idx = stratified_pick(group_labels, n_test, rng)
    out[test_idx] = "test"
    rest = np.setdiff1d(np.arange(n_free), test_idx)
    val_idx = stratified_pick(group_labels[rest], n_val, rng)
    out[rest[val_idx]] = "val"
    return out


def recording_keys(records: pd.DataFrame) -> pd.Series:
    """Identity of the underlying recording, the same across sources that repackage one database.

    Challenge 2020 and 2021 both ship e.g. Georgia ``E00009`` and CPSC ``A0001`` under the same names, and the
    Challenge's PTB-XL ``HR00001`` is PTB-XL's own ``00001_hr``: keyed by sub-database and record, so copies of
    one recording from different sources fall into the same group. Without a ``database`` column the source
    stands in for it."""
    db = records["database"] if "database" in records.columns else records["source"]
    db = db.astype(str).str.strip().str.lower()
    rec = records["record"].astype(str).str.strip()
    hr = rec.str.fullmatch(r"HR\d{5}") & (db == "ptb-xl")
    rec = rec.where(~hr, rec.str[2:] + "_hr")
    return "rec:" + db + ":" + rec


def group_keys(records: pd.DataFrame) -> pd.Series:
    """The patient a record belongs to, so that no patient (and no copy of a recording) spans two splits.

    A record's group is its patient (``pid:<database>:<patient_id>``) when any copy of its recording carries a
    patient id (PTB-XL's ``patient_id``), else the recording itself (one record = one patient)."""
    rec_key = recording_keys(records)
    pid = records["patient_id"].astype(str).str.strip()
    db = (records["database"] if "database" in records.columns else records["source"]).astype(str).str.lower()
    patient = ("pid:" + db + ":" + pid).where(pid != "", "")
    known = patient[patient != ""].groupby(rec_key[patient != ""]).first()  # recording -> its patient
    linked = rec_key.map(known)
    return linked.where(linked.notna(), rec_key).astype(str)


def assign_splits(
    records: pd.DataFrame,
    y: np.ndarray,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_folds: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
    val_folds: Sequence[int] = (9,),
    test_folds: Sequence[int] = (10,),
) -> pd.Series:
    """``"train"``/``"val"``/``"test"`` for every row of ``records`` (one row per record: source, record,
    patient_id, fold), never splitting a patient. ``y`` (n_records, n_classes) drives the stratification."""
    for col in ("source", "record", "patient_id", "fold"):
        if col not in records.columns:
            raise KeyError(f"records table lacks column {col!r} (need source, record, patient_id, fold)")
    if len(records) != len(y):
        raise ValueError(f"{len(records)} records but {len(y)} label rows")
    y = _as_multilabel(y)
    out = pd.Series("", index=records.index, dtype=object)
    groups = group_keys(records).to_numpy()
    folds = records["fold"].to_numpy().astype(int)
    fold_map = {**{f: "train" for f in train_folds}, **{f: "val" for f in val_folds}, **{f: "test" for f in test_folds}}

    # 1) groups with a known fold (PTB-XL): a patient's fold decides for all its records
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_fold = np.full(len(uniq), -1)
    for g, f in zip(inverse, folds, strict=True):
        if f >= 1 and group_fold[g] < 1:
            group_fold[g] = f
    group_split = np.array([fold_map.get(int(f), "") if f >= 1 else "" for f in group_fold], dtype=object)

    # 2) the other groups: iterative stratification on the union of their records' labels
    free = np.flatnonzero(group_split == "")
    if len(free):
        gy = np.zeros((len(uniq), y.shape[1]), dtype=bool)
        np.logical_or.at(gy, inverse, y)
        group_split[free] = draw_val_test(gy[free], val_fraction, test_fraction, np.random.default_rng(seed))
    out[:] = group_split[inverse]
    unassigned = out == ""
    if unassigned.any():  # a fold outside train/val/test folds: keep it out of every split
        out[unassigned] = "unused"
    return out


def nested_fractions(
    y: np.ndarray, fractions: Sequence[float], seed: int = 0, min_size: int = 1
) -> dict[float, np.ndarray]:
    """Nested stratified subsets of the rows of ``y`` (the training records), one per fraction.

    Returns ``{fraction: sorted row indices}`` with ``round(fraction * n)`` rows (at least ``min_size``), where
    the subset of every smaller fraction is contained in the subset of every larger one.
    """
    y = np.asarray(y)
    n = len(y)
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"label fraction {f} outside (0, 1]")
    rng = np.random.default_rng(seed)
    current = np.arange(n)
    out: dict[float, np.ndarray] = {}
    for f in sorted(set(float(x) for x in fractions), reverse=True):
        target = min(len(current), max(min_size, int(round(f * n))))
        if target < len(current):
            current = current[stratified_pick(y[current], target, rng)]
        out[f] = np.sort(current)
    return {f: out[f] for f in sorted(out)}


def subsets_table(records: pd.DataFrame, subsets: dict[float, np.ndarray]) -> pd.DataFrame:
    """One row per training record (source, record) with a bool column ``fraction_<f>`` per subset."""
    table = records[["source", "record"]].reset_index(drop=True).copy()
    for f, idx in subsets.items():
        col = np.zeros(len(table), dtype=bool)
        col[idx] = True
        table[f"fraction_{f:g}"] = col
    return table


def save_split_artifacts(
    directory: str | Path, records: pd.DataFrame, split: pd.Series, subsets: dict[float, np.ndarray] | None = None
) -> list[Path]:
    """Write ``splits.csv`` (source, record, patient_id, split) and ``label_subsets.csv``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "splits.csv"]
    table = records[["source", "record", "patient_id"]].copy()
    table["split"] = split.to_numpy()
    table.to_csv(paths[0], index=False)
    if subsets is not None:
        train = records[split.to_numpy() == "train"]
        paths.append(directory / "label_subsets.csv")
        subsets_table(train, subsets).to_csv(paths[1], index=False)
    return paths
