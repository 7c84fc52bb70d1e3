"""The ecgssl store: a Zarr v3 group of fixed-length 12-lead windows (contract: ``docs/store.md``).

Reading::

    store = open_store("data/store.zarr")
    x = store.load_signal()            # int16 (n, 12, T), whole-chunk reads
    df = store.meta()                  # one row per committed window

Writing (one writer at a time)::

    with StoreWriter(path, fs=500, window_samples=5000, create=True) as w:
        done = w.committed_keys()
        w.append(batch)
        w.commit(sources={"ptb-xl": {"version": "1.0.3", "base_url": "..."}}, quarantine=[...])

How the store stays consistent when a writer is killed at any instant:

* The commit point is ``commit.json`` (row count, sources, quarantine, content hash), written to a temp file,
  fsynced and moved into place with ``os.replace``. Readers trust only its first ``n`` rows.
* Rows are only ever written at or after the committed count. Every write covers whole chunks (the writer
  keeps the rows of the last, partly filled chunk in memory and rewrites that chunk whole, zero-padded), so
  zarr never does a read-modify-write and Dask/Zarr chunk misalignment cannot occur.
* A rewritten tail chunk holds committed rows. zarr 3.1.6's ``LocalStore`` writes every chunk to a
  ``*.partial`` temp file and renames it over the old one (``zarr/storage/_local.py: _atomic_write``), so a
  kill leaves the old or the new chunk, never a torn one; both carry the same committed rows. Before the
  manifest moves, the chunk files written since the last commit (and their folders) are fsynced, so a commit never points at
  data still in flight. ``tests/unit/test_store.py`` kills writers with SIGKILL to check it.
* Power loss: before the manifest moves, every chunk file written since the last commit, every folder on its
  path up to the store root (new folders included) and each array's ``zarr.json`` (rewritten by a resize) are
  fsynced; at each commit every array is resized to exactly the committed row count, so plain zarr / xarray
  readers see committed rows only (while a writer is appending, they may also see its uncommitted rows: use
  :func:`open_store`). Opening refuses a store whose arrays are shorter than the committed row count.
* A lost ``commit.json`` never wipes a store: a writer refuses to create a store over arrays that hold rows or
  chunk files (unless ``overwrite=True``), and each commit keeps the previous manifest as
  ``commit.prev.json`` (:func:`recover_store` restores it).
* The lock is an ``fcntl.flock`` on ``.writer.lock``: the kernel releases it when the holder dies, so a
  killed run never leaves a stale lock behind. A second writer waits up to ``lock_timeout`` seconds, then
  raises :class:`StoreLockedError`.
* Each commit appends ``(hash, n)`` to the manifest's ``history``; ``open_store(path, at=hash)`` pins a reader
  to that commit (rows are append-only, so its first ``n`` rows never change).
* Provenance (schema 2): every row carries its record's path below the source root (``record_path``) and the
  sha256 of its raw files (``raw_sha256``); the manifest records each source's version and harmonisation
  settings, and a writer refuses to add rows of another version or other settings to a source
  (:func:`migrate_store` upgrades a schema-1 store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from ecgmodel.data.signal import LEADS
from ecgmodel.errors import UserError

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # schema 1 is read as is; writers need 2 (see migrate_store)
MANIFEST = "commit.json"
PREV_MANIFEST = "commit.prev.json"  # the manifest of the commit before the last one (recover_store)
HISTORY_MAX = 1000  # (hash, n) entries kept in the manifest for pinned readers
LOCK = ".writer.lock"
DEFAULT_CHUNK_WINDOWS = 64  # 64 x 12 x 5000 int16 = 7.7 MB raw, ~2.7 MB compressed (bench/ingest.py)
DEFAULT_META_CHUNK = 4096  # rows per chunk of the small per-window arrays (a multiple of chunk_windows)
# va-origin, site-label: the localization adapters; user-label: free-text labels of `ecgssl ingest --folder`
DX_SYSTEMS = ("snomed-ct", "ptbxl-scp", "ludb-diagnosis", "va-origin", "site-label", "user-label")

# name -> (dtype, fill value) of the per-window 1-D arrays, in the order of docs/store.md
META_COLUMNS: dict[str, tuple[Any, Any]] = {
    "record": (str, ""),
    "source": (str, ""),
    "database": (str, ""),
    "window_start": (np.int64, 0),
    "valid_length": (np.int32, 0),
    "dx": (str, ""),
    "patient_id": (str, ""),
    "age": (np.float32, np.nan),
    "sex": (str, ""),
    "fold": (np.int8, -1),
    "qc": (np.uint8, 0),
    # schema 2 (provenance): "" in rows written before it
    "record_path": (str, ""),
    "raw_sha256": (str, ""),
}
PROVENANCE_COLUMNS = ("record_path", "raw_sha256")  # optional in a WindowBatch (default "")
ARRAYS = ("signal", "lead_present", *META_COLUMNS)
_STR_COLUMNS = [k for k, (dt, _) in META_COLUMNS.items() if dt is str]


class StoreError(UserError, RuntimeError):
    """A store cannot be opened or written as asked: ``problem`` names the path and the rule, ``fix`` the
    ``ecgssl`` command that fixes it (the CLI prints both on one line)."""


class StoreLockedError(StoreError):
    """Another writer held the store's lock for longer than the writer's ``lock_timeout`` (worth a retry)."""

    transient = True


# --------------------------------------------------------------------------------------------------- batches
@dataclass
class WindowBatch:
    """Rows to append: ``k`` windows with their per-window metadata (see docs/store.md for each field)."""

    signal: np.ndarray  # int16 (k, 12, T)
    lead_present: np.ndarray  # bool (k, 12)
    record: Sequence[str]
    source: Sequence[str]
    database: Sequence[str]
    window_start: np.ndarray
    valid_length: np.ndarray
    dx: Sequence[str]
    patient_id: Sequence[str]
    age: np.ndarray
    sex: Sequence[str]
    fold: np.ndarray
    qc: np.ndarray
    record_path: Sequence[str] = ()  # path of the record below its source root ("" when not known)
    raw_sha256: Sequence[str] = ()  # sha256 of the record's raw files ("" when not known)

    def __post_init__(self) -> None:
        self.signal = np.asarray(self.signal)
        if self.signal.dtype != np.int16 or self.signal.ndim != 3 or self.signal.shape[1] != len(LEADS):
            raise ValueError(f"signal must be int16 (k, 12, T), got {self.signal.dtype} {self.signal.shape}")
        k = self.signal.shape[0]
        self.lead_present = np.asarray(self.lead_present, dtype=bool)
        if self.lead_present.shape != (k, len(LEADS)):
            raise ValueError(f"lead_present must be bool ({k}, 12), got {self.lead_present.shape}")
        for name, (dtype, _) in META_COLUMNS.items():
            value = getattr(self, name)
            if name in PROVENANCE_COLUMNS and len(value) == 0:
                value = [""] * k
            arr = np.asarray([str(v) for v in value], dtype=object) if dtype is str else np.asarray(value, dtype)
            if arr.shape != (k,):
                raise ValueError(f"{name} must have {k} entries (one per window), got shape {arr.shape}")
            setattr(self, name, arr)

    def __len__(self) -> int:
        return self.signal.shape[0]

    @classmethod
    def for_record(
        cls,
        signal: np.ndarray,
        lead_present: np.ndarray,
        window_start: np.ndarray,
        valid_length: np.ndarray,
        qc: np.ndarray,
        *,
        record: str,
        source: str,
        database: str,
        dx: Sequence[str] | str = "",
        patient_id: str = "",
        age: float | None = None,
        sex: str = "",
        fold: int = -1,
        record_path: str = "",
        raw_sha256: str = "",
    ) -> WindowBatch:
        """The windows of one record: per-record fields are repeated for each window.

        ``dx`` may be a list of codes (joined with commas) or an already joined string; ``lead_present``
        may be (12,) for the whole record.
        """
        k = len(signal)
        present = np.broadcast_to(np.asarray(lead_present, bool), (k, len(LEADS)))
        dx_text = dx if isinstance(dx, str) else ",".join(dx)
        age_value = np.nan if age is None else float(age)
        return cls(
            signal=signal, lead_present=present, record=[record] * k, source=[source] * k,
            database=[database] * k, window_start=window_start, valid_length=valid_length, dx=[dx_text] * k,
            patient_id=[patient_id] * k, age=np.full(k, age_value, np.float32), sex=[sex] * k,
            fold=np.full(k, fold, np.int8), qc=qc, record_path=[record_path] * k, raw_sha256=[raw_sha256] * k,
        )  # fmt: skip

    @classmethod
    def concat(cls, batches: Iterable[WindowBatch]) -> WindowBatch:
        batches = list(batches)
        if not batches:
            raise ValueError("concat needs at least one batch")
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)})


def _window_digests(batch: WindowBatch) -> list[int]:
    """One 256-bit digest per window of everything stored about it (signal, leads, metadata)."""
    out = []
    for i in range(len(batch)):
        h = hashlib.blake2b(digest_size=32)
        h.update(np.ascontiguousarray(batch.signal[i]).tobytes())
        h.update(batch.lead_present[i].tobytes())
        h.update("\x1f".join(str(getattr(batch, name)[i]) for name in META_COLUMNS
                              if name not in PROVENANCE_COLUMNS).encode())  # fmt: skip
        for name in PROVENANCE_COLUMNS:  # empty provenance adds nothing: schema-1 digests stay valid
            value = str(getattr(batch, name)[i])
            if value:
                h.update(f"\x1e{name}={value}".encode())
        out.append(int.from_bytes(h.digest(), "big"))
    return out


# A multiset hash (sum of per-window digests mod 2^256): the content hash depends on WHICH windows are stored,
# not on the order in which parallel workers delivered them, so an interrupted-then-resumed ingest hashes
# the same as an uninterrupted one.
_MOD = 1 << 256


def _content_hash(manifest: dict[str, Any]) -> str:
    summary = {
        "schema_version": manifest["schema_version"],
        "fs": manifest["fs"],
        "window_samples": manifest["window_samples"],
        "n": manifest["n"],
        "multiset": manifest["multiset"],
        "sources": {k: [v.get("version"), v.get("records")] for k, v in sorted(manifest["sources"].items())},
        "quarantine": sorted((q["source"], q["record"], q["reason"]) for q in manifest["quarantine"]),
    }
    blob = json.dumps(summary, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- reading
def _read_manifest(path: Path, schemas: tuple[int, ...] = READABLE_SCHEMAS) -> dict[str, Any]:
    try:
        with open(path / MANIFEST) as f:
            manifest = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        how = f"ecgssl ingest --store {path} --source ptb-xl   (or: ecgssl pipeline --demo)"
        if path.is_file():
            raise StoreError(f"{path}: is a file; a store is a folder (with {MANIFEST})",
                             "give the store's folder, e.g. ecgssl inspect data/store.zarr") from None
        if not path.exists():
            raise StoreError(f"{path}: not an ecgssl store: the path does not exist", how) from None
        if (path / PREV_MANIFEST).exists():
            raise StoreError(f"{path}: no {MANIFEST} (the last commit was lost; {PREV_MANIFEST}, the commit "
                             "before it, is there)", f"ecgssl inspect {path} --recover") from None
        raise StoreError(f"{path}: not an ecgssl store (no {MANIFEST})", how) from None
    except json.JSONDecodeError as e:
        fix = f"ecgssl inspect {path} --recover" if (path / PREV_MANIFEST).exists() else None
        raise StoreError(f"{path}: {MANIFEST} is not valid JSON ({e})",
                         fix or "restore the store from a copy or re-ingest it into a new folder") from None
    if manifest.get("schema_version") not in schemas:
        fix = f"ecgssl inspect {path} --migrate" if manifest.get("schema_version") in READABLE_SCHEMAS else None
        raise StoreError(
            f"{path}: schema version {manifest.get('schema_version')} is not supported here "
            f"(expected {' or '.join(map(str, schemas))})", fix or "upgrade ecgssl, or re-ingest into a new folder"
        )
    return manifest


def _array_lengths(path: Path) -> dict[str, int | None]:
    """Rows of each array as its ``zarr.json`` declares them (None: the array is missing or unreadable)."""
    out: dict[str, int | None] = {}
    for name in ARRAYS:
        try:
            out[name] = int(json.loads((path / name / "zarr.json").read_text())["shape"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            out[name] = None
    return out


def _check_lengths(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse arrays shorter than the committed row count (zarr would return fill values or clamp)."""
    n = int(manifest["n"])
    names = ARRAYS if manifest.get("schema_version", 1) >= 2 else [a for a in ARRAYS if a not in PROVENANCE_COLUMNS]
    lengths = _array_lengths(path)
    short = {a: lengths[a] for a in names if lengths[a] is None or lengths[a] < n}
    if short:
        raise StoreError(
            f"{path}: arrays shorter than the {n} committed rows: {short} (their zarr.json was lost or is stale; "
            "the store is damaged: restore it from a copy or re-ingest)"
        )

