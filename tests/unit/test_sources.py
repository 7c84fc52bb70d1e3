"""The source catalog, checked against the real PhysioNet-shaped mirror in ../shared/physionet."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pydantic
import pytest

from ecgmodel.data.sources import (
    DEFAULT_MIRROR,
    SOURCES,
    RecordPathError,
    UnknownSourceError,
    get_source,
)

EXPECTED = {
    "challenge-2020": ("1.0.2", "challenge", "snomed-ct"),
    "challenge-2021": ("1.0.3", "challenge", "snomed-ct"),
    "ptb-xl": ("1.0.3", "ptbxl", "ptbxl-scp"),
    "ludb": ("1.0.1", "ludb", "ludb-diagnosis"),
}


def _records(mirror: Path, slug: str) -> list[str]:
    return (mirror / get_source(slug).url_path / "RECORDS").read_text().splitlines()


def test_catalog_has_the_four_pinned_sources():
    assert set(SOURCES) == set(EXPECTED)
    for slug, (version, layout, dx) in EXPECTED.items():
        src = get_source(slug)
        assert (src.slug, src.version, src.layout, src.dx_system) == (slug, version, layout, dx)
        assert src.url_path == f"{slug}/{version}/"
        assert src.base_url() == f"{DEFAULT_MIRROR}{slug}/{version}/"
        assert re.search(r"doi:10\.\d{4,}/\S+", src.citation), src.citation
        assert re.fullmatch(r"10\.13026/[0-9a-z]{4}-[0-9a-z]{4}", src.doi), src.doi  # PhysioNet project DOI
        assert src.licence in {"CC-BY-4.0", "ODC-By-1.0"} and src.licence_url.startswith("https://")
        assert src.title


def test_base_url_joins_any_mirror_spelling():
    src = get_source("ludb")
    assert src.base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/ludb/1.0.1/"
    assert src.base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/ludb/1.0.1/"


def test_unknown_slug_error_lists_known_slugs():
    with pytest.raises(UnknownSourceError) as err:
        get_source("ptbxl")
    msg = str(err.value)
    assert "'ptbxl'" in msg
    for slug in SOURCES:
        assert slug in msg


def test_sources_are_immutable():
    with pytest.raises(pydantic.ValidationError):
        get_source("ludb").version = "9.9.9"


def test_sampling_rates_per_database():
    c20 = get_source("challenge-2020")
    assert {db.name: db.fs for db in c20.databases} == {
        "cpsc_2018": 500, "cpsc_2018_extra": 500, "st_petersburg_incart": 257, "ptb": 1000, "ptb-xl": 500,
        "georgia": 500,
    }
    c21 = get_source("challenge-2021")
    assert set(c21.database_names) == set(c20.database_names) | {"chapman_shaoxing", "ningbo"}
    assert c21.expected_fs("training/st_petersburg_incart/g1/I0001") == 257
    assert get_source("ptb-xl").expected_fs("records100/00000/00001_lr") == 100
    assert get_source("ptb-xl").expected_fs("records500/00000/00001_hr") == 500


@pytest.mark.parametrize(
    "slug, path, database",
    [
        ("challenge-2020", "training/cpsc_2018/g1/A0001", "cpsc_2018"),
        ("challenge-2020", "training/cpsc_2018_extra/g1/Q0001", "cpsc_2018_extra"),
        ("challenge-2020", "training/ptb-xl/g1/HR00001", "ptb-xl"),
        ("challenge-2021", "training/ningbo/g1/JS10646", "ningbo"),
        ("ptb-xl", "records500/00000/00001_hr", "ptb-xl"),
        ("ludb", "data/1", "ludb"),
    ],
)
def test_database_of(slug, path, database):
    assert get_source(slug).database_of(path) == database


@pytest.mark.parametrize(
    "slug, path",
    [
        ("challenge-2020", "training/chapman_shaoxing/g1/JS00001"),  # a 2021-only database
        ("challenge-2020", "validation/georgia/g1/E00001"),
        ("challenge-2020", "A0001"),
        ("ptb-xl", "records250/00000/00001_hr"),
        ("ptb-xl", "00001_hr"),
        ("ludb", "other/1"),
    ],
)
def test_paths_outside_the_layout_are_named_in_the_error(slug, path):
    src = get_source(slug)
    with pytest.raises(RecordPathError, match=re.escape(repr(path))):
        src.database_of(path)
    with pytest.raises(RecordPathError, match=re.escape(repr(path))):
        src.record_paths([path])


def test_record_paths_on_the_real_records_files(physionet_mirror: Path):
    counts = {slug: len(get_source(slug).record_paths(_records(physionet_mirror, slug))) for slug in SOURCES}
    # the mirror grows: expect what its RECORDS files list (PTB-XL: the default 500 Hz group only)
    listed = {slug: [ln.strip() for ln in _records(physionet_mirror, slug) if ln.strip()] for slug in SOURCES}
    expected = {slug: len(lines) for slug, lines in listed.items()}
    expected["ptb-xl"] = sum(ln.startswith("records500/") for ln in listed["ptb-xl"])
    assert counts == expected and min(counts.values()) > 0
    c20 = get_source("challenge-2020").record_paths(_records(physionet_mirror, "challenge-2020"))
    dbs = [get_source("challenge-2020").database_of(p) for p in c20]
    # the database is the folder under training/ (training/<database>/<group>/<record>)
    by_folder = [p.split("/")[1] for p in listed["challenge-2020"]]
    assert {d: dbs.count(d) for d in set(dbs)} == {d: by_folder.count(d) for d in set(by_folder)}
    assert {"cpsc_2018", "georgia", "ptb", "ptb-xl"} <= set(dbs)


def test_ptbxl_selects_records500_by_default_and_records100_on_request(physionet_mirror: Path):
    lines = _records(physionet_mirror, "ptb-xl")
    default = get_source("ptb-xl").record_paths(lines)
    assert default[0] == "records500/00000/00001_hr"
    assert all(p.startswith("records500/") for p in default)
    listed = [ln.strip() for ln in lines if ln.strip()]
    low = get_source("ptb-xl").select("records100").record_paths(lines)
    n_low = sum(ln.startswith("records100/") for ln in listed)
    assert len(low) == n_low > 0 and all(p.endswith("_lr") for p in low)
    both = get_source("ptb-xl").select("records500", "records100").record_paths(lines)
    assert len(both) == len(listed) == len(default) + n_low
    assert get_source("ptb-xl").selected_groups == ("records500",)  # select() returns a copy
    with pytest.raises(ValueError, match="records250"):
        get_source("ptb-xl").select("records250")


def test_challenge_selection_by_database(physionet_mirror: Path):
    lines = _records(physionet_mirror, "challenge-2021")
    only = get_source("challenge-2021").select("ningbo").record_paths(lines)
    assert len(only) == 20 and all("/ningbo/" in p for p in only)


def test_record_paths_skips_blanks_comments_and_duplicates():
    text = "# header\n\ndata/2\ndata/1\n  data/2  \ndata/10/\n"
    assert get_source("ludb").record_paths(text) == ["data/2", "data/1", "data/10"]
    assert get_source("ludb").record_name("data/10") == "10"
    assert get_source("challenge-2020").record_name("training/ptb/g1/S0001") == "S0001"


def test_expected_fs_matches_every_header_in_the_mirror(physionet_mirror: Path):
    """The catalog's rates are the ones the real headers declare (record line: name nsig fs ...)."""
    checked = 0
    n_listed = 0
    for slug, src in SOURCES.items():
        src = src.select(*src.record_groups)
        n_listed += sum(1 for ln in _records(physionet_mirror, slug) if ln.strip())
        for path in src.record_paths(_records(physionet_mirror, slug)):
            header = (physionet_mirror / src.url_path / f"{path}.hea").read_text()
            first = next(ln for ln in header.splitlines() if ln.strip() and not ln.startswith("#"))
            fs = float(first.split()[2].split("/")[0])
            assert fs == src.expected_fs(path), (slug, path, first)
            checked += 1
    assert checked == n_listed > 0  # every listed record of every source


def test_label_locations_exist_in_the_mirror(physionet_mirror: Path):
    for slug in ("challenge-2020", "challenge-2021"):
        src = get_source(slug)
        key = src.labels.header_key
        assert src.labels.kind == "header-comment" and key == "Dx"
        pattern = re.compile(rf"^#\s*{key}:")
        for path in src.record_paths(_records(physionet_mirror, slug)):
            header = (physionet_mirror / src.url_path / f"{path}.hea").read_text()
            assert any(pattern.match(ln) for ln in header.splitlines()), path
    for slug in ("ptb-xl", "ludb"):
        src = get_source(slug)
        assert src.labels.kind == "csv" and src.labels.file in src.metadata_files
        with (physionet_mirror / src.url_path / src.labels.file).open(newline="") as f:
            header = next(csv.reader(f))
        assert src.labels.id_column in header
        assert set(src.labels.columns) <= set(header)


def test_metadata_files_are_listed_in_the_mirror_checksums(physionet_mirror: Path):
    for src in SOURCES.values():
        listed = {
            line.split(" ", 1)[1]
            for line in (physionet_mirror / src.url_path / "SHA256SUMS.txt").read_text().splitlines()
        }
        assert set(src.metadata_files) <= listed, src.slug
