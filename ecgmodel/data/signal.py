"""Signal harmonisation: lead canonicalisation, resampling, windowing, QC flags, int16 microvolts.

Pure numpy/scipy, no I/O. Every function takes signals lead-first, shape ``(n_leads, n_samples)``, in
millivolts (physical units), which is how the store lays them out.

The full path from a record to store rows is :func:`harmonise`::

    sig (n_leads, T) mV, names -> canonicalize_leads -> resample -> windows -> qc_flags -> to_int16_uv
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_LEAD_INDEX = {name.lower(): i for i, name in enumerate(LEADS)}
# Leads that some databases record besides the standard 12 (PTB's Frank leads vx/vy/vz): dropped silently.
EXTRA_LEADS = frozenset({"vx", "vy", "vz", "x", "y", "z"})

# QC bit flags (the store's ``qc`` array)
QC_NAN = 1  # NaN samples were replaced by 0
QC_FLAT = 2  # a recorded lead is flat (peak-to-peak below FLAT_MV over the valid part)
QC_CLIP = 4  # a lead sits on its extreme value for a long time (ADC rail) or saturates int16
QC_IMPLAUSIBLE = 8  # |amplitude| above IMPLAUSIBLE_MV
FLAT_MV = 0.01
IMPLAUSIBLE_MV = 10.0
CLIP_FRACTION = 0.02  # share of valid samples pinned at the max (or min) that counts as clipping

# Recorded with every source in the store: bump it when harmonise() changes what it stores for a record.
HARMONISE_VERSION = "1"
# Rates outside this range are not ECG recordings (a header typo such as 0.05 Hz would ask for a 10,000x
# upsampling): harmonise() refuses them.
PLAUSIBLE_FS = (50.0, 20_000.0)

INT16_MAX = np.iinfo(np.int16).max
INT16_MIN = np.iinfo(np.int16).min


class LeadError(ValueError):
    """The lead names of a record cannot be mapped onto the 12 standard leads."""


def canonicalize_leads(sig: np.ndarray, names: list[str] | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Reorder ``sig`` (n_leads, T) by lead NAME into the canonical 12-lead order.

    Names match case-insensitively (``aVR``, ``AVR``, ``avr``). A lead that is missing becomes a row of zeros
    with ``present`` False (rows are never shifted). Extra leads (``vx``, ``vy``, ``vz``) are dropped.
    Raises :class:`LeadError` on duplicate names, names that are neither standard nor known extras, or a
    record with none of the 12 leads.

    Returns ``(sig12 float32 (12, T), present bool (12,))``.
    """
    sig = np.asarray(sig)
    if sig.ndim != 2 or sig.shape[0] != len(names):
        raise LeadError(f"signal shape {sig.shape} does not match {len(names)} lead names (expected (n_leads, T))")
    out = np.zeros((len(LEADS), sig.shape[1]), dtype=np.float32)
    present = np.zeros(len(LEADS), dtype=bool)
    unknown = []
    for row, name in enumerate(names):
        key = str(name).strip().lower()
        idx = _LEAD_INDEX.get(key)
        if idx is None:
            if key not in EXTRA_LEADS:
                unknown.append(name)
            continue
        if present[idx]:
            raise LeadError(f"duplicate lead name {name!r} (lead {LEADS[idx]} appears twice)")
        out[idx] = sig[row]
        present[idx] = True
    if unknown:
        raise LeadError(f"unknown lead name(s) {unknown} (expected {list(LEADS)} in any case, or vx/vy/vz)")
    if not present.any():
        raise LeadError(f"none of the 12 standard leads among {list(names)}")
    return out, present


def _ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    # Fraction(str(x)) keeps decimal rates (e.g. 257.0, 62.5) exact instead of using the binary float.
    ratio = Fraction(str(fs_out)) / Fraction(str(fs_in))
    ratio = ratio.limit_denominator(10_000)
    return ratio.numerator, ratio.denominator


