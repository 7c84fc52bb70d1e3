"""End to end: ingest all four sources of ../shared/physionet over HTTP, check every window independently,
re-run (no change), and kill a conversion mid-way then resume (same store)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import wfdb
from helpers_http import serve_directory
from scipy.signal import resample_poly

from ecgmodel.data.sources import get_source
from ecgmodel.data.store import content_hash, open_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SOURCES = ["challenge-2020", "challenge-2021", "ptb-xl", "ludb"]
CANON = {n.lower(): i for i, n in enumerate(["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4",
                                             "V5", "V6"])}  # fmt: skip
TRUNCATED = "training/georgia/g1/E07500"  # truncated after its checksum was published: the reader refuses it
CORRUPTED = "training/georgia/g1/E07501"  # bytes changed after publication: the downloader refuses it


def build_mirror(shared: Path, dst: Path) -> None:
    """A copy of the shared mirror (hard links where possible) with two damaged Challenge-2021 records."""

    def link_or_copy(src: str, target: str) -> None:
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)

    shutil.copytree(shared / "physionet", dst, copy_function=link_or_copy)
    root = dst / "challenge-2021" / "1.0.3"
    mat = root / f"{TRUNCATED}.mat"
    data = mat.read_bytes()[:-2400]
    mat.unlink()  # never write through a hard link into the shared files
    mat.write_bytes(data)
    sums = root / "SHA256SUMS.txt"
    lines = sums.read_text().splitlines()
    digest = hashlib.sha256(data).hexdigest()
    sums.unlink()
    sums.write_text("".join(f"{digest} {ln.split()[1]}\n" if ln.endswith(f"{TRUNCATED}.mat") else ln + "\n"
                            for ln in lines))  # fmt: skip
    bad = root / f"{CORRUPTED}.mat"
    data = bytearray(bad.read_bytes())
    data[500] ^= 0xFF
    bad.unlink()
    bad.write_bytes(bytes(data))


def independent_windows(path: Path, fs_out: int = 500, window: int = 5000, max_windows: int = 6):
    """wfdb.rdrecord + resample_poly, written without the ingest code (header quirk fixed on a copy)."""
    hea = path.with_suffix(".hea").read_text().splitlines()
    first = hea[0].split()
    if first[0] != path.name:  # 'E00009.mat' on the record line
        tmp = Path(os.environ["DASK_TEMPORARY_DIRECTORY"]) / "ref"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / f"{path.name}.hea").write_text("\n".join([" ".join([path.name, *first[1:]]), *hea[1:]]) + "\n")
        shutil.copy(path.with_suffix(".mat"), tmp / f"{path.name}.mat")
        path = tmp / path.name
    rec = wfdb.rdrecord(str(path))
    x = rec.p_signal.T
    gain_fix = np.array([1000.0 if g >= 1e5 else 1.0 for g in rec.adc_gain])[:, None]  # PTB per-volt gains
    x = x * gain_fix
    canon = np.zeros((12, x.shape[1]))
    for i, name in enumerate(rec.sig_name):
        if name.lower() in CANON:
            canon[CANON[name.lower()]] = x[i]
    ratio = Fraction(fs_out, int(rec.fs))
    if ratio != 1:
        canon = resample_poly(canon, ratio.numerator, ratio.denominator, axis=1)
    uv = np.clip(np.rint(canon * 1000), -32768, 32767)
    n = canon.shape[1]
    if n < window:
        return [np.pad(uv, ((0, 0), (0, window - n)))]
    return [uv[:, k * window : (k + 1) * window] for k in range(min(n // window, max_windows))]


def run_conversion_script(raw: Path, store: Path) -> list[str]:
    """argv for a separate process converting the already downloaded sources (workers=2)."""
    code = f"""
import sys
from pathlib import Path
from ecgmodel.data.convert import convert_sources
from ecgmodel.data.ingest_config import IngestConfig
if __name__ == "__main__":
    cfg = IngestConfig(sources={SOURCES!r}, store={str(store)!r}, workers=2, progress=False, batch_records=8,
                       commit_every=2)
    fetched = []
    for slug in cfg.sources:
        src = cfg.source(slug)
        root = Path({str(raw)!r}) / slug / src.version
        fetched.append({{"slug": slug, "root": str(root),
                        "records_file": str(root / ".ecgssl-records.txt"), "failures": []}})
    convert_sources(cfg, fetched)
