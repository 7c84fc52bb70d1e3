"""Zheng 2020 VA-origin adapter and the private site-label adapter on small GENERATED files in the real formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data.labels import localization_label
from ecgmodel.data.signal import QC_CLIP, QC_IMPLAUSIBLE
from ecgmodel.data.site_labels import SiteLabelsConfig, ingest_site_labels
from ecgmodel.data.store import StoreError, open_store
from ecgmodel.data.zheng import (
    DEFAULT_UV_PER_COUNT,
    ZHENG_LEADS,
    ZhengConfig,
    ingest_zheng,
    read_patient_csv,
)

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
    sig, names = read_patient_csv(path, uv_per_count=1.0)
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


# ------------------------------------------------------------------------------ facts of the real release
COUNTS_PER_MV = 16384  # published estimate (+-20 %) for the real files


def release_like(root, n: int = 6, seed: int = 0):
    """Generated files with the measured properties of the real release: ~16,384 counts/mV (QRS of ~1-2 mV,
    one sample at 9.45 mV), lengths 2.9-59.3 s, blank and "NA" sub-sites, mostly PVC, a denoised folder that is
    shifted against the raw one."""
    rng = np.random.default_rng(seed)
    data, denoised = root / "PVCVTRawECGData", root / "PVCVTECGDenoisedData"
    data.mkdir(parents=True)
    denoised.mkdir()
    rows = []
    lengths = np.linspace(2.9, 59.3, n)
    for i in range(n):
        t = np.arange(int(lengths[i] * FS_IN)) / FS_IN
        beat = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01**2))  # a QRS-like spike every 0.8 s
        amp_mv = 2.0 + 0.8 * rng.random(12)  # the QRS of the tallest leads of a VA beat: 2-2.8 mV
        counts = np.rint(COUNTS_PER_MV * amp_mv[:, None] * beat[None] + rng.normal(0, 30, (12, len(t))))
        if i == 0:
            bump = 9.45 * COUNTS_PER_MV * np.exp(-((t - t[len(t) // 2]) ** 2) / (2 * 0.008**2))
            lead = ZHENG_LEADS.index("II")  # the largest peak of the release: 9.45 mV
            counts[lead] = np.rint(np.maximum(counts[lead], bump))
        pd.DataFrame(counts.T.astype(int), columns=list(ZHENG_LEADS)).to_csv(data / f"{i}.csv", index=False)
        pd.DataFrame(np.roll(counts, 37, axis=1).T.astype(int)).to_csv(denoised / f"{i}.csv", index=False,
                                                                      header=False)  # not sample-aligned
        site = ["RVOT-septum", "LCC", None, "NA", " "][i % 5]  # blank cells, "NA", whitespace
        if i == n - 1:
            site = None
        rows.append({"HospitalID": str(i), "Type": "VT" if i == 3 else "PVC", "LeftRight": "Right" if i % 2 else
                     "Left", "Sublocation": site, "Gender": "MF"[i % 2]})  # fmt: skip
    pd.DataFrame(rows).to_excel(root / "Diagnosis.xlsx", index=False, engine="openpyxl")
    return root, lengths


def test_release_like_files_keep_amplitudes_lengths_and_unknown_sites(tmp_path):
    from ecgmodel.data.labels import localization_label

    root, lengths = release_like(tmp_path / "zheng")
    res = ingest_zheng(ZhengConfig(root=str(root), max_windows=None), tmp_path / "store")
    assert res["written"] == len(lengths) and not res["quarantined"]
    store = open_store(tmp_path / "store")
    meta = store.meta()
    # lengths 2.9-59.3 s: a short record is one padded window, the longest gives 5 full ones
    per_record = meta.groupby("record").size()
    assert per_record["0"] == 1 and meta.loc[meta.record == "0", "valid_length"].iloc[0] == round(2.9 * 500)
    assert per_record[str(len(lengths) - 1)] == int(59.3 // 10)
    # ~16,384 counts per mV: the QRS is ~2-3 mV and the 9.45 mV sample fits int16 microvolts: nothing saturates
    assert not (meta.qc & QC_IMPLAUSIBLE).any()
    x = store.load_signal()
    ii = list(store.leads).index("II")
    assert 1700 < np.median(x[:, ii].max(axis=1)) < 3000
    assert 9000 < x.max() < 32767 and x.min() > -32768
    # blank / NA sub-sites are unknown: no site key, no class of their own
    sites = {r: localization_label(d, "va-origin", "va_site") for r, d in zip(meta.record, meta.dx, strict=True)}
    assert {sites[str(i)] for i in range(len(lengths)) if i % 5 >= 2 or i == len(lengths) - 1} == {None}
    assert {s for s in sites.values() if s} == {"RVOT-septum", "LCC"}
    assert "site=" not in meta.loc[meta.record == "2", "dx"].iloc[0]
    assert meta.loc[meta.record == "3", "dx"].iloc[0].endswith("type=VT")  # as the file says
    info = store.attrs["sources"]["zheng-2020"]
    assert info["uv_per_count_assumed"] == DEFAULT_UV_PER_COUNT and "16,384" in info["uv_per_count_provenance"]
    assert (meta.raw_sha256.str.len() == 64).all() and meta.record_path.str.startswith("PVCVTRawECGData/").all()
    # another scale for the same source would mix units in one store: refused
    with pytest.raises(StoreError, match="uv_per_count"):
        ingest_zheng(ZhengConfig(root=str(root), max_windows=None, uv_per_count=1.0), tmp_path / "store")


def test_one_microvolt_per_count_would_saturate_every_qrs(tmp_path):
    """Why the default changed: read as 1 uV per count, the real amplitudes clip int16 in every record."""
    root, lengths = release_like(tmp_path / "zheng", n=4)
    ingest_zheng(ZhengConfig(root=str(root), uv_per_count=1.0), tmp_path / "store")
    meta = open_store(tmp_path / "store").meta()
    assert (meta.qc & QC_CLIP).astype(bool).all() and (meta.qc & QC_IMPLAUSIBLE).astype(bool).all()
    assert (np.abs(open_store(tmp_path / "store").load_signal()).max(axis=(1, 2)) >= 32767).all()


def test_site_labels_two_files_with_one_name_are_not_both_stored(tmp_path):
    import wfdb

    root = tmp_path / "private"
    fs = 500
    t = np.arange(fs * 10) / fs
    for folder, amp in (("a", 0.5), ("b", 1.0)):
        (root / folder).mkdir(parents=True)
        sig = np.stack([np.sin(2 * np.pi * t) * amp for _ in range(12)], axis=1)
        wfdb.wrsamp("ecg", fs=fs, units=["mV"] * 12, sig_name=CANONICAL, p_signal=sig, fmt=["16"] * 12,
                    write_dir=str(root / folder))
    pd.DataFrame({"record": ["a/ecg", "b/ecg"], "site": ["LVOT", "RVOT"]}).to_csv(root / "labels.csv", index=False)
    res = ingest_site_labels(SiteLabelsConfig(root=str(root)), tmp_path / "store")
    assert res["written"] == 1
    assert [q["record"] for q in res["quarantined"]] == ["b/ecg"]
    assert "also used by a/ecg" in res["quarantined"][0]["reason"]
    meta = open_store(tmp_path / "store").meta()
    assert meta.record_path.tolist() == ["a/ecg"] and meta.dx.tolist() == ["site=LVOT"]
    assert not meta.duplicated(["source", "record", "window_start"]).any()
