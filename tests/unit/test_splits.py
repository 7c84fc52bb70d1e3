"""Patient-aware stratified splits and nested stratified label-fraction subsets."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data.labels import MI_LOCATIONS
from ecgmodel.data.splits import assign_splits, group_keys, nested_fractions, save_split_artifacts

FRACTIONS = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]


def synthetic_multilabel(n: int = 600, k: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.03, 0.4, k)
    return rng.random((n, k)) < prevalence


def test_fraction_subsets_are_nested_exact_and_seeded():
    y = synthetic_multilabel()
    subsets = nested_fractions(y, FRACTIONS, seed=1)
    assert list(subsets) == sorted(FRACTIONS)
    for f, idx in subsets.items():
        assert len(idx) == round(f * len(y))
        assert len(np.unique(idx)) == len(idx)
    ordered = [set(subsets[f].tolist()) for f in sorted(FRACTIONS)]
    for small, large in zip(ordered, ordered[1:], strict=False):
        assert small <= large
    again = nested_fractions(y, FRACTIONS, seed=1)
    other = nested_fractions(y, FRACTIONS, seed=2)
    assert all(np.array_equal(subsets[f], again[f]) for f in FRACTIONS)
    assert not np.array_equal(subsets[0.2], other[0.2])


def test_fraction_subsets_are_stratified():
    y = synthetic_multilabel(n=2000, k=6, seed=4)
    full = y.mean(axis=0)
    strat_err, rand_err = [], []
    for seed in range(5):
        idx = nested_fractions(y, [0.1, 1.0], seed=seed)[0.1]
        strat_err.append(np.abs(y[idx].mean(axis=0) - full).max())
        rand = np.random.default_rng(seed).choice(len(y), len(idx), replace=False)
        rand_err.append(np.abs(y[rand].mean(axis=0) - full).max())
    # iterative stratification matches the class prevalences far better than a random draw of the same size
    assert np.mean(strat_err) < 0.5 * np.mean(rand_err)
    assert max(strat_err) < 0.01


def test_bad_fraction_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        nested_fractions(np.zeros((10, 2), bool), [0.0, 1.0])


def test_ptbxl_patient_splits_follow_folds_and_never_share_a_patient(shared):
    db = pd.read_csv(shared / "physionet" / "ptb-xl" / "1.0.3" / "ptbxl_database.csv")
    records = pd.DataFrame(
        {
            "source": "ptb-xl",
            "record": db["ecg_id"].map(lambda i: f"{i:05d}_hr"),
            "patient_id": db["patient_id"].map(lambda p: str(int(p))),
            "fold": db["strat_fold"].astype(int),
        }
    )
    codes = [set(ast.literal_eval(s)) for s in db["scp_codes"]]
    y = np.array([[bool(c & set(keys)) for keys in MI_LOCATIONS.values()] for c in codes])
    split = assign_splits(records, y, seed=0)
    assert (split[records["fold"] <= 8] == "train").all()
    assert (split[records["fold"] == 9] == "val").all()
    assert (split[records["fold"] == 10] == "test").all()
    per_patient = pd.DataFrame({"g": group_keys(records), "s": split}).groupby("g")["s"].nunique()
    assert (per_patient == 1).all()


def test_record_level_stratified_split_without_folds_keeps_patients_together(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    patients = rng.integers(0, 150, n)  # several records per patient
    records = pd.DataFrame(
        {
            "source": "challenge-2020",
            "record": [f"R{i:04d}" for i in range(n)],
            "patient_id": [f"P{p}" for p in patients],
            "fold": -1,
        }
    )
    y = synthetic_multilabel(n=n, k=5, seed=3)
    split = assign_splits(records, y, seed=7, val_fraction=0.15, test_fraction=0.15)
    assert set(split) == {"train", "val", "test"}
    assert (pd.DataFrame({"p": patients, "s": split}).groupby("p")["s"].nunique() == 1).all()
    assert split.eq("test").sum() / n == pytest.approx(0.15, abs=0.05)
    assert split.equals(assign_splits(records, y, seed=7, val_fraction=0.15, test_fraction=0.15))
    # no patient ids: one record per group
    records["patient_id"] = ""
    split = assign_splits(records, y, seed=7)
    assert group_keys(records).nunique() == n
    subsets = nested_fractions(y[(split == "train").to_numpy()], [0.5, 1.0], seed=0)
    paths = save_split_artifacts(tmp_path, records, split, subsets)
    table = pd.read_csv(paths[1])
    assert table["fraction_0.5"].sum() == len(subsets[0.5])
    assert (pd.read_csv(paths[0])["split"] == split.to_numpy()).all()


def test_too_few_groups_is_a_clear_error():
    records = pd.DataFrame({"source": "x", "record": ["a", "b"], "patient_id": "", "fold": -1})
    with pytest.raises(ValueError, match="too few"):
        assign_splits(records, np.eye(2, dtype=bool))


def test_copies_of_one_recording_from_two_sources_share_a_group_and_a_split():
    """Challenge 2021 repackages Challenge 2020 databases under the same names, and the Challenge's PTB-XL
    HRnnnnn is PTB-XL's nnnnn_hr: copies (and the patient they belong to) must never straddle splits."""
    records = pd.DataFrame(
        {
            "source": ["challenge-2020", "challenge-2021", "challenge-2020", "ptb-xl", "ptb-xl", "challenge-2020"],
            "database": ["georgia", "georgia", "ptb-xl", "ptb-xl", "ptb-xl", "cpsc_2018"],
            "record": ["E00009", "E00009", "HR00001", "00001_hr", "00002_hr", "A0001"],
            "patient_id": ["", "", "", "15709", "15709", ""],
            "fold": -1,
        }
    )
    g = group_keys(records)
    assert g[0] == g[1]  # same Georgia recording from two sources
    assert g[2] == g[3] == g[4]  # HR00001 = 00001_hr, whose patient also has 00002_hr
    assert len({g[0], g[2], g[5]}) == 3
    blocks = []
    for i in range(30):  # 30 blocks of: one Georgia recording twice, one PTB-XL patient (3 rows), one CPSC record
        block = records.copy()
        block["record"] = [f"E{i:05d}", f"E{i:05d}", f"HR{10 * i + 1:05d}", f"{10 * i + 1:05d}_hr",
                           f"{10 * i + 2:05d}_hr", f"A{i:04d}"]
        block["patient_id"] = ["", "", "", str(i), str(i), ""]
        blocks.append(block)
    many = pd.concat(blocks, ignore_index=True)
    y = np.random.default_rng(0).random((len(many), 4)) > 0.5
    split = assign_splits(many, y, seed=1, val_fraction=0.2, test_fraction=0.2)
    per_group = pd.DataFrame({"g": group_keys(many), "s": split}).groupby("g")["s"].nunique()
    assert (per_group == 1).all()
    assert group_keys(many).nunique() == 30 * 3  # georgia copy pair, ptb-xl patient, cpsc record per block
