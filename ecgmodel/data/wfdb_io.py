"""Read WFDB records (header + ``.mat``/``.dat`` signal) in physical units, with the quirks of the real files.

Quirks handled (see ``../shared/README.md``), none of which modifies a source file:

* Georgia 2020 / Challenge-2021 headers name the record ``E00009.mat`` on their first line (``wfdb.rdheader``
  raises ``HeaderSyntaxError``): the name is corrected in memory before parsing.
* ``#Dx:`` and ``# Dx:``; empty Dx (unlabelled); repeated codes (deduplicated, order kept).
* Units ``mV``/``mv``/``uV``; gains 1000/mV, 4880/mV; LUDB's per-lead gains with a non-zero baseline:
  physical = (digital - baseline) / gain, scaled to mV. Challenge-2020 PTB's 2000000/mV is a per-volt gain
  under a mV label (2000/mV, PTB's own gain): see ``GAIN_PER_VOLT_THRESHOLD``.
* Lead names in any case (matched later by :func:`ecgmodel.data.signal.canonicalize_leads`).
* PTB-XL labels/patient/fold from ``ptbxl_database.csv``; LUDB diagnoses from ``ludb.csv``.

Every problem raises :class:`RecordError` whose message starts with ``<source>/<record>:`` and names the rule.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb
from wfdb.io.header import HeaderSyntaxError, parse_header_content, rx_record, rx_signal

# mV per unit of each accepted physical unit (case-insensitive; 'mv' occurs in Challenge-2021 headers)
UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "nv": 1e-6}
WFDB_INVALID_16 = -32768  # the "no sample" value of WFDB format 16
# Challenge-2020 PTB headers declare 2000000/mV: taken literally their ECGs peak at ~1 uV. The PTB Diagnostic
# database records 2000 adu/mV, so the gain was written per VOLT under a 'mV' label. No real ECG front end
# resolves 1e-5 uV, so a gain at or above this many adu per mV is read as adu per V.
GAIN_PER_VOLT_THRESHOLD = 100_000
SNOMED_CODE = re.compile(r"^\d+$")
# A header's sampling rate may differ this much (relative) from the catalog's rate for its database.
FS_TOLERANCE = 0.005


class RecordError(ValueError):
    """A record cannot be used. The message is ``"<source>/<record>: <what is wrong> (<rule>)"``."""


@dataclass
class Header:
    """The fields of a single-segment WFDB header that ingest uses."""

    record_name: str
    n_sig: int
    fs: float
    sig_len: int
    file_name: list[str]
    fmt: list[str]
    samps_per_frame: list[int]
    skew: list[int]
    byte_offset: list[int]
    adc_gain: list[float]
    baseline: list[int]
    units: list[str]
    checksum: list[int | None]
    sig_name: list[str]
    comments: list[str] = field(default_factory=list)


@dataclass
class EcgRecord:
    """A record in physical units with its metadata, ready for :func:`ecgmodel.data.signal.harmonise`."""

    name: str  # record name without folders (the store's `record`)
    signal: np.ndarray  # float32 (n_leads, T) millivolts; NaN where the file has no sample
    sig_name: list[str]
    fs: float
    dx: list[str] = field(default_factory=list)
    age: float | None = None
    sex: str = ""  # "M", "F" or ""
    patient_id: str = ""
    fold: int = -1
    raw_sha256: str = ""  # sha256 over the header and signal files as read (provenance of the stored rows)


def _int(text: str, default: int | None = None) -> int | None:
    return int(text) if text not in ("", None) else default


def parse_header(text: str, record: str, label: str | None = None) -> Header:
    """Parse WFDB header ``text`` of ``record`` (its file stem); ``label`` names it in errors.

    Syntax comes from wfdb's own header grammar (``wfdb.io.header.rx_record``/``rx_signal``). The typecasting is
    done here because wfdb's ``_parse_signal_lines`` looks every field up in a pandas table, which costs ~6 ms
    per header (more than reading the whole signal) and would halve ingest throughput.
    """
    label = label or record
    lines, comments = parse_header_content(text)
    if not lines:
        raise RecordError(f"{label}: header has no record line (empty header)")
    first = lines[0].split()
    # Quirk: Georgia / Challenge-2021 headers write 'E00009.mat' where the record name belongs.
    if first and first[0] != record and Path(first[0]).stem == record:
        lines[0] = lines[0].replace(first[0], record, 1)
    m = rx_record.match(lines[0])
    if m is None or not m.group("n_sig"):
        raise RecordError(f"{label}: invalid record line {lines[0]!r} (WFDB header syntax)")
    if m.group("record_name") != record:
        raise RecordError(f"{label}: header names record {m.group('record_name')!r}, file is {record!r}")
    if m.group("n_seg"):
        raise RecordError(f"{label}: multi-segment records are not supported (single-segment ECGs only)")
    n_sig = int(m.group("n_sig"))
    fs = float(m.group("fs")) if m.group("fs") else 250.0  # WFDB default rate
    sig_len = _int(m.group("sig_len"))
    if n_sig < 1:
        raise RecordError(f"{label}: header declares no signals")
    if fs <= 0:
        raise RecordError(f"{label}: sampling rate {fs} Hz is not positive")
    if not sig_len:
        raise RecordError(f"{label}: header does not declare the number of samples (sig_len)")
    if len(lines) - 1 != n_sig:
        raise RecordError(f"{label}: header declares {n_sig} signals but has {len(lines) - 1} signal lines")
    cols: dict[str, list] = {k: [] for k in Header.__dataclass_fields__ if k not in
                             ("record_name", "n_sig", "fs", "sig_len", "comments")}  # fmt: skip
    for line in lines[1:]:
        s = rx_signal.match(line)
        if s is None:
            raise RecordError(f"{label}: invalid signal line {line!r} (WFDB header syntax)")
        g = s.groupdict()
        gain = float(g["adc_gain"]) if g["adc_gain"] else 200.0
        if gain == 0:
            gain = 200.0  # WFDB: a gain of 0 means the default, 200 adu per physical unit
        adc_zero = _int(g["adc_zero"], 0)
        cols["file_name"].append(g["file_name"])
        cols["fmt"].append(g["fmt"])
        cols["samps_per_frame"].append(_int(g["samps_per_frame"], 1))
        cols["skew"].append(_int(g["skew"], 0))
        cols["byte_offset"].append(_int(g["byte_offset"], 0))
        cols["adc_gain"].append(gain)
        cols["baseline"].append(_int(g["baseline"], adc_zero))
        cols["units"].append(g["units"] or "mV")
        cols["checksum"].append(_int(g["checksum"]))
        cols["sig_name"].append((g["sig_name"] or "").strip())
    comments = [c.strip(" \t#") for c in comments]
    return Header(record_name=record, n_sig=n_sig, fs=fs, sig_len=sig_len, comments=comments, **cols)


def read_header(path: str | os.PathLike, label: str | None = None) -> Header:
    """Read ``<path>.hea`` (``path`` without extension)."""
    path = Path(path)
    hea = path.with_name(path.name + ".hea")
    try:
        text = hea.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise RecordError(f"{label or path.name}: header file {hea} is missing") from None
    return parse_header(text, path.name, label)


def _physical(digital: np.ndarray, header: Header, label: str) -> np.ndarray:
    """(T, n) int16 -> (n, T) float32 mV, with WFDB invalid samples as NaN."""
    scale = []
    for i, unit in enumerate(header.units):
        factor = UNIT_TO_MV.get(unit.lower())
        if factor is None:
            raise RecordError(f"{label}: lead {header.sig_name[i]!r} has unknown units {unit!r} (expected mV or uV)")
        gain = header.adc_gain[i]
        if factor == 1.0 and gain >= GAIN_PER_VOLT_THRESHOLD:
            gain /= 1000.0  # gain written per V under a mV label (Challenge-2020 PTB), see above
        scale.append(factor / gain)
    base = np.asarray(header.baseline, np.float32)[:, None]
    d = digital.T
    out = (d.astype(np.float32) - base) * np.asarray(scale, np.float32)[:, None]
    invalid = d == WFDB_INVALID_16
    if invalid.any():
        out[invalid] = np.nan
    return out


def _fast_path(header: Header) -> bool:
    """One signal file holding all leads as interleaved little-endian int16 (WFDB format 16)."""
    return (
        len(set(header.file_name)) == 1
        and set(header.fmt) == {"16"}
        and set(header.samps_per_frame) == {1}
        and set(header.skew) == {0}
        and len(set(header.byte_offset)) == 1
    )


def read_signal(header: Header, directory: str | os.PathLike, label: str | None = None) -> np.ndarray:
    """Signal of ``header`` (files in ``directory``) as float32 (n_leads, T) millivolts.

    Format-16 files (every record of the supported sources) are read with numpy after checking the file's size
    (and, for MATLAB v4 ``.mat`` files, their matrix header) against the WFDB header; any other format goes
    through ``wfdb.rdrecord``.
    """
    label = label or header.record_name
    directory = Path(directory)
    if not _fast_path(header):
        return _read_with_wfdb(header, directory, label)
    path = directory / header.file_name[0]
    n, length, offset = header.n_sig, header.sig_len, header.byte_offset[0]
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{label}: signal file {path.name} is missing") from None
    if path.suffix.lower() == ".mat":
        # MATLAB v4 header: type, mrows, ncols, imagf, namelen (int32 LE); 'val' is (n_sig x sig_len)
        if len(raw) < 20:
            raise RecordError(f"{label}: {path.name} is too short for a MATLAB v4 header (truncated signal)")
        mtype, mrows, ncols, _imagf, namelen = struct.unpack("<5i", raw[:20])
        if mtype != 30:  # MATLAB v4 type code 30: int16 little-endian numeric matrix (WFDB format 16)
            raise RecordError(f"{label}: {path.name} MATLAB matrix type {mtype} is not int16 (format 16)")
        if mrows != n:
            raise RecordError(f"{label}: header declares {n} leads, {path.name} holds {mrows} (header/signal mismatch)")
        if ncols != length:
            raise RecordError(
                f"{label}: header declares {length} samples, {path.name} declares {ncols} "
                "(header/signal length mismatch)"
            )
        if offset != 20 + namelen:
            raise RecordError(f"{label}: header byte offset {offset} != MATLAB data start {20 + namelen}")
    available = (len(raw) - offset) // (2 * n)
    if available < length:
        raise RecordError(
            f"{label}: header declares {length} samples, signal file has {available} (truncated signal)"
        )
    if available > length and path.suffix.lower() != ".mat":
        raise RecordError(
            f"{label}: header declares {length} samples, signal file has {available} "
            "(header/signal length mismatch)"
        )
    digital = np.frombuffer(raw, dtype="<i2", count=n * length, offset=offset).reshape(length, n)
    for i, expected in enumerate(header.checksum):
        # WFDB checksum: 16-bit sum of the lead's samples; catches corrupted bytes of an otherwise valid file
        if expected is not None and (int(digital[:, i].astype(np.int64).sum()) - expected) % 65536:
            raise RecordError(
                f"{label}: lead {header.sig_name[i]!r} checksum does not match the header (corrupted signal)"
            )
    return _physical(digital, header, label)


def _read_with_wfdb(header: Header, directory: Path, label: str) -> np.ndarray:
    """Other formats: wfdb.rdrecord on a corrected copy of the header beside links to the signal files."""
    with tempfile.TemporaryDirectory(prefix="ecgssl-hea-") as tmp:
        tmp = Path(tmp)
        text = (directory / f"{header.record_name}.hea").read_text(encoding="ascii", errors="replace")
        lines = text.splitlines()
        first = lines[0].split()
        lines[0] = " ".join([header.record_name, *first[1:]])
        (tmp / f"{header.record_name}.hea").write_text("\n".join(lines) + "\n")
        for name in set(header.file_name):
            os.symlink((directory / name).resolve(), tmp / name)
        try:
            rec = wfdb.rdrecord(str(tmp / header.record_name), physical=False, return_res=16)
        except Exception as e:
            raise RecordError(f"{label}: wfdb cannot read the signal ({type(e).__name__}: {e})") from e
    return _physical(rec.d_signal, header, label)


# ------------------------------------------------------------------------------------------------ metadata
def _comment_fields(comments: list[str]) -> dict[str, str]:
    """``["Age: 74", "Dx: 1,2", "<sex>: F"]`` -> ``{"age": "74", "dx": "1,2", "sex": "F"}`` (first wins)."""
    out: dict[str, str] = {}
    for c in comments:
        if ":" in c:
            key, value = c.split(":", 1)
            out.setdefault(key.strip().strip("<>").lower(), value.strip())
    return out


def parse_age(text: object) -> float | None:
    try:
        age = float(str(text).strip().lstrip(">"))
    except ValueError:
        return None
    if np.isnan(age) or age < 0:
        return None
    return age


def parse_sex(text: object) -> str:
    t = str(text).strip().lower()
    if t in ("m", "male", "0"):
        return "M"
    if t in ("f", "female", "1"):
        return "F"
    return ""


def parse_dx(text: str, label: str) -> list[str]:
    """Comma-separated SNOMED CT codes -> list, deduplicated in order; non-numeric codes raise."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    for c in codes:
        if not SNOMED_CODE.match(c):
            raise RecordError(f"{label}: Dx code {c!r} is not a SNOMED CT number (non-numeric Dx)")
    return list(dict.fromkeys(codes))


