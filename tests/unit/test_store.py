"""The Zarr store contract (docs/store.md): append, commit, read-back, locking, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ecgmodel.data.store import (
    MANIFEST,
    SCHEMA_VERSION,
    StoreError,
    StoreWriter,
    WindowBatch,
    content_hash,
    open_store,
)

W = 50  # tiny windows keep these tests fast; the layout logic does not depend on the length


def make_record(r: int, source: str = "src") -> WindowBatch:
    """Deterministic windows of synthetic record ``r`` (1-3 windows), so any row can be re-derived."""
    rng = np.random.default_rng(r)
    k = 1 + r % 3
    sig = rng.integers(-2000, 2000, size=(k, 12, W), dtype=np.int16)
    present = np.ones(12, bool)
    present[r % 12] = r % 5 != 0
    return WindowBatch.for_record(
        sig, present, np.arange(k) * W, np.full(k, W, np.int32), np.full(k, r % 16, np.uint8),
        record=f"R{r:04d}", source=source, database=f"db{r % 2}", dx=[str(100 + r), "7"],
        patient_id=str(r // 2), age=float(r % 90), sex="MF"[r % 2], fold=r % 10 + 1,
    )  # fmt: skip


def check_rows(path: Path, expected_records: list[int], source: str = "src") -> None:
    """Every committed row equals what make_record produced for it, with no duplicates and no gaps."""
    store = open_store(path)
    meta = store.meta()
    records = sorted(meta.loc[meta.source == source, "record"].unique())
    assert records == [f"R{r:04d}" for r in sorted(expected_records)]
    sig = store.load_signal()
    present = store.lead_present()
    for r in expected_records:
        b = make_record(r, source)
        rows = np.nonzero(((meta.record == f"R{r:04d}") & (meta.source == source)).to_numpy())[0]
        assert len(rows) == len(b), f"record {r}: {len(rows)} rows, expected {len(b)}"
        np.testing.assert_array_equal(sig[rows], b.signal)
        np.testing.assert_array_equal(present[rows], b.lead_present)
        got = meta.iloc[rows]
        assert list(got.window_start) == list(b.window_start)
        assert list(got.dx) == list(b.dx) and list(got.sex) == list(b.sex)
        assert list(got.patient_id) == list(b.patient_id) and list(got.fold) == list(b.fold)
        np.testing.assert_array_equal(got.age.to_numpy(), b.age)
        np.testing.assert_array_equal(got.qc.to_numpy(), b.qc)


def test_append_commit_read_back_across_partial_chunks(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreWriter(path, fs=500, window_samples=W, chunk_windows=4, meta_chunk=8) as w:
        assert w.committed_keys() == set()
        for r in range(5):  # 1+2+3+1+2 = 9 windows: two full chunks of 4 and one partial
            w.append(make_record(r))
        w.commit(sources={"src": {"version": "1", "base_url": "file:///x"}}, dx_systems={"src": "snomed-ct"})
    check_rows(path, list(range(5)))
    # a second writer continues inside the partial tail chunk, across the meta-chunk boundary
    with StoreWriter(path, fs=500, window_samples=W, chunk_windows=4, meta_chunk=8) as w:
        assert w.committed_keys() == {("src", f"R{r:04d}") for r in range(5)}
        for r in range(5, 12):
            w.append(make_record(r))
        w.commit()
    check_rows(path, list(range(12)))
    store = open_store(path)
    assert store.n == sum(1 + r % 3 for r in range(12))
    assert store.attrs["sources"]["src"] == {"version": "1", "base_url": "file:///x", "records": 12}
    assert store.attrs["dx_systems"] == {"src": "snomed-ct"}
    assert store.attrs["leads"][3] == "aVR" and store.attrs["units"] == "uV"
    assert store.fs == 500 and store.window_samples == W and store.chunk_windows == 4
    # arbitrary row order, repeats, and slices read back identically to a full read
    full = store.load_signal()
    rows = [store.n - 1, 0, 5, 5, 9]
    np.testing.assert_array_equal(store.load_signal(rows), full[rows])
    np.testing.assert_array_equal(store.load_signal(slice(3, 11)), full[3:11])
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in store.iter_chunks()]), full)
    with pytest.raises(IndexError):
        store.load_signal([store.n])


def test_uncommitted_rows_are_invisible_and_overwritten(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreWriter(path, window_samples=W, chunk_windows=4, meta_chunk=8) as w:
        w.append(make_record(1))
        w.commit()
    h1 = content_hash(path)
    with StoreWriter(path, window_samples=W, chunk_windows=4, meta_chunk=8) as w:
        for r in range(20, 30):  # fills whole chunks on disk, never committed
            w.append(make_record(r))
    assert open_store(path).n == 2 and content_hash(path) == h1
    check_rows(path, [1])
    with StoreWriter(path, window_samples=W, chunk_windows=4, meta_chunk=8) as w:
        w.append(make_record(2))
        w.commit()
    check_rows(path, [1, 2])


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreWriter(path, window_samples=W):
        with pytest.raises(StoreError, match="another writer holds the lock"):
            StoreWriter(path, window_samples=W)
    with StoreWriter(path, window_samples=W):  # released on exit
        pass


def test_clear_errors(tmp_path):
    with pytest.raises(StoreError, match=str(tmp_path / "nope")):
        open_store(tmp_path / "nope")
    with pytest.raises(StoreError, match="create=False"):
        StoreWriter(tmp_path / "nope", create=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        StoreWriter(other)
    assert (other / "notes.txt").read_text() == "mine"
    path = tmp_path / "s.zarr"
    with StoreWriter(path, fs=500, window_samples=W) as w:
        w.append(make_record(3))
        w.commit()
        with pytest.raises(StoreError, match="already committed"):
            w.append(make_record(3))
        with pytest.raises(ValueError, match="samples"):
            w.append(WindowBatch.for_record(np.zeros((1, 12, W + 1), np.int16), np.ones(12, bool), [0], [W], [0],
                                            record="x", source="s", database="d"))  # fmt: skip
    with pytest.raises(StoreError, match="fs=250"):
        StoreWriter(path, fs=250, window_samples=W)
    with pytest.raises(ValueError, match="int16"):
        WindowBatch.for_record(np.zeros((1, 12, W), np.float32), np.ones(12, bool), [0], [W], [0],
                               record="x", source="s", database="d")  # fmt: skip
    check_rows(path, [3])


def test_quarantine_merges_and_clears_when_record_is_stored(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreWriter(path, window_samples=W) as w:
        w.commit(quarantine=[{"source": "src", "record": "R0001", "reason": "truncated"},
                             {"source": "src", "record": "R0002", "reason": "bad dx"}])  # fmt: skip
    assert open_store(path).quarantine() == [
        {"source": "src", "record": "R0001", "reason": "truncated"},
        {"source": "src", "record": "R0002", "reason": "bad dx"},
    ]
    with StoreWriter(path, window_samples=W) as w:
        w.append(make_record(1))  # the file was fixed: R0001 is stored now
        w.commit(quarantine=[{"source": "src", "record": "R0002", "reason": "still bad"}])
    assert open_store(path).quarantine() == [{"source": "src", "record": "R0002", "reason": "still bad"}]


def test_content_hash_depends_on_content_not_order(tmp_path):
    hashes = []
    for i, order in enumerate([[0, 1, 2, 3], [3, 1, 0, 2]]):
        path = tmp_path / f"s{i}.zarr"
        with StoreWriter(path, window_samples=W, chunk_windows=4, meta_chunk=8) as w:
            for r in order:
                w.append(make_record(r))
            w.commit(sources={"src": {"version": "1"}})
        hashes.append(content_hash(path))
        assert json.loads((path / MANIFEST).read_text())["hash"] == hashes[-1]
    assert hashes[0] == hashes[1]
    with StoreWriter(tmp_path / "s0.zarr", window_samples=W, chunk_windows=4, meta_chunk=8) as w:
        w.append(make_record(4))
        w.commit()
    assert content_hash(tmp_path / "s0.zarr") != hashes[0]


WRITER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from unit.test_store import make_record
from ecgmodel.data.store import StoreWriter
path, n_records = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
with StoreWriter(path, window_samples={W}, chunk_windows=4, meta_chunk=8) as w:
    done = w.committed_keys()
    todo = [r for r in range(n_records) if ("src", f"R{{r:04d}}") not in done]
    for i, r in enumerate(todo):
        w.append(make_record(r))
        if i % 3 == 2:
            w.commit(sources={{"src": {{"version": "1"}}}})
    w.commit(sources={{"src": {{"version": "1"}}}})
print("done", flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_points_never_loses_committed_rows(tmp_path):
    n_records = 90
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests=str(Path(__file__).resolve().parents[1]), W=W))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    clean = tmp_path / "clean.zarr"
    proc = subprocess.Popen([sys.executable, str(script), str(clean), str(n_records)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    assert proc.wait() == 0
    write_s = time.perf_counter() - t0  # how long the writing phase takes: kills land inside it
    check_rows(clean, list(range(n_records)))

    rng = random.Random(1234)
    path = tmp_path / "killed.zarr"
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(n_records)], env=env,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        done = open_store(path).meta().record.nunique() if (path / MANIFEST).exists() else 0
        time.sleep(rng.uniform(0.05, 0.7) * write_s * (n_records - done) / n_records)  # inside what is left
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (path / MANIFEST).exists():
            store = open_store(path)
            committed = sorted(int(r[1:]) for r in store.meta().record.unique())
            check_rows(path, committed)  # every committed row intact, nothing torn
    assert kills >= 1, "the writer always finished before the kill; the test proved nothing"
    subprocess.run([sys.executable, str(script), str(path), str(n_records)], check=True, env=env)
    check_rows(path, list(range(n_records)))  # complete, no duplicates, no gaps
    assert content_hash(path) == content_hash(clean)


def test_inspect_command(tmp_path, capsys):
    import argparse

    from flows.ingest import _cmd_inspect, exit_code, format_summary

    path = tmp_path / "s.zarr"
    with StoreWriter(path, window_samples=W) as w:
        for r in range(4):
            w.append(make_record(r))
        w.commit(sources={"src": {"version": "1"}}, quarantine=[{"source": "src", "record": "R0009", "reason": "bad"}])
    assert _cmd_inspect(argparse.Namespace(store=str(path), json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["windows"] == 1 + 2 + 3 + 1 and out["records"] == 4 and out["sources"] == {"src": 4}
    assert out["databases"] == {"db0": {"records": 2, "windows": 4}, "db1": {"records": 2, "windows": 3}}
    assert out["quarantined"] == [{"source": "src", "record": "R0009", "reason": "bad"}]
    assert out["schema_version"] == SCHEMA_VERSION and out["fs"] == 500 and out["hash"] == content_hash(path)
    assert "src/R0009: bad" in format_summary(out)
    from flows.cli import main

    assert main(["inspect", str(tmp_path / "missing")]) == 2  # one line with the command that creates it
    err = capsys.readouterr().err
    assert "not an ecgssl store" in err and "fix: ecgssl ingest --store" in err and err.count("\n") == 1
    # ingest exits non-zero only when a source could not be listed or nothing is stored
    assert exit_code({**out, "failed_sources": {}}) == 0
    assert exit_code({**out, "failed_sources": {"ludb": "RECORDS: 404"}}) == 1
    assert exit_code({**out, "windows": 0, "failed_sources": {}}) == 1
