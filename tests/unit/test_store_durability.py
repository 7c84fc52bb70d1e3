"""Store durability and concurrency: lost manifest, duplicate keys, provenance, power cuts, faults, lock waits.

Each test reproduces one way a store used to lose or corrupt data (see docs/store.md, "Guarantees").
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgmodel.data.store import (
    ARRAYS,
    MANIFEST,
    PREV_MANIFEST,
    SCHEMA_VERSION,
    StoreError,
    StoreLockedError,
    StoreWriter,
    WindowBatch,
    content_hash,
    migrate_store,
    open_store,
    recover_store,
)

W = 50
REPO = Path(__file__).resolve().parents[2]


def rec(r: int, source: str = "src", path: str | None = None, name: str | None = None) -> WindowBatch:
    rng = np.random.default_rng(r)
    k = 1 + r % 3
    return WindowBatch.for_record(
        rng.integers(-2000, 2000, size=(k, 12, W), dtype=np.int16), np.ones(12, bool), np.arange(k) * W,
        np.full(k, W, np.int32), np.zeros(k, np.uint8), record=name or f"R{r:04d}", source=source, database="db",
        record_path=path or f"g/R{r:04d}", raw_sha256=f"{r:064x}",
    )  # fmt: skip


def writer(path: Path, **kw) -> StoreWriter:
    return StoreWriter(path, window_samples=W, chunk_windows=4, meta_chunk=8, **kw)


def build(path: Path, records, commit_every: int = 3, durable: bool = False) -> str:
    with writer(path, durable=durable) as w:
        done = w.committed_keys()
        for i, r in enumerate(r for r in records if ("src", f"R{r:04d}") not in done):
            w.append(rec(r))
            if i % commit_every == commit_every - 1:
                w.commit(sources={"src": {"version": "1"}})
        return w.commit(sources={"src": {"version": "1"}})


# ------------------------------------------------------------------------------------------- 1. lost manifest
def test_lost_manifest_is_refused_not_wiped_and_can_be_recovered(tmp_path):
    path = tmp_path / "s.zarr"
    build(path, range(10))
    n_prev = json.loads((path / PREV_MANIFEST).read_text())["n"]
    assert 0 < n_prev < open_store(path).n
    (path / MANIFEST).unlink()
    with pytest.raises(StoreError, match=r"no commit.json, but arrays .* hold rows.*fix: ecgssl inspect .* --recover"):
        writer(path)
    with pytest.raises(StoreError, match="fix: ecgssl inspect .* --recover"):
        open_store(path)
    assert (path / "signal" / "c").is_dir()  # nothing was deleted
    recover_store(path)
    store = open_store(path)
    assert store.n == n_prev
    np.testing.assert_array_equal(store.load_signal()[:1], rec(0).signal[:1])
    build(path, range(10))  # a re-run re-ingests the rows of the lost commit: same content as an undisturbed run
    build(tmp_path / "clean.zarr", range(10))
    assert content_hash(path) == content_hash(tmp_path / "clean.zarr")


def test_overwrite_is_explicit(tmp_path):
    path = tmp_path / "s.zarr"
    build(path, range(3))
    (path / MANIFEST).unlink()
    (path / PREV_MANIFEST).unlink()
    with pytest.raises(StoreError, match=r"refusing to create a store over them - fix: move the folder away"):
        writer(path)
    with writer(path, overwrite=True) as w:
        assert w.n_committed == 0


# ------------------------------------------------------------------------------------------- 2. duplicate keys
def test_same_record_name_twice_in_one_writer_or_batch_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with writer(path) as w:
        w.append(rec(1, path="g1/E1", name="E1"))
        with pytest.raises(StoreError, match="already appended"):
            w.append(rec(2, path="g2/E1", name="E1"))
        with pytest.raises(StoreError, match="two paths|twice"):
            w.append(WindowBatch.concat([rec(3, path="g1/E2", name="E2"), rec(4, path="g2/E2", name="E2")]))
        w.commit()
    meta = open_store(path).meta()
    assert list(meta.record_path.unique()) == ["g1/E1"]
    assert not meta.duplicated(["source", "record", "window_start"]).any()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=14))
def test_store_never_holds_duplicate_rows(tmp_path_factory, ops):
    """Any sequence of appends (names drawn from a small pool, so they collide) and commits."""
    path = tmp_path_factory.mktemp("dup") / "s.zarr"
    with writer(path, durable=False) as w:
        for i, (r, commit) in enumerate(ops):
            try:
                w.append(rec(i, path=f"g{i}/E{r}", name=f"E{r}"))
            except StoreError:
                pass
            if commit:
                w.commit()
        w.commit()
    meta = open_store(path).meta()
    assert not meta.duplicated(["source", "record", "window_start"]).any()
    assert meta.groupby("record").record_path.nunique().max() == 1


# ------------------------------------------------------------------------------------------- 3. provenance
def test_new_version_or_settings_of_a_stored_source_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    settings_a = {"fs": 500, "window_s": 0.1, "max_windows": 6, "harmonise": "1"}
    with writer(path) as w:
        w.append(rec(1))
        w.commit(sources={"src": {"version": "A", "settings": settings_a}})
    with writer(path) as w:
        with pytest.raises(StoreError, match="stored at version A; refusing to add version B"):
            w.check_source("src", "B", settings_a)
        with pytest.raises(StoreError, match="version B"):
            w.append(rec(2))
            w.commit(sources={"src": {"version": "B", "settings": settings_a}})
    with writer(path) as w:
        with pytest.raises(StoreError, match="max_windows"):
            w.check_source("src", "A", {**settings_a, "max_windows": 2})
        w.check_source("src", "A", settings_a)
        w.check_source("other", "B", settings_a)  # a new source is fine
    store = open_store(path)
    assert store.attrs["sources"]["src"]["version"] == "A" and store.n == len(rec(1))
    assert store.meta().raw_sha256.iloc[0] == f"{1:064x}"


def test_schema_1_store_is_migrated_with_its_content_digests(tmp_path):
    path = tmp_path / "s.zarr"
    with writer(path) as w:  # rows without provenance, as schema 1 wrote them
        b = rec(1)
        b.record_path[:] = ""
        b.raw_sha256[:] = ""
        w.append(b)
        w.commit(sources={"src": {"version": "1"}})
    m = json.loads((path / MANIFEST).read_text())
    multiset = m["multiset"]
    for name in ("record_path", "raw_sha256"):  # make it a schema-1 store
        for f in sorted((path / name).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (path / name).rmdir()
    m["schema_version"] = 1
    (path / MANIFEST).write_text(json.dumps(m))
    assert open_store(path).n == len(b)  # readable as is, metadata included (provenance unknown)
    old = open_store(path).meta()
    assert len(old) == len(b) and old.record_path.tolist() == [""] * len(b) and (old.raw_sha256 == "").all()
    with pytest.raises(StoreError, match="fix: ecgssl inspect .* --migrate"):
        writer(path)
    new = migrate_store(path)
    assert new["schema_version"] == SCHEMA_VERSION and new["multiset"] == multiset
    with writer(path) as w:
        w.append(rec(2))
        w.commit()
    assert open_store(path).meta().record_path.tolist()[: len(b)] == [""] * len(b)


# ------------------------------------------------------------------------------------------- 4. power loss
def test_arrays_hold_exactly_the_committed_rows_for_plain_zarr_readers(tmp_path):
    path = tmp_path / "s.zarr"
    build(path, range(5))
    n = open_store(path).n
    group = zarr.open_group(path, mode="r")
    assert {name: group[name].shape[0] for name in ARRAYS} == dict.fromkeys(ARRAYS, n)


def test_array_shorter_than_the_commit_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    build(path, range(5))
    meta = path / "signal" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = 2  # a stale zarr.json, as a power cut before its fsync leaves it
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="shorter than the .* committed rows"):
        open_store(path)
    with pytest.raises(StoreError, match="shorter"):
        writer(path)


class _Cut(BaseException):
    """The power goes at this point."""


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_commit_fsyncs_everything_it_points_at_before_the_manifest_moves(tmp_path, monkeypatch):
    """Record the fsync / rename sequence of a commit: what a power cut at each point leaves.

    When the manifest's rename reaches the disk, every file written since the last commit and every folder that
    gained an entry (new chunk folders included) must already be durable; before it, the old commit holds.
    """
    path = tmp_path / "s.zarr"
    build(path, range(3))
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b, **k: (events.append(("rename", str(b))), real_replace(a, b, **k))[1])
    with writer(path, durable=True) as w:
        for r in range(3, 40):  # new chunk folders, resizes, a rewritten tail chunk
            w.append(rec(r))
        w.commit()
    commit_at = max(i for i, e in enumerate(events) if e == ("rename", str(path / MANIFEST)))
    durable = {p for kind, p in events[:commit_at] if kind == "fsync"}
    changed = [p for p in path.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns
               and p.name not in (MANIFEST, PREV_MANIFEST, ".writer.lock")]  # fmt: skip
    assert changed
    missing = [str(p) for p in changed if str(p) not in durable]
    assert not missing, f"not fsynced before the commit point: {missing[:5]}"
    new_entries = {p.parent for p in path.rglob("*") if p not in before and p.name != MANIFEST}
    folders = [str(d) for d in new_entries if str(d) not in durable]
    assert not folders, f"folders with new entries not fsynced before the commit point: {folders[:5]}"
    assert ("fsync", str(path)) in events[commit_at:]  # the rename itself


@pytest.mark.parametrize("cut_at", [1, 12, 40, -3, -1])
def test_power_cut_at_each_point_of_a_commit_leaves_old_or_new_commit(tmp_path, monkeypatch, cut_at):
    path = tmp_path / "s.zarr"
    h_old = build(path, range(3))
    n_old = open_store(path).n
    real_fsync = os.fsync
    count = {"n": 0}
    # how many fsyncs a commit does: count once, then cut at the chosen one
    with writer(tmp_path / "probe.zarr", durable=True) as w:
        w.append(rec(0))
        w.commit()
        monkeypatch.setattr(os, "fsync", lambda fd: (count.__setitem__("n", count["n"] + 1), real_fsync(fd))[1])
        for r in range(3, 12):
            w.append(rec(r))
        w.commit()
    total = count["n"]
    stop = cut_at if cut_at > 0 else total + cut_at + 1
    calls = {"n": 0}

    def cut(fd):
        calls["n"] += 1
        if calls["n"] == stop:
            raise _Cut
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", cut)
    with pytest.raises(_Cut), writer(path, durable=True) as w:
        for r in range(3, 12):
            w.append(rec(r))
        w.commit()
    monkeypatch.setattr(os, "fsync", real_fsync)
    store = open_store(path)
    assert (store.hash, store.n) == (h_old, n_old) or store.n > n_old
    build(path, range(12))
    build(tmp_path / "clean.zarr", range(12))
    assert content_hash(path) == content_hash(tmp_path / "clean.zarr")


# ------------------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_mid_write_keeps_the_commit(tmp_path, monkeypatch, code):
    """The chunk writes fail part-way (disk full, folder turned read-only): a clear OSError, the last commit
    intact, and a re-run afterwards gives the same content hash as an undisturbed run."""
    from zarr.storage import _local

    path = tmp_path / "s.zarr"
    h_old = build(path, range(4))
    real_put = _local._put
    writes = {"n": 0}

    def failing_put(p, value, exclusive=False):
        writes["n"] += 1
        if writes["n"] > 5:
            raise OSError(code, os.strerror(code), str(p))
        return real_put(p, value, exclusive)

    monkeypatch.setattr(_local, "_put", failing_put)
    with pytest.raises(OSError) as e, writer(path) as w:
        for r in range(4, 20):
            w.append(rec(r))
        w.commit()
    assert e.value.errno == code
    monkeypatch.setattr(_local, "_put", real_put)
    assert content_hash(path) == h_old
    build(path, range(20))
    build(tmp_path / "clean.zarr", range(20))
    assert content_hash(path) == content_hash(tmp_path / "clean.zarr")


FSIZE_SCRIPT = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from unit.test_store_durability import build
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3_000, 3_000))   # the disk is full for files over 3 kB
build(__import__("pathlib").Path(sys.argv[1]), range(int(sys.argv[2])), durable=True)
"""


