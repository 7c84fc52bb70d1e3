"""Your own ECGs as model input: WFDB records, folders of them, EDF files, or an ecgssl store.

Files go through the same harmonisation as ingest (:func:`ecgmodel.data.signal.harmonise`: leads matched by
name, units to mV, polyphase resampling to the model's rate, windows, int16 microvolts), read by the same WFDB
reader (:mod:`ecgmodel.data.wfdb_io`: the real-world header quirks, gains, checksums). EDF files are read with
``wfdb.io.convert.edf.read_edf``; samples at the EDF digital minimum after the end of the recording (the padding
of the last data record) are trimmed, inside it they are missing samples (NaN, as WFDB's invalid value).

Every input becomes one :class:`Prepared` record: its int16 windows, or the one-line reason it cannot be used
(``error``), plus warnings (leads missing, shorter than a window, resampled from X Hz, samples dropped). A path
that does not exist, or a folder without any record, is a :class:`~ecgmodel.errors.UserError` before any work.

    for rec in prepare_inputs(["my_ecgs/", "patient7.edf"], contract):
        ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgmodel.data.signal import (
    LEADS,
    QC_CLIP,
    QC_FLAT,
    QC_IMPLAUSIBLE,
    QC_NAN,
    LeadError,
    harmonise,
    to_int16_uv,
)
from ecgmodel.data.signal import windows as cut_windows
from ecgmodel.data.wfdb_io import UNIT_TO_MV, RecordError, read_header, read_signal
from ecgmodel.errors import UserError
from ecgmodel.serving.contract import Contract

RECORD_SUFFIXES = (".hea", ".edf")
SIGNAL_SUFFIXES = (".dat", ".mat")  # given instead of the header: the record beside it
STORE_MARKER = "commit.json"
QC_NAMES = {QC_NAN: "missing samples", QC_FLAT: "flat lead", QC_CLIP: "clipping", QC_IMPLAUSIBLE: "implausible amplitude"}


@dataclass
class Prepared:
    """One input record, harmonised (or not usable: ``error`` says why, in one line)."""

    record: str  # record name (file stem, or the store's record)
    input: str  # where it came from (a file path, or STORE#source/record)
    signal: np.ndarray | None = None  # int16 (k, 12, window_samples) microvolts
    lead_present: np.ndarray | None = None  # bool (12,)
    valid_length: np.ndarray | None = None  # int (k,)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def n_windows(self) -> int:
        return 0 if self.signal is None else len(self.signal)


# ------------------------------------------------------------------------------------------------ discovery
def is_store(path: Path) -> bool:
    return path.is_dir() and (path / STORE_MARKER).is_file()


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(kind, path)`` of every record the inputs name: ``wfdb`` (header path), ``edf``, ``store`` or ``other``
    (a file of unknown type: reported in its row). Folders are searched recursively (``.hea`` and ``.edf``)."""
    if not paths:
        raise UserError("no input given (rule: at least one WFDB header, EDF file, folder or store)",
                        "ecgssl predict --model URI --input RECORD.hea|FILE.edf|FOLDER|STORE")  # fmt: skip
    out: list[tuple[str, Path]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"input {str(raw)!r} does not exist (rule: every --input is an existing file or folder)",
                            f"ls {p.parent if str(p.parent) else '.'}  # then ecgssl predict --input <existing path>")  # fmt: skip
        if is_store(p):
            out.append(("store", p))
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in RECORD_SUFFIXES and q.is_file())
            if not found:
                raise UserError(f"folder {str(p)!r} holds no WFDB header (.hea) or EDF file (.edf) (rule: a folder "
                                "input holds records)", f"ecgssl predict --input {p}/RECORD.hea")  # fmt: skip
            out += [("edf" if q.suffix.lower() == ".edf" else "wfdb", q) for q in found]
        elif p.suffix.lower() == ".hea":
            out.append(("wfdb", p))
        elif p.suffix.lower() == ".edf":
            out.append(("edf", p))
        elif p.suffix.lower() in SIGNAL_SUFFIXES and p.with_suffix(".hea").is_file():
            out.append(("wfdb", p.with_suffix(".hea")))
        else:
            out.append(("other", p))
    return out


