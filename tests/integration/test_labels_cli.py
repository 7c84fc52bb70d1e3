"""``ecgssl labels`` end to end on a small store: PTB-XL records of the shared mirror (their real statements,
folds and patients; the heart axis read from the mirror's ptbxl_database.csv through the store's base_url), Challenge
copies of two of them, and Challenge SNOMED records. The table's rows and label columns equal what fine-tuning
uses (``prepare_task``); expected failures print one line with the fixing command."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data.labels import merged_scored_codes
from ecgmodel.data.ptbxl import SUPERCLASSES
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.downstream.config import FinetuneConfig
from ecgmodel.downstream.dataset import prepare_task
from ecgmodel.downstream.labels_table import KEY_COLUMNS, read_labels_table
from flows.cli import main

T = 500  # 1 s windows: the signal plays no part in the labels


def _batch(record, source, database, dx, patient_id="", fold=-1, seed=0):
    sig = np.random.default_rng(seed).normal(0, 50, (1, 12, T)).astype(np.int16)
    return WindowBatch.for_record(sig, np.ones(12, bool), np.zeros(1, np.int64), np.full(1, T), np.zeros(1, np.uint8),
                                  record=record, source=source, database=database, dx=dx, patient_id=patient_id,
                                  fold=fold)  # fmt: skip


def small_store(path, ptbxl_root, base_url=None) -> str:
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv", keep_default_na=False)
    # 30 records of folds 1-8 (with an ALAD and an ARAD axis among them), 6 of fold 9, 6 of fold 10
    alad = db[(db["heart_axis"] == "ALAD") & (db["strat_fold"] <= 8)].head(2)
    arad = db[(db["heart_axis"] == "ARAD") & (db["strat_fold"] <= 8)].head(1)
    rest = db[db["strat_fold"] <= 8].drop(alad.index.union(arad.index)).head(27)
    pick = pd.concat([alad, arad, rest, db[db["strat_fold"] == 9].head(6), db[db["strat_fold"] == 10].head(6)])
    batches = [_batch(f"{r.ecg_id:05d}_hr", "ptb-xl", "ptb-xl", list(ast.literal_eval(r.scp_codes)),
                      f"{float(r.patient_id):.0f}", int(r.strat_fold), i) for i, r in enumerate(pick.itertuples())]
    first, second = pick.iloc[3].ecg_id, pick.iloc[4].ecg_id
    batches += [_batch(f"HR{first:05d}", "challenge-2020", "ptb-xl", []),  # copy with its #Dx stripped
                _batch(f"HR{second:05d}", "challenge-2021", "ptb-xl", ["426783006"])]  # labelled copy
    codes = ["164889003", "426783006", "713427006", "59118001", "164934002", "270492004"]
    batches += [_batch(f"E{i:05d}", "challenge-2021", "georgia", [codes[i % 6], codes[(i + 2) % 6]], seed=100 + i)
                for i in range(12)]  # fmt: skip
    url = str(ptbxl_root) if base_url is None else base_url
    with StoreWriter(path, fs=500, window_samples=T, chunk_windows=16, durable=False) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"ptb-xl": {"version": "1.0.3", "base_url": url},
                          "challenge-2020": {"version": "1.0.2"}, "challenge-2021": {"version": "1.0.3"}},
                 dx_systems={"ptb-xl": "ptbxl-scp", "challenge-2020": "snomed-ct", "challenge-2021": "snomed-ct"})
    return str(path)


@pytest.fixture
def ptbxl_root(physionet_mirror):
    return physionet_mirror / "ptb-xl" / "1.0.3"


def test_labels_cli_matches_fine_tuning(tmp_path, ptbxl_root, capsys):
    store = small_store(tmp_path / "store.zarr", ptbxl_root)
    out = tmp_path / "arr.parquet"
    assert main(["labels", "--task", "arrhythmia27", "--store", store, "--out", str(out)]) == 0
    assert '"records": 54' in capsys.readouterr().out  # 42 PTB-XL + 12 Georgia; the 2 copies are PTB-XL rows
    table, classes = read_labels_table(out)
    codes = merged_scored_codes()
    assert list(table.columns) == KEY_COLUMNS + codes and table["key"].is_unique
    assert classes["code"].tolist() == codes and "LAD" in classes["abbreviation"].tolist()
    import pyarrow.parquet as pq

    meta = pq.read_schema(out).metadata
    assert meta[b"ecgssl.task"] == b"arrhythmia27" and b"39732003" in meta[b"ecgssl.classes"]
    # copies once: PTB-XL's own record, not the Challenge copies; keys as `ecgssl embed` / predictions write them
    assert not table["record"].str.startswith("HR").any()
    assert (table["key"] == table["source"] + "/" + table["record"]).all()
    # the heart axis came through: ALAD and ARAD records carry LAD / RAD
    assert table.loc[table.index[:2], "39732003"].eq(1).all() and table.loc[table.index[2], "47665007"] == 1

    data = prepare_task(FinetuneConfig(task="arrhythmia27", store=store))
    want = data.records.assign(key=data.records["source"] + "/" + data.records["record"]).set_index("key")
    got = table.set_index("key").loc[want.index]
    np.testing.assert_array_equal(got[codes].to_numpy(), data.y.astype(np.int8))
    assert (got["split"] == want["split"]).all() and set(table["split"]) == {"train", "val", "test"}
    assert data.info["ptbxl_heart_axis"].endswith("ptbxl_database.csv")

    # ptbxl-superclass as CSV: NORM/MI/STTC/CD/HYP of the PTB-XL records with a diagnostic statement
    csv = tmp_path / "sup.csv"
    assert main(["labels", "--task", "ptbxl-superclass", "--store", store, "--out", str(csv)]) == 0
    sup, _ = read_labels_table(csv)
    assert list(sup.columns) == KEY_COLUMNS + list(SUPERCLASSES) and (sup["source"] == "ptb-xl").all()
    data = prepare_task(FinetuneConfig(task="ptbxl-superclass", store=store))
    keys = (data.records["source"] + "/" + data.records["record"]).tolist()
    np.testing.assert_array_equal(sup.set_index("key").loc[keys, list(SUPERCLASSES)].to_numpy(), data.y)


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_labels_cli_expected_failures(tmp_path, ptbxl_root, capsys):
    out = str(tmp_path / "x.parquet")
    _one_line_error(capsys, ["labels", "--task", "arrhythmia27", "--store", str(tmp_path / "none"), "--out", out],
                    "does not exist", "ecgssl ingest")  # fmt: skip
    store = small_store(tmp_path / "store.zarr", ptbxl_root, base_url=str(tmp_path / "gone"))
    _one_line_error(capsys, ["labels", "--task", "arrhythmia28", "--store", store, "--out", out],
                    "unknown task 'arrhythmia28'", "ecgssl labels --task arrhythmia27")  # fmt: skip
    _one_line_error(capsys, ["labels", "--task", "arrhythmia27", "--store", store, "--out", out],
                    "heart_axis", "--set split.ptbxl_metadata=")  # fmt: skip
    _one_line_error(capsys, ["labels", "--task", "arrhythmia27", "--store", store, "--out", str(tmp_path / "x.txt")],
                    "unknown format", "--out")  # fmt: skip
    # the store's ingest location is gone: PTB-XL's metadata given instead
    meta = str(ptbxl_root / "ptbxl_database.csv")
    assert main(["labels", "--task", "arrhythmia27", "--store", store, "--out", out,
                 "--set", f"split.ptbxl_metadata={meta}"]) == 0  # fmt: skip