def test_real_disk_full_in_a_writer_process(tmp_path):
    """A writer process whose files cannot grow past 3 kB (RLIMIT_FSIZE, no root needed) fails cleanly."""
    path = tmp_path / "s.zarr"
    h_old = build(path, range(3))
    script = tmp_path / "w.py"
    script.write_text(FSIZE_SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script), str(path), "40"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert content_hash(path) == h_old
    build(path, range(40))
    build(tmp_path / "clean.zarr", range(40))
    assert content_hash(path) == content_hash(tmp_path / "clean.zarr")


# ------------------------------------------------------------------------------------------- 6. concurrency
HOLDER = """
import sys, time
from ecgmodel.data.store import StoreWriter
w = StoreWriter(sys.argv[1], window_samples=50, chunk_windows=4, meta_chunk=8)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
w.close()
"""


def test_second_writer_process_waits_for_the_lock_then_times_out_clearly(tmp_path):
    path = tmp_path / "s.zarr"
    build(path, range(2))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1.5"], env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=rf"pid {proc.pid}.*within 0.3 s"):
            writer(path, lock_timeout=0.3)
        t0 = time.monotonic()
        with writer(path, lock_timeout=30) as w:  # waits for the holder to finish, then writes
            assert time.monotonic() - t0 > 0.2
            w.append(rec(5))
            w.commit()
    finally:
        proc.wait(10)
    assert open_store(path).n == len(rec(0)) + len(rec(1)) + len(rec(5))


