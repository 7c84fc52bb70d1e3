"""Your own data: a folder of real WFDB records plus an EDF copy goes through ``ecgssl ingest --folder`` with
labels; the stored windows equal those of the same records ingested from the mirror source; bad files are
quarantined with their reason. A local mirror is verified in place, not copied."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ecgmodel.data.store import open_store
from flows.cli import main

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from helpers_store import DATA  # noqa: E402

PTBXL = DATA / "ptb-xl" / "1.0.3" / "records500"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """PTB-XL records (WFDB .hea/.dat), a Challenge record (.hea/.mat), an EDF copy, a broken header, labels."""
    from wfdb.io.convert.edf import wfdb_to_edf

    root = tmp_path_factory.mktemp("mine") / "ecgs"
    (root / "site_a").mkdir(parents=True)
    heads = sorted(PTBXL.rglob("*.hea"))
    assert len(heads) >= 2
    for h in heads:
        for f in h.parent.glob(f"{h.stem}.*"):
            shutil.copy(f, root / "site_a" / f.name)
    challenge = next(DATA.glob("challenge-2020/*/training/georgia/*/E00001.hea"))
    for f in challenge.parent.glob("E00001.*"):
        shutil.copy(f, root / f.name)
    cwd = os.getcwd()
    try:  # wfdb_to_edf reads the record from the working directory
        os.chdir(root / "site_a")
        wfdb_to_edf(heads[0].stem, output_filename=str(root / "edf_copy.edf"))
    finally:
        os.chdir(cwd)
    (root / "broken.hea").write_text("this is not a header\n")
    (root / "labels.csv").write_text(f"record,label,patient_id\nsite_a/{heads[0].stem},NORM;LVH,p1\n"
                                     f"edf_copy.edf,NORM,p1\nnot_there,MI,p2\n")  # fmt: skip
    return root


@pytest.mark.slow
def test_folder_ingest_equals_the_mirror_source_and_quarantines_bad_files(folder, tmp_path, capsys):
    store = tmp_path / "mine.zarr"
    code = main(["ingest", "--folder", str(folder), "--labels", str(folder / "labels.csv"), "--store", str(store),
                 "--max-windows", "2", "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["failed_sources"] == {}
    s = open_store(store)
    meta = s.meta()
    first = sorted(PTBXL.rglob("*.hea"))[0].stem
    per_record = meta.drop_duplicates("record").set_index("record")
    assert per_record.loc[first, "dx"] == "NORM,LVH" and per_record.loc[first, "patient_id"] == "p1"
    assert per_record.loc[first, "record_path"] == f"site_a/{first}.hea"
    assert per_record.loc["edf_copy", "dx"] == "NORM" and per_record.loc["E00001", "dx"] == ""
    assert all(len(h) == 64 for h in meta["raw_sha256"])  # provenance: the sha256 of each record's files
    reasons = {q["record"]: q["reason"] for q in summary["quarantined"]}
    assert set(reasons) == {"broken", "not_there"}, reasons
    assert "not_there" in reasons["not_there"] and "file rule" in reasons["not_there"]
    sig = s.load_signal()
    # the EDF copy holds the same windows as its WFDB original (EDF is 16-bit like the source: exact here)
    np.testing.assert_array_equal(sig[(meta.record == "edf_copy").values], sig[(meta.record == first).values])

    # the same PTB-XL records through the catalog source from the mirror (verified in place, nothing copied)
    mirror_store, raw = tmp_path / "mirror.zarr", tmp_path / "raw"
    assert main(["ingest", "--source", "ptb-xl", "--mirror", str(DATA), "--store", str(mirror_store),
                 "--raw-dir", str(raw), "--max-windows", "2", "--workers", "0", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    assert not list(raw.rglob("*.dat")), "a local mirror must be verified in place, not copied"
    m = open_store(mirror_store)
    mmeta, msig = m.meta(), m.load_signal()
    compared = 0
    for rec in meta.record.unique():
        if rec in set(mmeta.record):
            ours, theirs = (meta.record == rec).values, (mmeta.record == rec).values
            np.testing.assert_array_equal(sig[ours], msig[theirs], err_msg=rec)
            np.testing.assert_array_equal(s.lead_present()[ours], m.lead_present()[theirs])
            compared += 1
    assert compared >= 2

    again = main(["ingest", "--folder", str(folder), "--labels", str(folder / "labels.csv"), "--store", str(store),
                  "--max-windows", "2", "--json"])  # fmt: skip
    assert again == 0 and open_store(store).hash == s.hash  # a re-run changes nothing


def test_folder_ingest_refuses_bad_arguments_in_one_line(folder, tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_text("name,label\nx,y\n")
    for argv, expected in [
        (["--folder", str(tmp_path / "nope")], "no such folder"),
        (["--folder", str(tmp_path)], "no .hea or .edf file"),
        (["--folder", str(folder), "--labels", str(bad)], "no `record` column"),
        (["--folder", str(folder), "--source", "ptb-xl"], "give one"),
        (["--source", "ptb-xl", "--labels", str(bad), "--mirror", str(DATA)], "--labels goes with --folder"),
    ]:
        assert main(["ingest", "--store", str(tmp_path / "s.zarr"), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "ecgssl ingest --" in err.split(" - fix: ")[1], err