def content_hash(path: str | os.PathLike) -> str:
    """Short hash of the committed content, read from the commit manifest (no data is read)."""
    return _read_manifest(Path(path))["hash"]


class Store:
    """Read-only view of the committed rows of a store. Reopen to see later commits.

    ``at``: pin the view to an earlier commit by its content hash (from the manifest's history): ``n`` and
    ``hash`` are those of that commit, so a commit made after a caller took the hash changes nothing it reads.
    """

    def __init__(self, path: str | os.PathLike, at: str | None = None):
        self.path = Path(path)
        self._manifest = _read_manifest(self.path)
        _check_lengths(self.path, self._manifest)
        if at is not None and at != self._manifest["hash"]:
            pinned = [h for h in self._manifest.get("history", []) if h[0] == at]
            if not pinned:
                raise StoreError(
                    f"{self.path}: commit {at} is not in the store's history (current {self._manifest['hash']}; "
                    "the store was rebuilt or the commit is older than the history kept)"
                )
            self._manifest = {**self._manifest, "hash": at, "n": int(pinned[-1][1])}
        try:
            self._group = zarr.open_group(self.path, mode="r")
        except Exception as e:  # zarr raises several types for "no group here"
            raise StoreError(f"{self.path}: cannot open the zarr group ({e})") from e
        self.n: int = int(self._manifest["n"])
        self.fs: int = int(self._manifest["fs"])
        self.window_samples: int = int(self._manifest["window_samples"])
        self.chunk_windows: int = int(self._manifest["chunk_windows"])
        self.leads: list[str] = list(self._group.attrs["leads"])
        self.signal: zarr.Array = self._group["signal"]
        self._meta: pd.DataFrame | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        """Group attributes; ``sources``, ``dx_systems`` and ``n_committed`` as of the last commit."""
        attrs = dict(self._group.attrs)
        attrs.update(sources=self._manifest["sources"], dx_systems=self._manifest["dx_systems"],
                     n_committed=self.n)  # fmt: skip
        return attrs

    @property
    def hash(self) -> str:
        return self._manifest["hash"]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={self.n}, fs={self.fs}, window_samples={self.window_samples})"

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` of every signal chunk over the committed rows."""
        c = self.chunk_windows
        return [(s, min(s + c, self.n)) for s in range(0, self.n, c)]

    def iter_chunks(self, order: Sequence[int] | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, int16 block)`` chunk by chunk (in ``order`` of chunk indices if given)."""
        bounds = self.chunk_bounds()
        for i in order if order is not None else range(len(bounds)):
            start, stop = bounds[i]
            yield start, stop, self.signal[start:stop]

    def load_signal(self, rows: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """int16 (k, 12, T) windows. ``rows`` None (all), a slice, or row indices (any order, repeats ok).

        Reads whole chunks only: each chunk that holds a requested row is read once, in one piece.
        """
        if rows is None:
            rows = slice(0, self.n)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.n)
            if step == 1:
                c = self.chunk_windows
                lo, hi = (start // c) * c, min(-(-stop // c) * c, self.n)
                return self.signal[lo:hi][start - lo : stop - lo] if stop > start else self._empty()
            rows = np.arange(start, stop, step)
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return self._empty()
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"{self.path}: rows must be in [0, {self.n}), got {idx.min()}..{idx.max()}")
        out = np.empty((idx.size, len(LEADS), self.window_samples), dtype=np.int16)
        chunk_of = idx // self.chunk_windows
        for c in np.unique(chunk_of):
            lo = int(c) * self.chunk_windows
            block = self.signal[lo : min(lo + self.chunk_windows, self.n)]
            sel = np.nonzero(chunk_of == c)[0]
            out[sel] = block[idx[sel] - lo]
        return out

    def _empty(self) -> np.ndarray:
        return np.zeros((0, len(LEADS), self.window_samples), np.int16)

    def meta(self) -> pd.DataFrame:
        """One row per committed window with every 1-D array of the store (strings as Python str)."""
        if self._meta is None:
            cols = {}
            schema = self._manifest.get("schema_version", 1)
            for name in META_COLUMNS:
                if name in PROVENANCE_COLUMNS and schema < 2:  # schema-1 stores predate provenance: unknown ("")
                    cols[name] = np.full(self.n, "", dtype=object)
                    continue
                values = self._group[name][: self.n]
                cols[name] = values.astype(object) if name in _STR_COLUMNS else values
            self._meta = pd.DataFrame(cols)
        return self._meta.copy()

    def lead_present(self) -> np.ndarray:
        return np.asarray(self._group["lead_present"][: self.n], dtype=bool)

    def quarantine(self) -> list[dict[str, str]]:
        return [dict(q) for q in self._manifest["quarantine"]]

    def summary(self) -> dict[str, Any]:
        """What ``ecgssl inspect`` prints: counts per source and database, quarantine, schema."""
        meta = self.meta()[["source", "database", "record"]]
        per_source = meta.drop_duplicates(["source", "record"]).groupby("source").size()
        per_db = meta.drop_duplicates(["source", "record"]).groupby("database").size()
        windows_db = meta.groupby("database").size()
        return {
            "path": str(self.path),
            "schema_version": self._manifest["schema_version"],
            "fs": self.fs,
            "window_samples": self.window_samples,
            "chunk_windows": self.chunk_windows,
            "windows": self.n,
            "records": int(per_source.sum()) if len(per_source) else 0,
            "sources": {k: int(v) for k, v in per_source.items()},
            "source_versions": {k: v.get("version") for k, v in self._manifest["sources"].items()},
            "databases": {k: {"records": int(per_db[k]), "windows": int(windows_db[k])} for k in per_db.index},
            "dx_systems": dict(self._manifest["dx_systems"]),
            "quarantined": self.quarantine(),
            "committed_at": self._manifest.get("committed_at"),
            "hash": self.hash,
        }


def open_store(path: str | os.PathLike, at: str | None = None) -> Store:
    """Read-only view of the committed rows of the store at ``path`` (raises :class:`StoreError` naming it).

    ``at``: a content hash of an earlier commit to pin the view to (see :class:`Store`).
    """
    return Store(path, at=at)


def recover_store(path: str | os.PathLike) -> dict[str, Any]:
    """Restore a lost ``commit.json`` from ``commit.prev.json`` (the commit before the last one).

    Rows of the last commit become uncommitted again (a re-run ingests them again); returns the restored
    manifest. Raises :class:`StoreError` when there is nothing to restore or the arrays are too short.
    """
    path = Path(path)
    if (path / MANIFEST).exists():
        raise StoreError(f"{path}: {MANIFEST} exists; nothing to recover")
    if not (path / PREV_MANIFEST).exists():
        raise StoreError(f"{path}: neither {MANIFEST} nor {PREV_MANIFEST}: the commit cannot be recovered")
    prev = path / PREV_MANIFEST
    tmp = path / f".{MANIFEST}.recover.tmp"
    shutil.copyfile(prev, tmp)
    manifest = _read_manifest_file(tmp, path)
    _check_lengths(path, manifest)
    _fsync_path(tmp)
    os.replace(tmp, path / MANIFEST)
    _fsync_path(path)
    return manifest


def _read_manifest_file(file: Path, store: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"{store}: {file.name} is unreadable ({e})") from None


def migrate_store(path: str | os.PathLike) -> dict[str, Any]:
    """Upgrade a schema-1 store to schema 2 in place (adds the provenance arrays, empty for existing rows).

    Existing rows keep their content digests (empty provenance adds nothing), so only the schema part of the
    content hash changes. Sources written before schema 2 have no recorded settings: the next writer of such a
    source records its own. Takes the writer lock. Returns the new manifest; a schema-2 store is left as is.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest["schema_version"] == SCHEMA_VERSION:
        return manifest
    fd = _lock(path, timeout=0.0)
    try:
        group = zarr.open_group(path, mode="r+")
        meta_chunk = group["record"].chunks[0]
        length = group["record"].shape[0]
        for name in PROVENANCE_COLUMNS:
            if name not in group:
                dtype, fill = META_COLUMNS[name]
                group.create_array(name, shape=(length,), chunks=(meta_chunk,), dtype=dtype, fill_value=fill,
                                   dimension_names=["window"])  # fmt: skip
        group.attrs["schema_version"] = SCHEMA_VERSION
        _fsync_store_tree(path)
        m = dict(manifest, schema_version=SCHEMA_VERSION)
        m.setdefault("history", [])
        m["migrated_from"] = manifest["schema_version"]
        m["hash"] = _content_hash(m)
        m["history"] = [*m["history"], [m["hash"], m["n"]]][-HISTORY_MAX:]
        _commit_manifest(path, m, durable=True)
        return m
    finally:
        _unlock(fd)


# --------------------------------------------------------------------------------------------------- writing
def _fsync_path(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_up_to(path: Path, root: Path, done: set[Path]) -> None:
    """fsync ``path`` and every folder from its parent up to ``root`` (new folders' entries included)."""
    _fsync_path(path)
    folder = path.parent
    while folder not in done:
        _fsync_path(folder)
        done.add(folder)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent


def _fsync_store_tree(root: Path) -> None:
    """fsync every metadata file and folder of a store (after creating or migrating it)."""
    done: set[Path] = set()
    for meta in root.rglob("zarr.json"):
        _fsync_up_to(meta, root, done)
    _fsync_path(root.parent)


def _write_json_atomic(path: Path, data: dict[str, Any], durable: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_path(path.parent)


def _commit_manifest(root: Path, manifest: dict[str, Any], durable: bool) -> None:
    """Move ``manifest`` into place (the commit point), keeping the one it replaces as ``commit.prev.json``."""
    current = root / MANIFEST
    if current.exists():
        tmp = root / f".{PREV_MANIFEST}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(current, tmp)  # the old manifest file itself (never rewritten in place), under a second name
        except OSError:  # a filesystem without hard links
            shutil.copyfile(current, tmp)
        os.replace(tmp, root / PREV_MANIFEST)
    _write_json_atomic(current, manifest, durable)


def _lock(path: Path, timeout: float) -> int:
    """Take the writer lock of the store at ``path``, waiting up to ``timeout`` seconds."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.05
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(OSError):
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise StoreLockedError(
                    f"{path}: another writer holds the lock ({LOCK}, pid {holder or '?'}) and did not release it "
                    f"within {timeout:g} s; one writer at a time"
                ) from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _has_data(path: Path) -> list[str]:
    """Arrays of ``path`` that hold rows or chunk files (what creating a store over them would destroy)."""
    lengths = _array_lengths(path)
    return [name for name in ARRAYS if (lengths[name] or 0) > 0 or (path / name / "c").is_dir()
            and any(f.is_file() for f in (path / name / "c").rglob("*"))]  # fmt: skip


class _Column:
    """Rows of one array from the start of its last (partly filled) chunk up to the end of what was appended.

    Only whole chunks are written: full ones as soon as they fill up, the partial tail (zero-padded) at commit.
    """

    def __init__(self, array: zarr.Array, base: int, rows: np.ndarray):
        self.array = array
        self.chunk = array.chunks[0]
        self.base = base  # first row held in self.rows; a multiple of self.chunk
        self.rows = rows
        self.dirty: set[int] = set()  # chunk indices written since the last commit

    def extend(self, values: np.ndarray) -> None:
        self.rows = np.concatenate([self.rows, values]) if len(self.rows) else values

    def flush(self, partial: bool) -> None:
        full = (len(self.rows) // self.chunk) * self.chunk
        if full:
            self.array[self.base : self.base + full] = self.rows[:full]
            self.dirty.update(range(self.base // self.chunk, (self.base + full) // self.chunk))
            self.base += full
            self.rows = self.rows[full:]
        if partial and len(self.rows):
            pad = np.full((self.chunk - len(self.rows), *self.rows.shape[1:]), self.array.fill_value,
                          dtype=self.rows.dtype)  # fmt: skip
            self.array[self.base : self.base + self.chunk] = np.concatenate([self.rows, pad])
            self.dirty.add(self.base // self.chunk)

    def chunk_files(self, root: Path) -> list[Path]:
        tail = ["0"] * (self.array.ndim - 1)
        return [root / self.array.basename / "c" / str(i) / Path(*tail) if tail else
                root / self.array.basename / "c" / str(i) for i in sorted(self.dirty)]  # fmt: skip


class StoreWriter:
    """The single writer of a store (see the module docstring for the consistency rules).

    ``create=True`` creates the store when ``path`` does not hold one yet; an existing store must have the same
    ``fs`` and ``window_samples``. A folder without ``commit.json`` whose arrays hold rows or chunk files is
    refused (the manifest was lost: see :func:`recover_store`) unless ``overwrite=True`` asks to start over.
    ``lock_timeout``: seconds to wait for another writer's lock before :class:`StoreLockedError`.
    Use as a context manager; leaving it without :meth:`commit` drops the uncommitted rows (they stay
    invisible and are overwritten by the next writer).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fs: int = 500,
        window_samples: int = 5000,
        create: bool = True,
        chunk_windows: int = DEFAULT_CHUNK_WINDOWS,
        meta_chunk: int = DEFAULT_META_CHUNK,
        durable: bool = True,
        lock_timeout: float = 0.0,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.durable = durable
        self._lock_fd: int | None = None
        if meta_chunk % chunk_windows:
            raise ValueError(f"meta_chunk ({meta_chunk}) must be a multiple of chunk_windows ({chunk_windows})")
        exists = (self.path / MANIFEST).exists()
        if not exists and not create:
            raise StoreError(f"{self.path}: not an ecgssl store and create=False")
        if not exists and self.path.exists() and any(
            p.name not in (LOCK, "zarr.json", PREV_MANIFEST, *ARRAYS) and not p.name.startswith(".")
            for p in self.path.iterdir()
        ):
            raise StoreError(f"{self.path}: directory exists, is not empty and is not an ecgssl store")
        new_folder = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if new_folder and durable:
            _fsync_path(self.path.parent)
        self._lock_fd = _lock(self.path, lock_timeout)
        try:
            if not (self.path / MANIFEST).exists():
                held = _has_data(self.path)
                if held and not overwrite:
                    prev = (self.path / PREV_MANIFEST).exists()
                    raise StoreError(
                        f"{self.path}: no {MANIFEST}, but arrays {held} hold rows or chunk files; refusing to "
                        "create a store over them",
                        f"ecgssl inspect {self.path} --recover   (restores the commit before the last)" if prev
                        else f"move the folder away (mv {self.path} {self.path}.damaged), then ecgssl ingest "
                        f"--store {self.path} ...",
                    )  # fmt: skip
                self._create(fs, window_samples, chunk_windows, meta_chunk)
            self._open(fs, window_samples)
        except BaseException:
            self.close()
            raise

    # -- setup
    def _create(self, fs: int, window_samples: int, chunk_windows: int, meta_chunk: int) -> None:
        # mode="a" + overwrite per array: mode="w" would delete the lock file we hold.
        group = zarr.open_group(self.path, mode="a", zarr_format=3)
        blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")  # ratio 2.7, decode ~600 MB/s
        group.create_array(
            "signal", shape=(0, len(LEADS), window_samples), chunks=(chunk_windows, len(LEADS), window_samples),
            dtype="int16", fill_value=0, compressors=[blosc], dimension_names=["window", "lead", "time"],
            overwrite=True,
        )  # fmt: skip
        group.create_array(
            "lead_present", shape=(0, len(LEADS)), chunks=(meta_chunk, len(LEADS)), dtype="bool",
            fill_value=False, dimension_names=["window", "lead"], overwrite=True,
        )  # fmt: skip
        for name, (dtype, fill) in META_COLUMNS.items():
            group.create_array(name, shape=(0,), chunks=(meta_chunk,), dtype=dtype, fill_value=fill,
                               dimension_names=["window"], overwrite=True)  # fmt: skip
        attrs = {
            "schema_version": SCHEMA_VERSION, "fs": fs, "leads": list(LEADS), "units": "uV",
            "window_samples": window_samples, "dx_systems": {}, "sources": {}, "chunk_windows": chunk_windows,
        }  # fmt: skip
        group.attrs.update(attrs)
        if self.durable:
            _fsync_store_tree(self.path)
        manifest = {
            "schema_version": SCHEMA_VERSION, "fs": fs, "window_samples": window_samples,
            "chunk_windows": chunk_windows, "n": 0, "sources": {}, "dx_systems": {}, "quarantine": [],
            "multiset": "0", "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        manifest["hash"] = _content_hash(manifest)
        manifest["history"] = [[manifest["hash"], 0]]
        _write_json_atomic(self.path / MANIFEST, manifest, self.durable)

    def _open(self, fs: int, window_samples: int) -> None:
        self._manifest = _read_manifest(self.path, schemas=(SCHEMA_VERSION,))
        if (self._manifest["fs"], self._manifest["window_samples"]) != (fs, window_samples):
            raise StoreError(
                f"{self.path}: store holds fs={self._manifest['fs']} Hz, window_samples="
                f"{self._manifest['window_samples']}; this writer asks for fs={fs}, window_samples={window_samples}"
            )
        _check_lengths(self.path, self._manifest)
        self._group = zarr.open_group(self.path, mode="r+")
        self.n_committed = int(self._manifest["n"])
        self._multiset = int(self._manifest["multiset"], 16)
        self._columns: dict[str, _Column] = {}
        for name in ARRAYS:
            arr = self._group[name]
            base = (self.n_committed // arr.chunks[0]) * arr.chunks[0]
            self._columns[name] = _Column(arr, base, arr[base : self.n_committed])
        self.n = self.n_committed
        # committed rows -> keys, for skip-on-rerun and per-source record counts
        src = self._group["source"][: self.n_committed].astype(object)
        rec = self._group["record"][: self.n_committed].astype(object)
        paths = self._group["record_path"][: self.n_committed].astype(object)
        self._paths: dict[tuple[str, str], str] = dict(zip(zip(src, rec, strict=True), paths, strict=True))
        self._keys: set[tuple[str, str]] = set(self._paths)
        self._pending_keys: set[tuple[str, str]] = set()
        self._pending_sum = 0

    # -- API
    @property
    def fs(self) -> int:
        return int(self._manifest["fs"])

    @property
    def window_samples(self) -> int:
        return int(self._manifest["window_samples"])

    def committed_keys(self) -> set[tuple[str, str]]:
        """``{(source, record)}`` of the committed rows: skip these on a re-run."""
        return set(self._keys)

    def committed_paths(self) -> dict[tuple[str, str], str]:
        """``{(source, record): record_path}`` of the committed rows (``""`` for rows without provenance)."""
        return dict(self._paths)

    def quarantined_keys(self) -> set[tuple[str, str]]:
        return {(q["source"], q["record"]) for q in self._manifest["quarantine"]}

    def source_info(self, slug: str) -> dict[str, Any] | None:
        """What the last commit recorded about source ``slug`` (version, settings, ...), None if absent."""
        info = self._manifest["sources"].get(slug)
        return dict(info) if info is not None else None

    def check_source(self, slug: str, version: str | None, settings: dict[str, Any] | None = None) -> None:
        """Refuse to add rows of ``slug`` when the store holds another version or other settings of it.

        A source the store does not hold yet, or holds without recorded settings (written before schema 2),
        passes. Raises :class:`StoreError` naming both versions / the settings that differ.
        """
        info = self._manifest["sources"].get(slug)
        if not info or not info.get("records"):
            return
        if version is not None and info.get("version") is not None and str(info["version"]) != str(version):
            raise StoreError(
                f"{self.path}: source {slug} is stored at version {info['version']}; refusing to add version "
                f"{version} to it (ingest the new version into a new store; records of both would mix)"
            )
        old = info.get("settings")
        if settings is not None and old is not None:
            norm = json.loads(json.dumps(settings, sort_keys=True, default=str))
            diff = {k: (old.get(k), norm.get(k)) for k in sorted(set(old) | set(norm)) if old.get(k) != norm.get(k)}
            if diff:
                raise StoreError(
                    f"{self.path}: source {slug} was stored with other harmonisation settings "
                    f"(stored -> asked: {diff}); refusing to mix them in one store (use a new store)"
                )

    def append(self, batch: WindowBatch) -> None:
        """Add rows after the last appended row (invisible until :meth:`commit`)."""
        if not len(batch):
            return
        if batch.signal.shape[2] != self.window_samples:
            raise ValueError(
                f"{self.path}: batch windows have {batch.signal.shape[2]} samples, store has {self.window_samples}"
            )
        keys = set(zip(batch.source, batch.record, strict=True))
        again = keys & self._keys
        if again:
            raise StoreError(f"{self.path}: records already committed, refusing duplicates: {sorted(again)[:5]}")
        again = keys & self._pending_keys
        if again:
            raise StoreError(f"{self.path}: records already appended in this writer, refusing duplicates: "
                             f"{sorted(again)[:5]}")  # fmt: skip
        rows = list(zip(batch.source, batch.record, batch.window_start.tolist(), strict=True))
        if len(set(rows)) != len(rows):
            seen: set = set()
            dup = [r for r in rows if r in seen or seen.add(r)]
            raise StoreError(f"{self.path}: the batch holds one (source, record, window_start) twice, refusing "
                             f"duplicates: {dup[:5]}")  # fmt: skip
        paths: dict[tuple[str, str], str] = {}
        for key, rpath in zip(zip(batch.source, batch.record, strict=True), batch.record_path, strict=True):
            if paths.setdefault(key, rpath) != rpath:
                raise StoreError(f"{self.path}: record {key[0]}/{key[1]} comes from two paths ({paths[key]!r}, "
                                 f"{rpath!r}); records are keyed by name, refusing duplicates")  # fmt: skip
        self._ensure_capacity(self.n + len(batch))
        self._columns["signal"].extend(batch.signal)
        self._columns["lead_present"].extend(batch.lead_present)
        for name in META_COLUMNS:
            self._columns[name].extend(getattr(batch, name))
        for col in self._columns.values():
            col.flush(partial=False)
        self._pending_sum = (self._pending_sum + sum(_window_digests(batch))) % _MOD
        self._pending_keys |= keys
        self._paths.update(paths)
        self.n += len(batch)

    def _ensure_capacity(self, rows: int) -> None:
        # Capacity grows in whole meta chunks (a multiple of every chunk length). Each array is checked on its
        # own: a writer killed halfway through this loop leaves arrays of different lengths behind.
        meta_chunk = self._columns["record"].chunk
        new = -(-rows // meta_chunk) * meta_chunk
        for col in self._columns.values():
            if col.array.shape[0] < new:
                col.array.resize((new, *col.array.shape[1:]))

    def commit(
        self,
        sources: dict[str, dict[str, Any]] | None = None,
        quarantine: Iterable[dict[str, str]] | None = None,
        dx_systems: dict[str, str] | None = None,
    ) -> str:
        """Make every appended row visible, atomically; returns the new content hash.

        ``sources`` ``{slug: {"version", "base_url", "settings", ...}}`` and ``dx_systems`` ``{slug: system}``
        are merged into what is stored (``records`` per source is counted here); a ``version`` or ``settings``
        that differ from what the store holds for a source with rows raise :class:`StoreError`.
        ``quarantine`` entries ``{"source", "record", "reason"}`` replace earlier entries for the same record;
        a record that is now stored leaves the quarantine.
        """
        for slug, info in (sources or {}).items():
            self.check_source(slug, info.get("version"), info.get("settings"))
        for slug, system in (dx_systems or {}).items():
            if system not in DX_SYSTEMS:
                raise ValueError(f"dx system {system!r} of {slug} is not one of {DX_SYSTEMS}")
        for col in self._columns.values():
            col.flush(partial=True)
        # Shape == committed rows: plain zarr / xarray readers then see exactly the committed rows.
        for col in self._columns.values():
            if col.array.shape[0] != self.n:
                col.array.resize((self.n, *col.array.shape[1:]))
        if self.durable:
            done: set[Path] = set()
            for col in self._columns.values():
                for f in col.chunk_files(self.path):
                    _fsync_up_to(f, self.path, done)  # data, and every folder entry on its path (new ones too)
                _fsync_up_to(self.path / col.array.basename / "zarr.json", self.path, done)  # shape (resize)
            _fsync_path(self.path / "zarr.json")
        for col in self._columns.values():
            col.dirty.clear()
        keys = self._keys | self._pending_keys
        m = dict(self._manifest)
        m["sources"] = {k: dict(v) for k, v in m["sources"].items()}
        for slug, info in (sources or {}).items():
            entry = m["sources"].setdefault(slug, {})
            entry.update({k: v for k, v in info.items() if k != "records"})
            if "settings" in entry:
                entry["settings"] = json.loads(json.dumps(entry["settings"], sort_keys=True, default=str))
        m["dx_systems"] = {**m["dx_systems"], **(dx_systems or {})}
        counts: dict[str, int] = {}
        for src, _ in keys:
            counts[src] = counts.get(src, 0) + 1
        for slug in m["sources"]:
            m["sources"][slug]["records"] = counts.get(slug, 0)
        quarantined = {(q["source"], q["record"]): dict(q) for q in m["quarantine"]}
        for q in quarantine or []:
            if not {"source", "record", "reason"} <= set(q):
                raise ValueError(f"quarantine entry {q} needs source, record and reason")
            quarantined[(q["source"], q["record"])] = {k: str(q[k]) for k in ("source", "record", "reason")}
        m["quarantine"] = [q for key, q in sorted(quarantined.items()) if key not in keys]
        m["n"] = self.n
        m["multiset"] = format((self._multiset + self._pending_sum) % _MOD, "x")
        m["committed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        m["hash"] = _content_hash(m)
        history = [h for h in m.get("history", []) if h[0] != m["hash"]]
        m["history"] = [*history, [m["hash"], m["n"]]][-HISTORY_MAX:]
        # group attrs first (informative copy), then the manifest (the commit point)
        self._group.attrs.update({"sources": m["sources"], "dx_systems": m["dx_systems"]})
        if self.durable:
            _fsync_path(self.path / "zarr.json")
        _commit_manifest(self.path, m, self.durable)
        self._manifest = m
        self.n_committed = self.n
        self._multiset = int(m["multiset"], 16)
        self._pending_sum = 0
        self._keys = keys
        self._pending_keys = set()
        return m["hash"]

    def close(self) -> None:
        _unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
