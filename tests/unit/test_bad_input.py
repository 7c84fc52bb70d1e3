"""Bad input: each problem gets a clear error naming the record and the rule; stored data is never lost."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ecgmodel.data.convert import convert_batch, convert_sources
from ecgmodel.data.download import download_source
from ecgmodel.data.ingest_config import IngestConfig
from ecgmodel.data.sources import get_source
from ecgmodel.data.store import content_hash, open_store
from ecgmodel.data.wfdb_io import RecordError, read_record

DATA = Path(__file__).resolve().parents[1] / "data" / "physionet"
C20 = "challenge-2020/1.0.2"
A0001 = "training/cpsc_2018/g1/A0001"
HR1 = "records500/00000/00001_hr"


def copy_source(tmp_path: Path, slug_version: str) -> Path:
    dst = tmp_path / "mirror" / slug_version
    shutil.copytree(DATA / slug_version, dst)
    for f in dst.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # copies of read-only files must be editable
    return dst


def edit_header(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def read_c20(root: Path, rel: str = A0001):
    return read_record(root, rel, "challenge-2020", "challenge")


def test_truncated_signal_file(tmp_path):
    root = copy_source(tmp_path, C20)
    mat = root / f"{A0001}.mat"
    mat.write_bytes(mat.read_bytes()[: 24 + 12 * 2 * 4000])
    with pytest.raises(RecordError, match=r"^challenge-2020/A0001: header declares 7500 samples, signal file has "
                                          r"4000 \(truncated signal\)$"):  # fmt: skip
        read_c20(root)


def test_header_signal_length_mismatch(tmp_path):
    root = copy_source(tmp_path, C20)
    edit_header(root / f"{A0001}.hea", lambda ls: [ls[0].replace(" 7500 ", " 7000 ", 1), *ls[1:]])
    with pytest.raises(RecordError, match=r"challenge-2020/A0001: header declares 7000 samples, A0001.mat declares "
                                          r"7500 \(header/signal length mismatch\)"):  # fmt: skip
        read_c20(root)
    ptbxl = copy_source(tmp_path, "ptb-xl/1.0.3")
    edit_header(ptbxl / f"{HR1}.hea", lambda ls: [ls[0].replace(" 5000", " 4000", 1), *ls[1:]])
    with pytest.raises(RecordError, match=r"ptb-xl/00001_hr: .*4000 samples.*5000 .*length mismatch"):
        read_record(ptbxl, HR1, "ptb-xl", "ptbxl")


def test_corrupted_bytes_fail_the_header_checksum(tmp_path):
    root = copy_source(tmp_path, C20)
    mat = root / f"{A0001}.mat"
    data = bytearray(mat.read_bytes())
    data[24 + 2 * 12 * 100] ^= 0x40  # one bit of lead I, sample 100
    mat.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=r"challenge-2020/A0001: lead 'I' checksum .*corrupted signal"):
        read_c20(root)


def test_non_numeric_dx(tmp_path):
    root = copy_source(tmp_path, C20)
    edit_header(root / f"{A0001}.hea", lambda ls: [("#Dx: 426783006,AF" if line.startswith("#Dx") else line)
                                                 for line in ls])  # fmt: skip
    with pytest.raises(RecordError, match=r"challenge-2020/A0001: Dx code 'AF' is not a SNOMED CT number"):
        read_c20(root)


def test_unknown_lead_name_quarantined_by_the_converter(tmp_path):
    root = copy_source(tmp_path, C20)
    edit_header(root / f"{A0001}.hea", lambda ls: [ls[0], ls[1][: ls[1].rfind(" ")] + " Lead1", *ls[2:]])
    res = convert_batch(str(root), get_source("challenge-2020"), [A0001, "training/georgia/g1/E00001"], 500, 10, 6)
    assert res.records == ["E00001"] and len(res.batch) == 1
    assert res.failures == [{"record": "A0001", "reason": "challenge-2020/A0001: unknown lead name(s) ['Lead1'] "
                             "(expected ['I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6'] "
                             "in any case, or vx/vy/vz) (lead names)"}]  # fmt: skip


def test_nan_only_lead(tmp_path):
    root = copy_source(tmp_path, "ludb/1.0.1")
    dat = root / "data/1.dat"
    d = np.frombuffer(dat.read_bytes(), "<i2").reshape(-1, 12).copy()
    d[:, 7] = -32768  # WFDB format 16 "no sample"
    dat.write_bytes(d.tobytes())
    checksum = int(d[:, 7].astype(np.int64).sum())
    edit_header(root / "data/1.hea", lambda ls: [*ls[:8], " ".join((t := ls[8].split())[:6] + [str(checksum)] + t[7:]),
                                                 *ls[9:]])  # fmt: skip
    with pytest.raises(RecordError, match=r"ludb/1: lead 'v2' has no valid sample \(NaN-only lead\)"):
        read_record(root, "data/1", "ludb", "ludb")


def test_missing_metadata_row(tmp_path):
    root = copy_source(tmp_path, "ptb-xl/1.0.3")
    csv = root / "ptbxl_database.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:2]) + "\n")  # only ecg_id 1 left
    with pytest.raises(RecordError, match=r"ptb-xl/00002_hr: no row for records500/00000/00002_hr in ptbxl_database"):
        read_record(root, "records500/00000/00002_hr", "ptb-xl", "ptbxl")


def test_bad_records_are_quarantined_and_stored_data_survives(tmp_path):
    """A good ingest, then a mirror full of damaged records: quarantined with reasons, earlier rows intact."""
    store = tmp_path / "store.zarr"
    cfg = IngestConfig(sources=["challenge-2020", "ludb"], store=str(store), workers=0, progress=False)
    good = [{"slug": "ludb", "root": str(DATA / "ludb/1.0.1"), "records": ["data/1", "data/2"], "failures": []}]
    convert_sources(cfg, good)
    before, hash_before = open_store(store).load_signal(), content_hash(store)

    # a mirror whose A0001.mat lost bytes after its checksum was published: the downloader refuses it
    mirror = tmp_path / "mirror"
    copy_source(tmp_path, C20)
    mat = mirror / C20 / f"{A0001}.mat"
    mat.write_bytes(mat.read_bytes()[:-100])
    # and E00015 is damaged in a way only the reader sees (the checksum listing is recomputed for it)
    hea = mirror / C20 / "training/georgia/g1/E00015.hea"
    edit_header(hea, lambda ls: [ls[0].replace(" 5000 ", " 6000 ", 1), *ls[1:]])
    sums = mirror / C20 / "SHA256SUMS.txt"
    digest = hashlib.sha256(hea.read_bytes()).hexdigest()
    sums.write_text("".join(f"{digest} {line.split()[1]}\n" if line.endswith("E00015.hea") else line + "\n"
                            for line in sums.read_text().splitlines()))  # fmt: skip
    result = download_source("challenge-2020", mirror, tmp_path / "raw", workers=2, progress=False, retries=0)
    assert [f["record"] for f in result.failures] == [A0001]
    assert "sha256" in result.failures[0]["reason"].lower() or "checksum" in result.failures[0]["reason"].lower()
    fetched = [{"slug": "challenge-2020", "root": str(result.root), "records": result.records,
                "failures": result.failures}]  # fmt: skip
    summary = convert_sources(cfg, fetched)

    q = {x["record"]: x["reason"] for x in summary["quarantined"]}
    assert set(q) == {"A0001", "E00015"}
    assert "E00015" in q["E00015"] and "length mismatch" in q["E00015"]
    assert summary["run"]["challenge-2020"]["stored"] == 2  # E00001 and S0001 made it
    after = open_store(store)
    rows = (after.meta().source == "ludb").to_numpy()
    np.testing.assert_array_equal(after.load_signal()[rows], before)  # earlier data intact
    assert content_hash(store) != hash_before
    # re-running with the same broken input changes nothing
    h = content_hash(store)
    convert_sources(cfg, fetched)
    assert content_hash(store) == h


# ------------------------------------------------------------------------------------------- one key, two files
def test_two_recordings_with_one_name_are_not_both_stored(tmp_path):
    """g1/E00001 and g2/E00001 (same file name, other folders): the second is quarantined, never mixed in."""
    root = copy_source(tmp_path, C20)
    g2 = root / "training/georgia/g2"
    g2.mkdir()
    shutil.copy(root / "training/georgia/g1/E00015.hea", g2 / "E00001.hea")
    shutil.copy(root / "training/georgia/g1/E00015.mat", g2 / "E00001.mat")
    edit_header(g2 / "E00001.hea", lambda ls: [ls[0].replace("E00015", "E00001"), *ls[1:]])
    store = tmp_path / "store.zarr"
    cfg = IngestConfig(sources=["challenge-2020"], store=str(store), workers=0, progress=False)
    paths = ["training/georgia/g1/E00001", "training/georgia/g2/E00001"]
    summary = convert_sources(cfg, [{"slug": "challenge-2020", "root": str(root), "records": paths, "failures": []}])
    meta = open_store(store).meta()
    assert set(meta.record_path) == {paths[0]}
    assert not meta.duplicated(["source", "record", "window_start"]).any()
    q = {x["record"]: x["reason"] for x in summary["quarantined"]}
    assert "also used by training/georgia/g1/E00001" in q[paths[1]] and "duplicate record name" in q[paths[1]]
    # a later run that lists only the second path does not skip it as "already stored" silently either
    again = convert_sources(cfg, [{"slug": "challenge-2020", "root": str(root), "records": paths[1:], "failures": []}])
    assert paths[1] in {x["record"] for x in again["quarantined"]} and open_store(store).n == len(meta)


# ------------------------------------------------------------------------------------------- versions, settings
def test_another_version_or_cap_of_a_stored_source_is_refused(tmp_path):
    from ecgmodel.data.store import StoreError

    store = tmp_path / "store.zarr"
    cfg = IngestConfig(sources=["ludb"], store=str(store), workers=0, progress=False)
    item = {"slug": "ludb", "root": str(DATA / "ludb/1.0.1"), "records": ["data/1"], "failures": []}
    convert_sources(cfg, [item])
    h = content_hash(store)
    with pytest.raises(StoreError, match=r"ludb is stored at version 1.0.1; refusing to add version 9.9"):
        convert_sources(cfg, [{**item, "records": ["data/2"], "version": "9.9"}])
    capped = cfg.model_copy(update={"max_windows_per_record": 1})
    with pytest.raises(StoreError, match=r"other harmonisation settings.*max_windows"):
        convert_sources(capped, [{**item, "records": ["data/2"]}])
    assert content_hash(store) == h
    s = open_store(store)
    assert s.attrs["sources"]["ludb"]["settings"]["max_windows"] == 6
    m = s.meta()
    assert m.record_path.tolist() == ["data/1"] and len(m.raw_sha256.iloc[0]) == 64


# ------------------------------------------------------------------------------------------- sampling rate
def test_header_rate_not_the_catalogs_is_quarantined_before_reading(tmp_path):
    """A Georgia header that says 0.05 Hz would be upsampled 10,000x: refused against the catalog's 500 Hz."""
    root = copy_source(tmp_path, C20)
    rel = "training/georgia/g1/E00001"
    edit_header(root / f"{rel}.hea", lambda ls: [" ".join([*(t := ls[0].split())[:2], "0.05", *t[3:]]), *ls[1:]])
    res = convert_batch(str(root), get_source("challenge-2020"), [rel, A0001], 500, 10, 6)
    assert res.records == ["A0001"]
    assert res.failures == [{"record": "E00001", "reason": "challenge-2020/E00001: header declares 0.05 Hz, the "
                             "catalog expects 500 Hz for this database (sampling rate check)"}]  # fmt: skip


