"""Property-based tests of the parsers that read what a mirror serves: WFDB headers, checksum listings, RECORDS.

Any input either parses into what it says or is refused with the module's own error (never another exception,
never a name that could escape the destination or read differently in a log).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgmodel.data.download import UnsafePathError, check_relpath, decode_listing, parse_checksums
from ecgmodel.data.sources import RecordPathError, get_source
from ecgmodel.data.wfdb_io import RecordError, parse_header

SETTINGS = settings(max_examples=150, deadline=None)
NAME_CHARS = st.characters(codec="utf-8", exclude_characters="/")
segment = st.text(alphabet=st.sampled_from("abcXYZ019_-.é"), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and not s.endswith(".part")
)
safe_path = st.lists(segment, min_size=1, max_size=4).map("/".join)
digest = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


# ------------------------------------------------------------------------------------------- path rule
@SETTINGS
@given(st.text(alphabet=NAME_CHARS | st.just("/"), max_size=40))
def test_check_relpath_accepts_only_names_that_stay_inside_and_print_as_they_are(entry):
    try:
        out = check_relpath(entry, "listing")
    except UnsafePathError as e:
        assert e.entry == entry and e.rule
        return
    assert out == entry and not entry.startswith("/") and ".." not in entry.split("/")
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in entry)
    root = Path("/srv/raw")
    assert (root / entry).resolve().is_relative_to(root)


# ------------------------------------------------------------------------------------------- SHA256SUMS.txt
@SETTINGS
@given(
    st.dictionaries(safe_path, digest, min_size=1, max_size=8),
    st.sampled_from([" ", "  ", " *"]),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_checksum_listing_round_trips(entries, sep, newline, bom):
    text = "".join(f"{d.upper() if i % 2 else d}{sep}{p}{newline}" for i, (p, d) in enumerate(entries.items()))
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    assert parse_checksums(decode_listing(data)) == entries


@SETTINGS
@given(st.text(max_size=300))
def test_checksum_listing_never_fails_with_another_error(text):
    try:
        out = parse_checksums(text)
    except ValueError:  # UnsafePathError is one
        return
    for path, d in out.items():
        assert len(d) == 64 and check_relpath(path, "x") == path


# ------------------------------------------------------------------------------------------- RECORDS
record_line = st.one_of(
    st.builds(lambda db, g, r: f"training/{db}/{g}/{r}",
              st.sampled_from(get_source("challenge-2021").record_groups), segment, segment),
    st.just(""), st.just("# comment"), st.text(max_size=20),
)  # fmt: skip


@SETTINGS
@given(st.lists(record_line, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_records_parser_keeps_selected_paths_once_in_order_or_names_the_bad_line(lines, newline):
    src = get_source("challenge-2021").select("georgia", "ptb-xl")
    text = newline.join(lines)
    try:
        out = src.record_paths(text)
    except RecordPathError as e:
        assert repr(e.args[0]) and "record path" in str(e)
        return
    assert len(out) == len(set(out))
    assert all(src.group_of(p) in {"georgia", "ptb-xl"} for p in out)
    expected = [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    assert out == list(dict.fromkeys(p for p in expected if src.group_of(p) in src.selected_groups))


# ------------------------------------------------------------------------------------------- WFDB headers
LEAD_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@SETTINGS
@given(
    n_sig=st.integers(1, 12),
    fs=st.sampled_from([100, 250, 257, 360, 500, 1000, 62.5]),
    sig_len=st.integers(1, 10**7),
    gain=st.sampled_from([200, 1000, 4880, 2000000]),
    baseline=st.integers(-5000, 5000),
    units=st.sampled_from(["mV", "mv", "uV"]),
    mat=st.booleans(),
    dx=st.lists(st.integers(10**5, 10**9).map(str), max_size=4),
)
def test_generated_headers_parse_to_what_they_declare(n_sig, fs, sig_len, gain, baseline, units, mat, dx):
    first = f"{'E00009.mat' if mat else 'E00009'} {n_sig} {fs:g} {sig_len}"
    lines = [first] + [f"E00009.mat 16+24 {gain}/{units} 16 {baseline} 7 -3 0 {LEAD_NAMES[i]}"
                       for i in range(n_sig)]  # fmt: skip
    lines.append(f"#Dx: {','.join(dx)}")
    h = parse_header("\n".join(lines) + "\n", "E00009")
    assert (h.n_sig, h.fs, h.sig_len) == (n_sig, float(fs), sig_len)
    assert h.adc_gain == [float(gain)] * n_sig and h.units == [units] * n_sig
    assert h.baseline == [baseline] * n_sig and h.sig_name == LEAD_NAMES[:n_sig]
    assert h.byte_offset == [24] * n_sig and h.comments == [f"Dx: {','.join(dx)}".strip()]


@SETTINGS
@given(st.text(max_size=400))
def test_any_header_text_parses_or_raises_a_record_error(text):
    try:
        h = parse_header(text, "R1", "src/R1")
    except RecordError as e:
        assert str(e).startswith("src/R1: ")
        return
    assert h.n_sig >= 1 and h.fs > 0 and h.sig_len > 0 and len(h.sig_name) == h.n_sig


@pytest.mark.parametrize("fs", ["0.05", "1000000"])
def test_header_rates_are_parsed_as_written(fs):
    h = parse_header(f"R1 1 {fs} 10\nR1.dat 16 200/mV 16 0 0 0 0 I\n", "R1")
    assert h.fs == float(fs)