def _id_text(text: str, column: str, problems: list[str]) -> str:
    """A numeric identifier cell ('15709.0' -> '15709'); '' when empty; a problem noted when not a number."""
    if not text:
        return ""
    try:
        value = float(text)
        if not np.isfinite(value) or value != int(value):
            raise ValueError
        return str(int(value))
    except (ValueError, OverflowError):
        problems.append(f"{column} {text!r} is not an integer")
        return ""


def _fold(text: str, problems: list[str]) -> int:
    if not text:
        return -1
    try:
        value = float(text)
        if not np.isfinite(value) or value != int(value) or not -128 <= value <= 127:
            raise ValueError
        return int(value)
    except (ValueError, OverflowError):
        problems.append(f"strat_fold {text!r} is not a fold number")
        return -1


def raw_sha256(header: Header, directory: str | os.PathLike) -> str:
    """sha256 over the record's header and signal files (names and bytes), in a fixed order."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in [f"{header.record_name}.hea", *sorted(set(header.file_name))]:
        digest.update(name.encode() + b"\0")
        with contextlib.suppress(FileNotFoundError):
            with open(directory / name, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


class MetadataTable:
    """Per-record metadata of a source root: the CSV tables of PTB-XL and LUDB (loaded once)."""

    def __init__(self, root: str | os.PathLike, layout: str, slug: str):
        self.root, self.layout, self.slug = Path(root), layout, slug
        self._rows: dict[str, dict] = {}
        if layout == "ptbxl":
            self._load_ptbxl()
        elif layout == "ludb":
            self._load_ludb()

    def _csv(self, name: str) -> pd.DataFrame:
        path = self.root / name
        if not path.exists():
            raise FileNotFoundError(f"{self.slug}: metadata file {path} is missing (needed for labels)")
        return pd.read_csv(path, dtype=str, keep_default_na=False)

    def _load_ptbxl(self) -> None:
        df = self._csv("ptbxl_database.csv")
        for row in df.itertuples(index=False):
            # A value that cannot be parsed belongs to its record (quarantined when that record is read),
            # never to the whole table: the other records are unaffected.
            problems: list[str] = []
            try:
                codes = list(ast.literal_eval(row.scp_codes or "{}"))
            except (ValueError, SyntaxError, TypeError):
                codes = None  # reported when the record is read
            age = parse_age(row.age)
            info = {
                "dx": codes,
                # PTB-XL writes ages over 89 as 300 (anonymisation): store them as 90
                "age": None if age is None else min(age, 90.0),
                "sex": parse_sex(row.sex),
                "patient_id": _id_text(row.patient_id, "patient_id", problems),
                "fold": _fold(row.strat_fold, problems),
                "problems": problems,
            }
            for col in ("filename_lr", "filename_hr"):
                if getattr(row, col):
                    self._rows[getattr(row, col)] = info

    def _load_ludb(self) -> None:
        from ecgmodel.data.sources import get_source

        columns = get_source("ludb").labels.columns
        df = self._csv("ludb.csv")
        for row in df.to_dict("records"):
            statements: list[str] = []
            for col in columns:
                for line in str(row.get(col, "")).splitlines():
                    if line.strip():
                        statements.append(line.strip().rstrip(".").replace(",", ";"))
            self._rows[f"data/{row['ID'].strip()}"] = {
                "dx": list(dict.fromkeys(statements)),
                "age": parse_age(row.get("Age", "")),
                "sex": parse_sex(row.get("Sex", "")),
                "patient_id": "",
                "fold": -1,
            }

    def lookup(self, record_path: str, label: str) -> dict:
        if self.layout == "challenge":
            return {}
        info = self._rows.get(record_path)
        table = "ptbxl_database.csv" if self.layout == "ptbxl" else "ludb.csv"
        if info is None:
            raise RecordError(f"{label}: no row for {record_path} in {table} (record without metadata)")
        if info["dx"] is None:
            raise RecordError(f"{label}: scp_codes in {table} is not a Python dict literal")
        if info.get("problems"):
            raise RecordError(f"{label}: {'; '.join(info['problems'])} in {table} (metadata row)")
        return info


def read_record(
    root: str | os.PathLike,
    record_path: str,
    slug: str,
    layout: str,
    metadata: MetadataTable | None = None,
    expected_fs: float | None = None,
    fs_tolerance: float = FS_TOLERANCE,
) -> EcgRecord:
    """Read ``root/record_path`` (header + signal + labels) of source ``slug`` with ``layout``.

    ``layout`` is the catalog's ``"challenge"``, ``"ptbxl"`` or ``"ludb"``; ``metadata`` is the source's
    :class:`MetadataTable` (loaded here when not given; pass it when reading many records). ``expected_fs``
    (the catalog's rate for the record's database) is checked against the header before the signal is read:
    a header declaring another rate (beyond ``fs_tolerance``, relative) raises :class:`RecordError`.
    """
    name = record_path.rstrip("/").rsplit("/", 1)[-1]
    label = f"{slug}/{name}"
    path = Path(root) / record_path
    try:
        header = read_header(path, label)
    except HeaderSyntaxError as e:  # defensive: wfdb's grammar helpers may raise their own type
        raise RecordError(f"{label}: {e} (WFDB header syntax)") from e
    if expected_fs is not None and abs(header.fs - expected_fs) > fs_tolerance * expected_fs:
        raise RecordError(
            f"{label}: header declares {header.fs:g} Hz, the catalog expects {expected_fs:g} Hz for this "
            "database (sampling rate check)"
        )
    sig = read_signal(header, path.parent, label)
    for i, lead in enumerate(header.sig_name):
        if np.isnan(sig[i]).all():
            raise RecordError(f"{label}: lead {lead!r} has no valid sample (NaN-only lead)")
    rec = EcgRecord(name=name, signal=sig, sig_name=header.sig_name, fs=header.fs,
                    raw_sha256=raw_sha256(header, path.parent))  # fmt: skip
    if layout == "challenge":
        fields_ = _comment_fields(header.comments)
        rec.dx = parse_dx(fields_.get("dx", ""), label)
        rec.age = parse_age(fields_.get("age", ""))
        rec.sex = parse_sex(fields_.get("sex", ""))
    else:
        if metadata is None:
            metadata = MetadataTable(root, layout, slug)
        info = metadata.lookup(record_path, label)
        rec.dx, rec.age, rec.sex = info["dx"], info["age"], info["sex"]
        rec.patient_id, rec.fold = info["patient_id"], info["fold"]
    return rec