def test_implausible_rate_is_refused_by_harmonise_and_long_records_are_cropped():
    from ecgmodel.data.signal import LEADS, crop_for_windows, harmonise

    with pytest.raises(ValueError, match="0.05 Hz is outside the plausible ECG range"):
        harmonise(np.zeros((12, 100), np.float32), list(LEADS), 0.05)
    # a 2-hour record at 1000 Hz: only what 6 windows need is resampled
    assert crop_for_windows(7_200_000, 1000, 500, 10, 6) < 62_000
    assert crop_for_windows(7_200_000, 1000, 500, 10, None) == 7_200_000


# ------------------------------------------------------------------------------------------- metadata rows
def test_unparsable_patient_id_belongs_to_its_record(tmp_path):
    root = copy_source(tmp_path, "ptb-xl/1.0.3")
    csv = root / "ptbxl_database.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace(",13243.0,", ",n/a,", 1)  # ecg_id 2
    csv.write_text("\n".join(lines) + "\n")
    res = convert_batch(str(root), get_source("ptb-xl"), [HR1, "records500/00000/00002_hr"], 500, 10, 6)
    assert res.records == ["00001_hr"]
    assert res.failures == [{"record": "00002_hr", "reason": "ptb-xl/00002_hr: patient_id 'n/a' is not an integer "
                             "in ptbxl_database.csv (metadata row)"}]  # fmt: skip


