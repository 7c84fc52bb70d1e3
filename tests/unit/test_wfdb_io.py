"""Reading real records with every quirk of the PhysioNet files (ecgmodel.data.wfdb_io)."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import wfdb
from wfdb.io.header import HeaderSyntaxError

from ecgmodel.data.signal import canonicalize_leads, harmonise
from ecgmodel.data.wfdb_io import MetadataTable, parse_header, read_header, read_record

DATA = Path(__file__).resolve().parents[1] / "data" / "physionet"
C20 = DATA / "challenge-2020" / "1.0.2"
C21 = DATA / "challenge-2021" / "1.0.3"
PTBXL = DATA / "ptb-xl" / "1.0.3"
LUDB = DATA / "ludb" / "1.0.1"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wfdb_reference(record: Path, tmp_path: Path) -> wfdb.Record:
    """Independent read with wfdb.rdrecord; headers naming the record 'X.mat' are fixed in a copy first."""
    lines = record.with_suffix(".hea").read_text().splitlines()
    tokens = lines[0].split()
    if tokens[0] != record.name:
        copy = tmp_path / "ref"
        copy.mkdir(exist_ok=True)
        lines[0] = " ".join([record.name, *tokens[1:]])
        (copy / f"{record.name}.hea").write_text("\n".join(lines) + "\n")
        shutil.copy(record.with_suffix(".mat"), copy / f"{record.name}.mat")
        record = copy / record.name
    return wfdb.rdrecord(str(record))


@pytest.mark.parametrize("rel", ["training/georgia/g1/E00001", "training/georgia/g1/E00015"])
def test_georgia_header_naming_the_mat_file(rel, tmp_path):
    path = C20 / rel
    with pytest.raises(HeaderSyntaxError):
        wfdb.rdheader(str(path))  # the quirk is real: wfdb refuses the header as it is
    before = sha(path.with_suffix(".hea"))
    rec = read_record(C20, rel, "challenge-2020", "challenge")
    assert sha(path.with_suffix(".hea")) == before  # never modified on disk
    ref = wfdb_reference(path, tmp_path)
    assert rec.fs == 500 and rec.sig_name == ref.sig_name
    np.testing.assert_allclose(rec.signal, ref.p_signal.T, atol=1e-6)


def test_challenge_2021_georgia_and_space_in_dx(tmp_path):
    rec = read_record(C21, "training/georgia/g1/E00666", "challenge-2021", "challenge")
    assert rec.dx == ["428750005", "426434006", "59931005", "164934002", "164917005"]  # '#Dx:' form
    assert rec.age == 77 and rec.sex == "M"
    ref = wfdb_reference(C21 / "training/georgia/g1/E00666", tmp_path)
    np.testing.assert_allclose(rec.signal, ref.p_signal.T, atol=1e-6)
    rec = read_record(C21, "training/ptb-xl/g1/HR06000", "challenge-2021", "challenge")
    assert "# Dx: 164934002,426783006" in (C21 / "training/ptb-xl/g1/HR06000.hea").read_text()
    assert rec.dx == ["164934002", "426783006"] and rec.age == 59 and rec.sex == "F"


def test_dx_forms_empty_and_repeated():
    assert "#Dx: \n" in (C20 / "training/cpsc_2018/g1/A0001.hea").read_text()  # labels stripped in this copy
    assert read_record(C20, "training/cpsc_2018/g1/A0001", "challenge-2020", "challenge").dx == []
    empty = read_record(C20, "training/georgia/g1/E00001", "challenge-2020", "challenge")
    assert empty.dx == [] and empty.age is None and empty.sex == "F"  # '#Age: NaN'
    assert "251146004,284470004,284470004" in (C20 / "training/georgia/g1/E00015.hea").read_text()
    rep = read_record(C20, "training/georgia/g1/E00015", "challenge-2020", "challenge")
    assert rep.dx == ["251146004", "284470004"]


def test_lowercase_mv_units_in_physical_millivolts():
    path = C21 / "training/ptb-xl/g1/HR06000"
    assert "/mv" in path.with_suffix(".hea").read_text()
    rec = read_record(C21, "training/ptb-xl/g1/HR06000", "challenge-2021", "challenge")
    ref = wfdb.rdrecord(str(path))
    np.testing.assert_allclose(rec.signal, ref.p_signal.T, atol=1e-6)
    digital = np.frombuffer(path.with_suffix(".mat").read_bytes()[24:], "<i2").reshape(-1, 12)
    np.testing.assert_allclose(rec.signal[0], digital[:, 0] / 1000.0, atol=1e-6)  # gain 1000/mV


def test_ptb_1000hz_2000000_per_mv():
    rec = read_record(C20, "training/ptb/g1/S0001", "challenge-2020", "challenge")
    ref = wfdb.rdrecord(str(C20 / "training/ptb/g1/S0001"))
    assert rec.fs == 1000 and rec.signal.shape == (12, 38400)
    assert ref.adc_gain[0] == 2_000_000 and ref.units[0] == "mV"
    # Taken literally the header gives a 1 uV ECG (wfdb does so); the gain is per volt: 2000 adu/mV,
    # the PTB Diagnostic database's own gain. The reader corrects it.
    assert np.abs(ref.p_signal).max() < 0.001
    np.testing.assert_allclose(rec.signal, ref.p_signal.T * 1000, rtol=1e-5, atol=1e-7)
    assert 0.3 < np.abs(rec.signal).max() < 5  # a real ECG in mV


def test_ptb_with_15_leads_drops_the_frank_leads(tmp_path):
    """The PTB Diagnostic database records 15 leads (12 + vx, vy, vz); only the standard 12 are kept."""
    src = C20 / "training/ptb/g1/S0001"
    raw = src.with_suffix(".mat").read_bytes()
    digital = np.frombuffer(raw[24:], "<i2").reshape(-1, 12)
    frank = (digital[:, :3] // 2).astype("<i2")  # stand-ins for vx, vy, vz
    d15 = np.hstack([digital, frank])
    out = tmp_path / "training/ptb/g1"
    out.mkdir(parents=True)
    (out / "S0001.mat").write_bytes(struct.pack("<5i", 30, 15, len(d15), 0, 4) + b"val\x00" + d15.tobytes())
    lines = src.with_suffix(".hea").read_text().splitlines()
    lines[0] = lines[0].replace(" 12 ", " 15 ", 1)
    extra = [f"S0001.mat 16+24 2000000/mV 16 0 0 {int(frank[:, i].astype(np.int64).sum())} 0 {n}"
             for i, n in enumerate(["vx", "vy", "vz"])]  # fmt: skip
    (out / "S0001.hea").write_text("\n".join(lines[:13] + extra + lines[13:]) + "\n")
    rec15 = read_record(tmp_path, "training/ptb/g1/S0001", "challenge-2020", "challenge")
    rec12 = read_record(C20, "training/ptb/g1/S0001", "challenge-2020", "challenge")
    assert rec15.sig_name[-3:] == ["vx", "vy", "vz"] and rec15.signal.shape == (15, 38400)
    h15 = harmonise(rec15.signal, rec15.sig_name, rec15.fs)
    h12 = harmonise(rec12.signal, rec12.sig_name, rec12.fs)
    np.testing.assert_array_equal(h15.signal, h12.signal)


def test_ludb_per_lead_gain_and_baseline():
    header = read_header(LUDB / "data/1")
    assert len(set(header.adc_gain)) > 1 and any(header.baseline)  # e.g. 1716(6)/mV, 1206(2)/mV
    rec = read_record(LUDB, "data/1", "ludb", "ludb")
    ref = wfdb.rdrecord(str(LUDB / "data/1"))
    np.testing.assert_allclose(rec.signal, ref.p_signal.T, atol=1e-6)
    digital = np.frombuffer((LUDB / "data/1.dat").read_bytes(), "<i2").reshape(-1, 12)
    np.testing.assert_allclose(rec.signal[0], (digital[:, 0] - 6) / 1716.0, atol=1e-6)
    assert rec.sig_name[3] == "avr"
    assert canonicalize_leads(rec.signal, rec.sig_name)[1].all()
    # labels from ludb.csv: one statement per line of the diagnosis columns
    assert rec.dx == [
        "Sinus bradycardia",
        "Electric axis of the heart: left axis deviation",
        "Left ventricular overload",
        "Left ventricular hypertrophy",
        "Non-specific repolarization abnormalities: posterior wall",
    ]
    assert rec.age == 51 and rec.sex == "F" and rec.fold == -1


def test_ptbxl_metadata_and_uppercase_leads():
    meta = MetadataTable(PTBXL, "ptbxl", "ptb-xl")
    rec = read_record(PTBXL, "records500/00000/00001_hr", "ptb-xl", "ptbxl", meta)
    assert rec.sig_name[3:6] == ["AVR", "AVL", "AVF"]
    assert rec.dx == ["NORM", "LVOLT", "SR"]
    assert rec.patient_id == "15709" and rec.fold == 3 and rec.age == 56 and rec.sex == "F"
    lr = read_record(PTBXL, "records100/00000/00001_lr", "ptb-xl", "ptbxl", meta)
    assert lr.fs == 100 and lr.signal.shape == (12, 1000) and lr.patient_id == "15709"
    ref = wfdb.rdrecord(str(PTBXL / "records500/00000/00001_hr"))
    np.testing.assert_allclose(rec.signal, ref.p_signal.T, atol=1e-6)


def test_parse_header_matches_wfdb_on_every_sample_header():
    for hea in sorted(DATA.rglob("*.hea")):
        text = hea.read_text()
        ours = parse_header(text, hea.stem)
        if text.split()[0] != hea.stem:
            continue  # wfdb cannot parse these (see above)
        ref = wfdb.rdheader(str(hea.with_suffix("")))
        assert (ours.fs, ours.sig_len, ours.n_sig) == (ref.fs, ref.sig_len, ref.n_sig), hea
        assert ours.sig_name == ref.sig_name and ours.units == ref.units, hea
        assert ours.adc_gain == ref.adc_gain and ours.baseline == ref.baseline, hea
        assert ours.checksum == ref.checksum and ours.byte_offset == [b or 0 for b in ref.byte_offset], hea
