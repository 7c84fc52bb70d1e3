"""Zheng 2020 VA-origin adapter and the private site-label adapter on small GENERATED files in the real formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data.labels import localization_label
from ecgmodel.data.site_labels import SiteLabelsConfig, ingest_site_labels
from ecgmodel.data.store import open_store
from ecgmodel.data.zheng import ZHENG_LEADS, ZhengConfig, ingest_zheng, read_patient_csv

CANONICAL = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FS_IN = 2000


def lead_signal(n: int, seconds: float = 12.0) -> np.ndarray:
    """(12, T) integer counts; lead named ZHENG_LEADS[k] is a 2 Hz sine of amplitude 100*(k+1) counts."""
    t = np.arange(int(seconds * FS_IN)) / FS_IN
    amp = 100 * (np.arange(12) + 1)[:, None]
    return np.rint(amp * np.sin(2 * np.pi * 2 * t)[None] + n).astype(int)


def make_zheng(root, patients: dict[str, tuple[str, str, str]], header=False):
    """Diagnosis.xlsx (HospitalID, Type, LeftRight, Sublocation, Gender) + PVCVTRawECGData/<id>.csv."""
    data = root / "PVCVTRawECGData"
    data.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (hid, (typ, side, site)) in enumerate(patients.items()):
        rows.append({"HospitalID": hid, "Type": typ, "LeftRight": side, "Sublocation": site,
                     "Gender": "M" if i % 2 else "F"})
        frame = pd.DataFrame(lead_signal(i).T, columns=list(ZHENG_LEADS))
        frame.to_csv(data / f"{hid}.csv", index=False, header=header)
    pd.DataFrame(rows).to_excel(root / "Diagnosis.xlsx", index=False, engine="openpyxl")
    return root


PATIENTS = {f"{100 + i}": ("PVC" if i % 3 else "VT", "Left" if i < 5 else "Right", site)
            for i, site in enumerate(["LCC", "LCC", "LCC", "RCC", "AMC", "RVOT-septum", "RVOT-septum",
                                      "RVOT-septum", "RVOT-free wall", "RVOT-septum"])}


def test_zheng_ingest_maps_leads_by_name_scale_and_labels(tmp_path):
    root = make_zheng(tmp_path / "zheng", PATIENTS)
    res = ingest_zheng(ZhengConfig(root=str(root), uv_per_count=2.0), tmp_path / "store")
    assert res["written"] == 10 and not res["quarantined"]
    store = open_store(tmp_path / "store")
    meta = store.meta()
    assert store.fs == 500 and store.window_samples == 5000
    assert meta.groupby("record").size().eq(1).all()  # 12 s -> one full 10 s window each
    assert set(meta["patient_id"]) == set(PATIENTS) and (meta["record"] == meta["patient_id"]).all()
    assert (meta["sex"] == "").all()  # Gender is never stored
    assert store.attrs["dx_systems"]["zheng-2020"] == "va-origin"
    assert store.attrs["sources"]["zheng-2020"]["uv_per_count_assumed"] == 2.0
    row = meta.index[meta["record"] == "103"][0]
    assert meta.loc[row, "dx"] == "side=Left,site=RCC,type=VT"  # patient 3: 3 % 3 == 0 -> VT
    assert localization_label(meta.loc[row, "dx"], "va-origin", "va_site") == "RCC"
    assert localization_label(meta.loc[row, "dx"], "va-origin", "va_side") == "Left"
    # canonical order by NAME: canonical lead L holds amplitude 100*(alphabetical index + 1) counts * 2 uV/count
    sig = store.load_signal([row]).astype(float)[0]
    for i, lead in enumerate(CANONICAL):
        expected = 2.0 * 100 * (ZHENG_LEADS.index(lead) + 1)
        assert np.ptp(sig[i, 500:4500]) / 2 == pytest.approx(expected, rel=0.03), lead


def test_header_row_is_used_to_match_leads(tmp_path):
    root = make_zheng(tmp_path / "z", {"7": ("VT", "Right", "RVOT")}, header=True)
    path = root / "PVCVTRawECGData" / "7.csv"
    frame = pd.read_csv(path)
    frame[list(reversed(frame.columns))].to_csv(path, index=False)  # columns permuted, names kept
    sig, names = read_patient_csv(path)
    assert names == list(reversed(ZHENG_LEADS))
    assert np.ptp(sig[names.index("V6")]) / 2 == pytest.approx(1.2, rel=0.01)  # 1200 counts -> 1.2 mV


def test_bad_files_are_quarantined_with_reasons_and_reruns_skip(tmp_path):
    root = make_zheng(tmp_path / "zheng", PATIENTS)
    data = root / "PVCVTRawECGData"
    pd.read_csv(data / "100.csv", header=None).iloc[:, :11].to_csv(data / "100.csv", index=False, header=False)
    text = (data / "101.csv").read_text().splitlines()
    text[5] = "x," + text[5].split(",", 1)[1]
    (data / "101.csv").write_text("\n".join(text))
    (data / "102.csv").unlink()
    (data / "999.csv").write_text((data / "103.csv").read_text())  # no label row
    store_path = tmp_path / "store"
    res = ingest_zheng(ZhengConfig(root=str(root)), store_path)
    reasons = {q["record"]: q["reason"] for q in res["quarantined"]}
    assert res["written"] == 7
    assert "column rule" in reasons["100"] and "100.csv" in reasons["100"]
    assert "value rule" in reasons["101"] and "row 6" in reasons["101"]
    assert "file rule" in reasons["102"]
    assert "label rule" in reasons["999"]
    store = open_store(store_path)
    assert {q["record"] for q in store.quarantine()} == {"100", "101", "102", "999"}
    before = store.hash
    again = ingest_zheng(ZhengConfig(root=str(root)), store_path)
    assert again["written"] == 0 and again["skipped"] == 7
    assert open_store(store_path).n == store.n
    assert open_store(store_path).hash == before


def test_missing_diagnosis_columns_is_a_clear_error(tmp_path):
    root = make_zheng(tmp_path / "zheng", {"1": ("VT", "Left", "LCC")})
    pd.DataFrame({"HospitalID": ["1"], "Type": ["VT"]}).to_excel(root / "Diagnosis.xlsx", index=False)
    with pytest.raises(ValueError, match="LeftRight"):
        ingest_zheng(ZhengConfig(root=str(root)), tmp_path / "store")


def test_site_label_adapter_reads_wfdb_and_labels(tmp_path):
    import wfdb

    root = tmp_path / "private"
    root.mkdir()
    fs = 1000
    t = np.arange(fs * 11) / fs
    for i in range(3):
        sig = np.stack([np.sin(2 * np.pi * t) * (k + 1) * 0.1 for k in range(12)], axis=1)
        wfdb.wrsamp(f"rec{i}", fs=fs, units=["mV"] * 12, sig_name=CANONICAL[::-1], p_signal=sig,
                    fmt=["16"] * 12, write_dir=str(root))
    pd.DataFrame({"record": ["rec0", "rec1", "rec2", "rec9"], "site": ["LVOT", "RVOT", "", "LVOT"]}).to_csv(
        root / "labels.csv", index=False)
    res = ingest_site_labels(SiteLabelsConfig(root=str(root)), tmp_path / "store")
    reasons = {q["record"]: q["reason"] for q in res["quarantined"]}
    assert res["written"] == 2 and "label rule" in reasons["rec2"] and "file rule" in reasons["rec9"]
    store = open_store(tmp_path / "store")
    meta = store.meta()
    assert sorted(meta["dx"]) == ["site=LVOT", "site=RVOT"]
    assert store.attrs["dx_systems"]["site-private"] == "site-label"
    sig = store.load_signal([0]).astype(float)[0]
    # written in reversed lead order: canonical V6 (last) carried amplitude 0.1 mV = 100 uV, lead I 1.2 mV
    assert np.ptp(sig[-1, 500:4500]) / 2 == pytest.approx(100, rel=0.03)
    assert np.ptp(sig[0, 500:4500]) / 2 == pytest.approx(1200, rel=0.03)


def test_zheng_store_gives_localization_targets_with_rare_sites_merged(tmp_path):
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.downstream.dataset import prepare_task

    root = make_zheng(tmp_path / "zheng", PATIENTS)
    ingest_zheng(ZhengConfig(root=str(root)), tmp_path / "store")
    cfg = FinetuneConfig(task="localization", store=str(tmp_path / "store"), min_class_records=3,
                         split={"val_fraction": 0.2, "test_fraction": 0.2})
    data = prepare_task(cfg)
    assert data.target == "va_site"
    assert data.classes == ["LCC", "RVOT-septum", "other"]  # RCC, AMC, RVOT-free wall: < 3 patients each
    assert "AMC, RCC, RVOT-free wall" in data.definitions["equivalence_group"].iloc[-1]
    assert data.y.sum(axis=1).tolist() == [1] * 10
    assert data.records["split"].value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}
    assert data.train.signal.shape[1:] == (12, 5000) and data.train.n_records == 6
    side = prepare_task(cfg.model_copy(update={"localization_target": "va_side"}))
    assert side.classes == ["Left", "Right"]