def resample(sig: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Resample along the last axis with a polyphase filter (``scipy.signal.resample_poly``).

    The rate change is the exact rational ``fs_out / fs_in`` (e.g. 1000 -> 500 is 1/2, 257 -> 500 is 500/257),
    so the output has ``ceil(T * fs_out / fs_in)`` samples. Same rate returns the input unchanged.
    """
    if fs_in <= 0 or fs_out <= 0:
        raise ValueError(f"sampling rates must be positive, got fs_in={fs_in}, fs_out={fs_out}")
    up, down = _ratio(fs_in, fs_out)
    if up == down:
        return sig
    # imported here: scipy.signal takes 1-3 s to import, and readers of the store (which import LEADS from
    # this module) never resample
    from scipy.signal import resample_poly

    return resample_poly(sig, up, down, axis=-1).astype(sig.dtype if sig.dtype.kind == "f" else np.float32)


def windows(
    sig: np.ndarray, fs: float, window_s: float, max_windows: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``sig`` (n_leads, T) into consecutive non-overlapping windows of ``window_s`` seconds.

    A trailing remainder shorter than a window is dropped, except when the whole record is shorter than one
    window: then it is kept once, zero-padded, with its real length in ``valid_lengths``. At most
    ``max_windows`` windows are returned (the first ones) when it is set.

    Returns ``(windows (k, n_leads, W), starts int64 (k,), valid_lengths int32 (k,))``.
    """
    w = int(round(window_s * fs))
    if w <= 0:
        raise ValueError(f"window of {window_s} s at {fs} Hz has no samples")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    n_leads, total = sig.shape
    if total == 0:
        return (np.zeros((0, n_leads, w), sig.dtype), np.zeros(0, np.int64), np.zeros(0, np.int32))
    if total < w:
        out = np.zeros((1, n_leads, w), dtype=sig.dtype)
        out[0, :, :total] = sig
        return out, np.zeros(1, np.int64), np.array([total], np.int32)
    k = total // w
    if max_windows is not None:
        k = min(k, max_windows)
    out = sig[:, : k * w].reshape(n_leads, k, w).transpose(1, 0, 2).copy()
    starts = np.arange(k, dtype=np.int64) * w
    return out, starts, np.full(k, w, np.int32)


def qc_flags(window: np.ndarray, present: np.ndarray | None = None, valid_length: int | None = None) -> int:
    """QC bit flags of one window (12, W) in mV (before NaN replacement / int16 conversion).

    ``QC_NAN`` any NaN; ``QC_FLAT`` a recorded lead with peak-to-peak < ``FLAT_MV``; ``QC_CLIP`` a recorded
    lead pinned at its maximum or minimum for >= ``CLIP_FRACTION`` of the samples, or beyond the int16 uV
    range; ``QC_IMPLAUSIBLE`` any |amplitude| > ``IMPLAUSIBLE_MV``. Absent leads (``present`` False) and the
    zero padding after ``valid_length`` are ignored.
    """
    x = window[:, :valid_length] if valid_length is not None else window
    if present is not None:
        x = x[np.asarray(present, bool)]
    flags = 0
    if x.size == 0:
        return flags
    nan = np.isnan(x)
    if nan.any():
        flags |= QC_NAN
        x = np.where(nan, 0.0, x)
    hi = x.max(axis=1)
    lo = x.min(axis=1)
    ptp = hi - lo
    if (ptp < FLAT_MV).any():
        flags |= QC_FLAT
    if np.abs(x).max() > IMPLAUSIBLE_MV:
        flags |= QC_IMPLAUSIBLE
    if max(hi.max(), -lo.min()) * 1000.0 > INT16_MAX:
        flags |= QC_CLIP
    else:
        live = ptp >= FLAT_MV
        if live.any():
            xs, tol = x[live], (1e-3 * ptp[live])[:, None]
            at_hi = (xs >= hi[live][:, None] - tol).mean(axis=1)
            at_lo = (xs <= lo[live][:, None] + tol).mean(axis=1)
            if (np.maximum(at_hi, at_lo) >= CLIP_FRACTION).any():
                flags |= QC_CLIP
    return flags


def to_int16_uv(x_mv: np.ndarray) -> np.ndarray:
    """mV (float) -> int16 microvolts, rounded, saturating at the int16 range; NaN becomes 0."""
    uv = np.nan_to_num(np.asarray(x_mv, dtype=np.float64) * 1000.0, nan=0.0)
    return np.clip(np.rint(uv), INT16_MIN, INT16_MAX).astype(np.int16)


@dataclass
class Harmonised:
    """A record turned into store-ready windows (see :func:`harmonise`)."""

    signal: np.ndarray  # int16 (k, 12, W) microvolts
    lead_present: np.ndarray  # bool (12,)
    window_start: np.ndarray  # int64 (k,)
    valid_length: np.ndarray  # int32 (k,)
    qc: np.ndarray  # uint8 (k,)


def crop_for_windows(n_samples: int, fs_in: float, fs: float, window_s: float, max_windows: int | None) -> int:
    """Input samples that :func:`harmonise` needs to produce its first ``max_windows`` windows exactly.

    The kept span mapped back to the input rate, plus the polyphase filter's reach and a margin, so the
    resampled windows are the same as from the whole record (a long record is never resampled whole).
    """
    if max_windows is None:
        return n_samples
    up, down = _ratio(fs_in, fs)
    need = int(np.ceil(max_windows * round(window_s * fs) * fs_in / fs))
    reach = 10 * max(up, down) // up + 2  # resample_poly's default filter: 10 taps per side per phase
    return min(n_samples, need + reach + int(np.ceil(fs_in)))


def harmonise(
    sig: np.ndarray,
    names: list[str] | tuple[str, ...],
    fs_in: float,
    fs: float = 500,
    window_s: float = 10.0,
    max_windows: int | None = None,
) -> Harmonised:
    """Record (n_leads, T) in mV -> canonical leads -> ``fs`` Hz -> windows -> QC -> int16 uV.

    ``fs_in`` outside :data:`PLAUSIBLE_FS` raises ValueError. With ``max_windows`` only the part of the record
    those windows need is resampled (:func:`crop_for_windows`).
    """
    if not PLAUSIBLE_FS[0] <= fs_in <= PLAUSIBLE_FS[1]:
        raise ValueError(
            f"sampling rate {fs_in:g} Hz is outside the plausible ECG range {PLAUSIBLE_FS[0]:g}-{PLAUSIBLE_FS[1]:g} Hz"
        )
    sig = np.asarray(sig)
    if sig.ndim == 2:
        sig = sig[:, : crop_for_windows(sig.shape[1], fs_in, fs, window_s, max_windows)]
    sig12, present = canonicalize_leads(sig, names)
    nan = np.isnan(sig12)
    if nan.any():
        # resample_poly would smear a NaN over the filter length: resample with zeros, flag the windows
        # that overlap a NaN in the source after mapping their span back to source samples.
        sig12 = np.where(nan, 0.0, sig12).astype(np.float32)
    sig12 = resample(sig12, fs_in, fs)
    wins, starts, valid = windows(sig12, fs, window_s, max_windows)
    qc = np.array([qc_flags(w, present, v) for w, v in zip(wins, valid, strict=True)], dtype=np.uint8)
    if nan.any():
        nan_any = nan.any(axis=0)
        scale = fs_in / fs
        for i, (s, v) in enumerate(zip(starts, valid, strict=True)):
            a, b = int(np.floor(s * scale)), int(np.ceil((s + v) * scale))
            if nan_any[a:b].any():
                qc[i] |= QC_NAN
    return Harmonised(to_int16_uv(wins), present, starts, valid, qc)