"""
    return [sys.executable, "-c", code]


def test_ingest_all_sources_over_http(tmp_path, shared):
    from flows.ingest import ingest_flow

    mirror = tmp_path / "mirror"
    build_mirror(shared, mirror)
    store, raw = tmp_path / "store.zarr", tmp_path / "raw"
    with serve_directory(mirror) as server:
        summary = ingest_flow(sources=SOURCES, mirror=server.url, store=str(store), raw_dir=str(raw), workers=2)
        assert summary["failed_sources"] == {}
        n_listed = {s: len(get_source(s).record_paths((mirror / s / get_source(s).version / "RECORDS").read_text()))
                    for s in SOURCES}  # fmt: skip
        ptbxl_lines = (mirror / "ptb-xl" / get_source("ptb-xl").version / "RECORDS").read_text().split()
        # records500 only (ptbxl_rate=500); the mirror grows, so count what it lists
        assert n_listed["ptb-xl"] == sum(p.startswith("records500/") for p in ptbxl_lines) > 0
        q = {(x["source"], x["record"]): x["reason"] for x in summary["quarantined"]}
        assert set(q) == {("challenge-2021", "E07500"), ("challenge-2021", "E07501")}
        assert "(truncated signal)" in q[("challenge-2021", "E07500")]
        assert "sha256" in q[("challenge-2021", "E07501")].lower() or "checksum" in q[("challenge-2021", "E07501")]
        assert summary["sources"] == {s: n_listed[s] - (2 if s == "challenge-2021" else 0) for s in SOURCES}

        # every stored window equals an independent read within int16 rounding
        s = open_store(store)
        meta, sig, present = s.meta(), s.load_signal(), s.lead_present()
        assert s.n == summary["windows"] and len(meta) == s.n
        assert not meta.duplicated(["source", "record", "window_start"]).any()
        worst = 0.0
        for (slug, name), rows in meta.groupby(["source", "record"]).indices.items():
            src = get_source(slug)
            rel = next(p for p in src.record_paths((raw / slug / src.version / "RECORDS").read_text())
                       if p.endswith("/" + name))  # fmt: skip
            expected = independent_windows(raw / slug / src.version / rel)
            assert len(rows) == len(expected), (slug, name)
            for row, exp in zip(rows, expected, strict=True):
                worst = max(worst, float(np.abs(sig[row].astype(float) - exp).max()))
            assert present[rows].all()
        assert worst <= 1.0, f"stored windows differ from an independent read by {worst} uV"
        ptbxl = meta[(meta.source == "ptb-xl") & (meta.record == "00001_hr")].iloc[0]
        assert (ptbxl.dx, ptbxl.patient_id, ptbxl.fold, ptbxl.sex) == ("NORM,LVOLT,SR", "15709", 3, "F")
        assert s.attrs["dx_systems"] == {"challenge-2020": "snomed-ct", "challenge-2021": "snomed-ct",
                                         "ptb-xl": "ptbxl-scp", "ludb": "ludb-diagnosis"}  # fmt: skip

        # re-running with the same sources changes nothing
        h = content_hash(store)
        again = ingest_flow(sources=SOURCES, mirror=server.url, store=str(store), raw_dir=str(raw), workers=2)
        assert content_hash(store) == h == again["store_hash"]
        assert all(r["stored"] == 0 for r in again["run"].values())

    # a conversion killed mid-way, then resumed, gives the same store
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(run_conversion_script(raw, killed), start_new_session=True, cwd=REPO)
    deadline = time.time() + 120
    target = random.Random(7).randint(150, 500)  # windows committed before the kill
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if (killed / "commit.json").exists() and open_store(killed).n >= target:
            break
    assert proc.poll() is None, "the conversion finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the main process and its Dask workers
    proc.wait()
    partial = open_store(killed).n
    assert 0 < partial < s.n
    subprocess.run(run_conversion_script(raw, killed), check=True, cwd=REPO, timeout=300)
    resumed = open_store(killed)
    assert resumed.n == s.n and not resumed.meta().duplicated(["source", "record", "window_start"]).any()
    # same windows as the uninterrupted ingest: the manifest's multiset digest covers every byte of every row
    # (the content hashes differ only because this run never saw the download failure in its quarantine)
    assert json.loads((killed / "commit.json").read_text())["multiset"] == \
        json.loads((store / "commit.json").read_text())["multiset"]
    m1 = s.meta().sort_values(["source", "record", "window_start"])
    m2 = resumed.meta().sort_values(["source", "record", "window_start"])
    np.testing.assert_array_equal(sig[m1.index.to_numpy()], resumed.load_signal()[m2.index.to_numpy()])