# ------------------------------------------------------------------------------------------------ reading
def read_edf(path: Path, label: str) -> tuple[np.ndarray, list[str], float]:
    """(signal float32 (n_leads, T) mV with NaN for missing samples, lead names, fs) of an EDF file."""
    from wfdb.io.convert.edf import read_edf as wfdb_read_edf

    try:
        rec = wfdb_read_edf(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure of a user file is its row's reason
        raise RecordError(f"{label}: not a readable EDF file ({type(e).__name__}: {e})") from e
    if rec.p_signal is None or rec.p_signal.size == 0:
        raise RecordError(f"{label}: EDF file has no samples (empty signal)")
    p = np.asarray(rec.p_signal, dtype=np.float64)  # (T, n)
    gain = np.asarray(rec.adc_gain, dtype=np.float64)[None, :]
    base = np.asarray(rec.baseline, dtype=np.float64)[None, :]
    invalid = np.rint(p * gain + base) <= -32768  # EDF digital minimum: no sample (record padding)
    live = np.flatnonzero(~invalid.all(axis=1))
    end = int(live[-1]) + 1 if len(live) else 0
    p, invalid = p[:end], invalid[:end]
    scale = []
    for name, unit in zip(rec.sig_name, rec.units, strict=True):
        factor = UNIT_TO_MV.get(str(unit).strip().lower())
        if factor is None:
            raise RecordError(f"{label}: lead {name!r} has unknown units {unit!r} (expected mV or uV)")
        scale.append(factor)
    sig = (p * np.asarray(scale)[None, :]).astype(np.float32)
    sig[invalid] = np.nan
    return sig.T.copy(), [str(n) for n in rec.sig_name], float(rec.fs)


def read_file(kind: str, path: Path) -> tuple[str, np.ndarray, list[str], float]:
    """(record name, signal (n_leads, T) mV, lead names, fs) of a WFDB record or EDF file; RecordError if unusable."""
    name = path.stem
    if kind == "edf":
        sig, names, fs = read_edf(path, name)
        return name, sig, names, fs
    if kind == "wfdb":
        header = read_header(path.with_suffix(""), name)
        return name, read_signal(header, path.parent, name), list(header.sig_name), float(header.fs)
    raise RecordError(f"{name}: {path.suffix or 'no suffix'} is not a record (rule: a WFDB header .hea, its .dat/.mat, "
                      "an EDF file, a folder of them or an ecgssl store)")  # fmt: skip


def harmonise_record(name: str, source: str, sig: np.ndarray, names: list[str], fs: float,
                     contract: Contract) -> Prepared:
    """A record in mV -> store-ready windows at the contract's rate (ingest's :func:`harmonise`), with warnings."""
    out = Prepared(record=name, input=source)
    sig = np.asarray(sig, dtype=np.float32)
    empty = [n for i, n in enumerate(names) if sig.shape[1] and np.isnan(sig[i]).all()]
    if empty:  # a lead without any sample: treated as missing (ingest refuses such records)
        keep = [i for i, n in enumerate(names) if n not in empty]
        sig, names = sig[keep], [names[i] for i in keep]
        out.warnings.append(f"lead(s) {', '.join(empty)} without any sample treated as missing")
    try:
        h = harmonise(sig, names, fs, fs=contract.fs, window_s=contract.window_s, max_windows=contract.max_windows)
    except LeadError as e:
        out.error = f"{name}: {e} (lead names)"
        return out
    except ValueError as e:
        out.error = f"{name}: {e}"
        return out
    if len(h.signal) == 0:
        out.error = f"{name}: record has no samples (empty signal)"
        return out
    out.signal, out.lead_present, out.valid_length = h.signal, h.lead_present, h.valid_length.astype(np.int64)
    out.warnings += record_warnings(h.lead_present, h.valid_length, h.qc, contract, fs_in=fs,
                                    n_in=sig.shape[1])  # fmt: skip
    return out


def record_warnings(present: np.ndarray, valid: np.ndarray, qc: np.ndarray | None, contract: Contract,
                    fs_in: float | None = None, n_in: int | None = None) -> list[str]:
    """Warnings of a harmonised record: missing leads, too short, resampled, samples not used, QC flags."""
    w: list[str] = []
    missing = [LEADS[i] for i in range(len(LEADS)) if not present[i]]
    if missing:
        w.append(f"leads missing: {', '.join(missing)}")
    if len(valid) == 1 and valid[0] < contract.window_samples:
        w.append(f"shorter than one window: {valid[0] / contract.fs:.3g} s of {contract.window_s:g} s, zero-padded")
        if valid[0] < contract.input_samples:
            w.append(f"shorter than the model's crop ({contract.input_samples / contract.fs:.3g} s)")
    if fs_in is not None and abs(fs_in - contract.fs) > 1e-9:
        w.append(f"resampled from {fs_in:g} Hz to {contract.fs} Hz")
    if fs_in is not None and n_in is not None:
        used = int(np.sum(valid))
        total = int(np.ceil(n_in * contract.fs / fs_in))
        if total - used > 1:
            w.append(f"{(total - used) / contract.fs:.3g} s after the last full window not used")
    if qc is not None:
        flags = int(np.bitwise_or.reduce(np.asarray(qc, dtype=np.uint8))) if len(qc) else 0
        names = [n for bit, n in QC_NAMES.items() if flags & bit]
        if names:
            w.append(f"QC: {', '.join(names)}")
    return w


def prepare_file(kind: str, path: Path, contract: Contract) -> Prepared:
    """One WFDB/EDF file -> :class:`Prepared` (the reason in ``error`` when it cannot be used)."""
    try:
        name, sig, names, fs = read_file(kind, path)
    except RecordError as e:
        return Prepared(record=path.stem, input=str(path), error=str(e).splitlines()[0])
    except Exception as e:  # noqa: BLE001 - a reader failure on one user file is that row's reason, not a crash
        return Prepared(record=path.stem, input=str(path),
                        error=f"{path.stem}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")  # fmt: skip
    return harmonise_record(name, str(path), sig, names, fs, contract)


def prepare_store(path: Path, contract: Contract) -> Iterator[Prepared]:
    """Every record of an ecgssl store, from its stored windows (one :class:`Prepared` per record)."""
    from ecgmodel.data.store import open_store

    st = open_store(path)
    if st.fs != contract.fs or st.window_samples != contract.window_samples:
        raise UserError(f"store {path} holds {st.window_samples}-sample windows at {st.fs} Hz; the model expects "
                        f"{contract.window_samples} at {contract.fs} Hz (rule: a store input has the model's rate "
                        "and window)", "ecgssl predict --input <the WFDB/EDF files themselves>")  # fmt: skip
    meta = st.meta()
    present = st.lead_present()
    keys = meta["source"].astype(str) + "/" + meta["record"].astype(str)
    rows_of: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        rows_of.setdefault(k, []).append(i)
    for k in rows_of:  # store order
        rows = np.asarray(rows_of[k])
        if contract.max_windows is not None:
            rows = rows[: contract.max_windows]
        sig = st.load_signal(rows)
        valid = meta["valid_length"].to_numpy()[rows].astype(np.int64)
        lp = present[rows[0]]
        rec = Prepared(record=str(meta["record"].iloc[rows[0]]), input=f"{path}#{k}", signal=sig, lead_present=lp,
                       valid_length=valid)  # fmt: skip
        rec.warnings = record_warnings(lp, valid, meta["qc"].to_numpy()[rows] if "qc" in meta else None, contract)
        yield rec


def prepare_inputs(paths: Sequence[str | os.PathLike], contract: Contract) -> Iterator[Prepared]:
    """Every record of ``paths`` (see :func:`expand_inputs`), harmonised for ``contract``, in input order."""
    for kind, path in expand_inputs(paths):
        if kind == "store":
            yield from prepare_store(path, contract)
        else:
            yield prepare_file(kind, path, contract)


# ------------------------------------------------------------------------------------ pyfunc tensors <-> windows
def to_model_input(records: Sequence[Prepared]) -> dict[str, np.ndarray]:
    """The pyfunc input of usable records: ``signal`` float32 (n, 12, T) mV (NaN after a record's end) and
    ``lead_present`` bool (n, 12). The model cuts exactly the windows ``records`` hold."""
    sigs = []
    for r in records:
        if not r.ok:
            raise ValueError(f"{r.record}: not usable ({r.error})")
        parts = [r.signal[i, :, : int(v)] for i, v in enumerate(r.valid_length)]
        sigs.append(np.concatenate(parts, axis=1).astype(np.float32) / np.float32(1000.0))
    T = max(s.shape[1] for s in sigs)
    out = np.full((len(sigs), len(LEADS), T), np.nan, dtype=np.float32)
    for i, s in enumerate(sigs):
        out[i, :, : s.shape[1]] = s
    return {"signal": out, "lead_present": np.stack([np.asarray(r.lead_present, bool) for r in records])}


def from_model_input(signal: np.ndarray, lead_present: np.ndarray, contract: Contract) -> list[Prepared]:
    """Pyfunc tensors -> one :class:`Prepared` per row (windows cut as ingest cuts them; see the contract)."""
    signal = np.asarray(signal, dtype=np.float32)
    lead_present = np.asarray(lead_present, dtype=bool)
    if signal.ndim == 2:
        signal = signal[None]
    if lead_present.ndim == 1:
        lead_present = lead_present[None]
    if signal.ndim != 3 or signal.shape[1] != len(LEADS):
        raise ValueError(f"signal must be float32 (n, 12, samples) in mV, leads {list(LEADS)}; got {signal.shape}")
    if lead_present.shape != signal.shape[:2]:
        raise ValueError(f"lead_present must be bool (n, 12) matching signal {signal.shape}; got {lead_present.shape}")
    out = []
    for i in range(len(signal)):
        x = signal[i]
        live = np.flatnonzero(~np.isnan(x).all(axis=0))
        end = int(live[-1]) + 1 if len(live) else 0
        rec = Prepared(record=str(i), input=f"row {i}")
        if end == 0:
            rec.error = f"row {i}: no samples (every sample is NaN)"
            out.append(rec)
            continue
        x = np.where(np.isnan(x[:, :end]), 0.0, x[:, :end]) * lead_present[i][:, None]
        wins, _, valid = cut_windows(x, contract.fs, contract.window_s, contract.max_windows)
        rec.signal, rec.lead_present, rec.valid_length = to_int16_uv(wins), lead_present[i], valid.astype(np.int64)
        rec.warnings = record_warnings(lead_present[i], rec.valid_length, None, contract)
        out.append(rec)
    return out