# ------------------------------------------------------------------------------------------- a worker dies
class _DyingWorkers:
    """A Dask client whose worker process dies on any batch holding ``poison`` (as distributed reports it)."""

    def __init__(self, poison: str):
        self.poison, self.calls = poison, 0

    def submit(self, fn, *job, pure=False):
        from distributed import KilledWorker

        self.calls += 1
        outer = self

        class Future:
            def result(self):
                if any(p.endswith(outer.poison) for p in job[2]):
                    worker = SimpleNamespace(address="tcp://127.0.0.1:40000")  # what distributed reports
                    raise KilledWorker("convert_batch-123", worker, allowed_failures=0)
                return fn(*job)

            def release(self):
                pass

        return Future()


def test_worker_killed_mid_batch_quarantines_only_the_record_that_kills_it(tmp_path):
    store = tmp_path / "store.zarr"
    cfg = IngestConfig(sources=["challenge-2020"], store=str(store), workers=1, progress=False, batch_records=4)
    records = [A0001, "training/georgia/g1/E00001", "training/georgia/g1/E00015", "training/ptb/g1/S0001"]
    item = {"slug": "challenge-2020", "root": str(DATA / C20), "records": records, "failures": []}
    summary = convert_sources(cfg, [item], client=_DyingWorkers("E00015"))
    assert summary["sources"] == {"challenge-2020": 3}
    q = {x["record"]: x["reason"] for x in summary["quarantined"]}
    assert set(q) == {"E00015"} and "worker failed twice" in q["E00015"] and "KilledWorker" in q["E00015"]
    clean = tmp_path / "clean.zarr"
    convert_sources(cfg.model_copy(update={"store": str(clean)}), [{**item, "records": [r for r in records
                                                                                       if "E00015" not in r]}])
    assert json.loads((store / "commit.json").read_text())["multiset"] == \
        json.loads((clean / "commit.json").read_text())["multiset"]


