"""Lead canonicalisation, resampling, windowing, QC flags and int16 conversion (ecgmodel.data.signal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgmodel.data import signal as S

DATA = Path(__file__).resolve().parents[1] / "data" / "physionet"


def real_record(rel: str) -> wfdb.Record:
    return wfdb.rdrecord(str(DATA / rel))


def test_permuted_columns_give_identical_canonical_output():
    rec = real_record("ptb-xl/1.0.3/records500/00000/00001_hr")  # names in upper case: AVR, AVL, AVF
    sig, names = rec.p_signal.T, rec.sig_name
    ref, present = S.canonicalize_leads(sig, names)
    assert present.all() and ref.dtype == np.float32 and ref.shape == (12, rec.sig_len)
    np.testing.assert_array_equal(ref[3], sig[names.index("AVR")].astype(np.float32))
    perm = np.random.default_rng(0).permutation(12)
    for case in (str.lower, str.upper, lambda x: x):
        out, pres = S.canonicalize_leads(sig[perm], [case(names[i]) for i in perm])
        np.testing.assert_array_equal(out, ref)
        assert pres.all()


def test_missing_leads_are_zero_and_flagged_never_shifted():
    rec = real_record("ludb/1.0.1/data/1")
    sig, names = rec.p_signal.T, rec.sig_name
    keep = [i for i, n in enumerate(names) if n not in ("iii", "avl", "v4")]
    out, present = S.canonicalize_leads(sig[keep], [names[i] for i in keep])
    full, _ = S.canonicalize_leads(sig, names)
    assert list(np.nonzero(~present)[0]) == [2, 4, 9]
    assert not out[[2, 4, 9]].any()
    np.testing.assert_array_equal(out[present], full[present])


def test_extra_leads_dropped_and_bad_names_rejected():
    rec = real_record("challenge-2020/1.0.2/training/ptb/g1/S0001")
    sig = rec.p_signal.T
    # PTB records carry the Frank leads vx, vy, vz after the 12 standard ones: 15 leads in all
    frank = sig[:3] * 0.5
    out, present = S.canonicalize_leads(np.vstack([sig, frank]), rec.sig_name + ["vx", "vy", "vz"])
    ref, _ = S.canonicalize_leads(sig, rec.sig_name)
    np.testing.assert_array_equal(out, ref)
    assert present.all()
    with pytest.raises(S.LeadError, match="duplicate lead name 'avr'"):
        S.canonicalize_leads(sig[:2], ["aVR", "avr"])
    with pytest.raises(S.LeadError, match="unknown lead name"):
        S.canonicalize_leads(sig[:2], ["I", "MLII"])
    with pytest.raises(S.LeadError, match="none of the 12"):
        S.canonicalize_leads(sig[:2], ["vx", "vy"])
    with pytest.raises(S.LeadError, match="does not match"):
        S.canonicalize_leads(sig.T, rec.sig_name)


@pytest.mark.parametrize("fs_in", [1000, 257, 250, 500])
def test_resample_keeps_frequency_and_length(fs_in):
    seconds, f0 = 10, 7.0
    t = np.arange(int(seconds * fs_in)) / fs_in
    x = np.sin(2 * np.pi * f0 * t)[None].repeat(2, axis=0).astype(np.float32)
    y = S.resample(x, fs_in, 500)
    assert y.shape == (2, 5000) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y[0]))
    assert np.fft.rfftfreq(5000, 1 / 500)[spectrum.argmax()] == pytest.approx(f0, abs=0.1)
    mid = slice(500, 4500)  # away from the filter's edge effects
    np.testing.assert_allclose(y[0, mid], np.sin(2 * np.pi * f0 * np.arange(5000) / 500)[mid], atol=0.02)


def test_resample_real_record_1000_to_500():
    rec = real_record("challenge-2020/1.0.2/training/ptb/g1/S0001")
    y = S.resample(rec.p_signal.T, rec.fs, 500)
    assert y.shape == (12, rec.sig_len // 2)


def test_windows_consecutive_capped_and_padded():
    x = np.arange(12 * 2600, dtype=np.float32).reshape(12, 2600)
    w, starts, valid = S.windows(x, fs=100, window_s=10)  # 1000-sample windows, 600 left over
    assert w.shape == (2, 12, 1000) and list(starts) == [0, 1000] and list(valid) == [1000, 1000]
    np.testing.assert_array_equal(w[1], x[:, 1000:2000])
    w, starts, _ = S.windows(x, fs=100, window_s=5, max_windows=3)
    assert w.shape == (3, 12, 500) and list(starts) == [0, 500, 1000]
    short = x[:, :300]
    w, starts, valid = S.windows(short, fs=100, window_s=10)  # shorter than a window: kept once, zero-padded
    assert w.shape == (1, 12, 1000) and list(valid) == [300]
    np.testing.assert_array_equal(w[0, :, :300], short)
    assert not w[0, :, 300:].any()
    with pytest.raises(ValueError, match="max_windows"):
        S.windows(x, fs=100, window_s=10, max_windows=0)


def test_qc_flags_and_int16():
    rec = real_record("challenge-2020/1.0.2/training/cpsc_2018/g1/A0001")
    x, present = S.canonicalize_leads(rec.p_signal.T[:, :5000], rec.sig_name)
    assert S.qc_flags(x, present) == 0
    flat = x.copy()
    flat[4] = 0.0
    assert S.qc_flags(flat, present) == S.QC_FLAT
    assert S.qc_flags(flat, present & (np.arange(12) != 4)) == 0  # absent lead: not judged
    nan = x.copy()
    nan[1, 100:120] = np.nan
    assert S.qc_flags(nan, present) & S.QC_NAN
    clipped = x.copy()
    top = np.quantile(clipped[7], 0.9)
    clipped[7] = np.minimum(clipped[7], top)
    assert S.qc_flags(clipped, present) & S.QC_CLIP
    huge = x.copy()
    huge[0, 10] = 12.0
    assert S.qc_flags(huge, present) & S.QC_IMPLAUSIBLE
    saturated = x.copy()
    saturated[0, 10] = 40.0
    assert S.qc_flags(saturated, present) & S.QC_CLIP
    q = S.to_int16_uv(np.array([0.0012, -0.0015, 40.0, -40.0, np.nan]))
    assert q.dtype == np.int16 and list(q) == [1, -2, 32767, -32768, 0]


def test_harmonise_real_record_end_to_end():
    rec = real_record("challenge-2020/1.0.2/training/ptb/g1/S0001")  # 1000 Hz, 38.4 s
    h = S.harmonise(rec.p_signal.T, rec.sig_name, rec.fs, fs=500, window_s=10, max_windows=None)
    assert h.signal.shape == (3, 12, 5000) and h.signal.dtype == np.int16
    assert list(h.window_start) == [0, 5000, 10000] and h.lead_present.all()
    ref = S.resample(rec.p_signal.T.astype(np.float32), 1000, 500)[:, 5000:10000] * 1000
    assert np.abs(h.signal[1] - ref).max() <= 0.5 + 1e-3  # int16 rounding only
    sig = rec.p_signal.T.copy()
    sig[0, 12000:12010] = np.nan  # inside the second 500 Hz window (source samples 10000-20000)
    h = S.harmonise(sig, rec.sig_name, rec.fs, max_windows=2)
    assert [bool(q & S.QC_NAN) for q in h.qc] == [False, True]