def test_reader_pinned_to_a_hash_does_not_see_later_commits(tmp_path):
    path = tmp_path / "s.zarr"
    h1 = build(path, range(4))
    first = open_store(path)
    x1, meta1 = first.load_signal(), first.meta()
    done = threading.Event()

    def later_commit():
        with writer(path, lock_timeout=10) as w:
            w.append(rec(9))
            w.commit()
        done.set()

    threading.Thread(target=later_commit).start()
    assert done.wait(20)
    assert content_hash(path) != h1
    pinned = open_store(path, at=h1)
    assert pinned.hash == h1 and pinned.n == len(x1)
    np.testing.assert_array_equal(pinned.load_signal(), x1)
    assert pinned.meta().equals(meta1)
    with pytest.raises(StoreError, match="not in the store's history"):
        open_store(path, at="0123456789abcdef")


def test_inspect_recovers_a_lost_manifest(tmp_path, capsys):
    import argparse

    from flows.ingest import _cmd_inspect

    path = tmp_path / "s.zarr"
    build(path, range(6))
    n_prev = json.loads((path / PREV_MANIFEST).read_text())["n"]
    (path / MANIFEST).unlink()
    from flows.cli import main

    assert main(["inspect", str(path), "--json"]) == 2
    assert f"fix: ecgssl inspect {path} --recover" in capsys.readouterr().err
    assert _cmd_inspect(argparse.Namespace(store=str(path), json=True, recover=True, migrate=False)) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == n_prev