# ------------------------------------------------------------------------------------------- faults, then a re-run
def test_reingest_after_hostile_server_faults_matches_an_undisturbed_run(tmp_path):
    """A compressed answer, an endless body and a stalled transfer during the download: the affected records are
    quarantined, the rest stored; once the server behaves, a re-run ends at the undisturbed store's hash."""
    from helpers_http import serve_directory

    mirror = tmp_path / "mirror"
    copy_source(tmp_path, "ludb/1.0.1")
    cfg = IngestConfig(sources=["ludb"], workers=0, progress=False, store=str(tmp_path / "clean.zarr"))
    fast = {"progress": False, "backoff": 0.0, "retries": 1}

    def ingest(url, raw, store, **kw):
        r = download_source("ludb", url, tmp_path / raw, **fast, **kw)
        item = {"slug": "ludb", "root": str(r.root), "records": r.records, "failures": r.failures}
        return convert_sources(cfg.model_copy(update={"store": str(tmp_path / store)}), [item])

    with serve_directory(mirror) as server:
        clean = ingest(server.url, "raw-clean", "clean.zarr")
    hostile = {"gzip": {"ludb/1.0.1/data/1.hea"}, "endless": {"ludb/1.0.1/data/2.dat"},
               "trickle_once": {"ludb/1.0.1/ludb.csv": 0.05}}  # fmt: skip
    with serve_directory(mirror, **hostile) as server:
        hurt = ingest(server.url, "raw", "s.zarr", max_file_bytes=1 << 22, attempt_timeout=0.3)
    assert {q["record"] for q in hurt["quarantined"]} >= {"1", "2"} and hurt["hash"] != clean["hash"]
    with serve_directory(mirror) as server:
        again = ingest(server.url, "raw", "s.zarr")
    assert again["quarantined"] == [] and again["hash"] == clean["hash"]


def test_unreadable_metadata_table_quarantines_its_records_without_stopping(tmp_path):
    root = copy_source(tmp_path, "ludb/1.0.1")
    (root / "ludb.csv").write_text("Rhythms,Sex\nSinus,F\n")  # no ID column
    res = convert_batch(str(root), get_source("ludb"), ["data/1", "data/2"], 500, 10, 6)
    assert res.records == [] and [f["record"] for f in res.failures] == ["1", "2"]
    assert "metadata table unreadable (KeyError" in res.failures[0]["reason"]
