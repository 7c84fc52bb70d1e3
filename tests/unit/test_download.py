"""The verified downloader against a local HTTP server (Range, faults) and local-folder mirrors.

Every test works on a small copy of real LUDB records from ../shared/physionet (3 records, 43 files).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers_http import copy_mirror_subset, serve_directory, write_listing

from ecgmodel.data.download import (
    LOCK_NAME,
    MANIFEST_NAME,
    SourceUnavailableError,
    UnsafePathError,
    check_relpath,
    download_source,
    header_data_files,
    parse_checksums,
    parse_retry_after,
)
from ecgmodel.data.sources import UnknownSourceError, get_source

LUDB = get_source("ludb")
SUB = "ludb/1.0.1"
RECS = ["data/1", "data/2", "data/3"]
FILES_PER_RECORD = 14  # .hea .dat + 12 annotation files
FAST = {"progress": False, "backoff": 0.0}


@pytest.fixture
def mirror(tmp_path: Path, physionet_mirror: Path) -> Path:
    """A private PhysioNet-shaped mirror with three LUDB records and ludb.csv (tests may damage it)."""
    return copy_mirror_subset(physionet_mirror, tmp_path / "mirror", SUB, RECS, extra_files=("ludb.csv",))


def _sums(mirror: Path) -> dict[str, str]:
    return parse_checksums((mirror / SUB / "SHA256SUMS.txt").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _all_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------ path and listing rules
@pytest.mark.parametrize(
    "entry, rule",
    [
        ("../evil", "'..'"),
        ("data/../../evil", "'..'"),
        ("/etc/passwd", "absolute"),
        ("data\\1.hea", "backslash"),
        ("C:/Windows/x", "drive letter"),
        ("c:evil", "drive letter"),
        ("data/1\x00.hea", "NUL"),
        ("data//1.hea", "empty"),
        ("./data/1.hea", "'.'"),
        ("", "empty"),
        (MANIFEST_NAME, "reserved"),
        ("data/1.hea.part", "reserved"),
        ("data/1\x85.hea", "U+0085"),  # C1 control (NEL)
        ("data/1\x9b31m.hea", "U+009B"),  # C1 control sequence introducer
        ("data/\u202egnp.hea", "U+202E"),  # right-to-left override: reads as 'aeh.png'
        ("data/1\u2066.hea", "U+2066"),  # bidi isolate
        ("data/1\u200b.hea", "U+200B"),  # zero-width space
        ("data/1\u2028.hea", "U+2028"),  # line separator
    ],
)
def test_unsafe_names_are_refused_with_the_rule(entry, rule):
    with pytest.raises(UnsafePathError) as err:
        check_relpath(entry, "http://mirror/ludb/1.0.1/RECORDS")
    assert rule in str(err.value)
    assert repr(entry) in str(err.value) and "RECORDS" in str(err.value)


@pytest.mark.parametrize("entry", ["data/1.hea", "records500/00000/00001_hr.dat", "training/ptb-xl/g1/HR00001.mat",
                                   "a..b/c.d", "RECORDS"])
def test_ordinary_names_pass(entry):
    assert check_relpath(entry, "SHA256SUMS.txt") == entry


def test_parse_checksums_formats_and_errors():
    h = "a" * 64
    assert parse_checksums(f"{h} data/1.hea\n{h.upper()}  data/1.dat\n{h} *data/1.i\n\n") == {
        "data/1.hea": h, "data/1.dat": h, "data/1.i": h,
    }
    with pytest.raises(ValueError, match="line 2"):
        parse_checksums(f"{h} data/1.hea\nnot-a-sum data/1.dat\n")
    with pytest.raises(UnsafePathError, match="evil"):
        parse_checksums(f"{h} ../evil\n")


def test_header_data_files_on_real_headers(physionet_mirror: Path):
    ludb = (physionet_mirror / SUB / "data/1.hea").read_text()
    assert header_data_files(ludb) == ["1.dat"]
    georgia = next((physionet_mirror / "challenge-2020/1.0.2/training/georgia").rglob("*.hea")).read_text()
    assert header_data_files(georgia) == [georgia.split()[0].split(".")[0] + ".mat"]
    assert header_data_files("rec 2 500\n~ 16\n~ 16\n") == []


# ------------------------------------------------------------------------------------ downloads
def test_full_download_over_http_verifies_every_file(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    with serve_directory(mirror) as server:
        result = download_source(LUDB, server.url, dest, workers=3, **FAST)
    sums = _sums(mirror)
    assert result.root == dest / "ludb" / "1.0.1"
    assert result.records == RECS and result.failures == []
    assert result.metadata_files == ["ludb.csv"]
    assert result.files_downloaded == 3 * FILES_PER_RECORD + 1 and result.files_skipped == 0
    got = _all_files(result.root)
    wanted = {p for p in sums if p != "RECORDS"}
    assert wanted <= got
    for rel in wanted:
        assert _sha(result.root / rel) == sums[rel], rel
    assert result.bytes_downloaded == sum((result.root / p).stat().st_size for p in wanted)
    assert not [p for p in got if p.endswith(".part")]
    assert result.records_file.read_text().split() == RECS
    assert (result.root / "RECORDS").read_bytes() == (mirror / SUB / "RECORDS").read_bytes()
    manifest = json.loads((result.root / MANIFEST_NAME).read_text())["files"]
    assert set(manifest) == wanted and all(manifest[p]["sha256"] == sums[p] for p in wanted)


def test_second_run_skips_everything_without_fetching(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    with serve_directory(mirror) as server:
        download_source(LUDB, server.url, dest, **FAST)
        server.requests.clear()
        again = download_source(LUDB, server.url, dest, **FAST)
        fetched = {path for _, path, _, _ in server.requests}
    assert again.records == RECS and again.failures == []
    assert again.files_downloaded == 0 and again.files_skipped == 3 * FILES_PER_RECORD + 1
    assert again.bytes_downloaded == 0
    assert fetched == {f"{SUB}/RECORDS", f"{SUB}/SHA256SUMS.txt"}


def test_damaged_local_file_is_fetched_again(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    download_source(LUDB, mirror, dest, **FAST)
    victim = dest / SUB / "data/2.dat"
    good = victim.read_bytes()
    victim.write_bytes(bytes(len(good)))  # same size, new mtime: the manifest cache must not trust it
    again = download_source(LUDB, mirror, dest, **FAST)
    assert victim.read_bytes() == good
    assert again.files_downloaded == 1 and again.records == RECS


def test_resume_continues_a_truncated_part_with_a_range_request(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    rel = "data/2.dat"
    full = (mirror / SUB / rel).read_bytes()
    half = len(full) // 2
    part = dest / SUB / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:half])
    with serve_directory(mirror) as server:
        result = download_source(LUDB, server.url, dest, records=["data/2"], **FAST)
        gets = [r for r in server.requests if r[1] == f"{SUB}/{rel}"]
    assert gets == [("GET", f"{SUB}/{rel}", f"bytes={half}-", 206)]
    assert (dest / SUB / rel).read_bytes() == full and not part.exists()
    assert result.records == ["data/2"]
    other = sum((mirror / SUB / p).stat().st_size for p in _sums(mirror) if p.startswith("data/2.") and p != rel)
    csv_size = (mirror / SUB / "ludb.csv").stat().st_size
    assert result.bytes_downloaded == len(full) - half + other + csv_size


def test_server_ignoring_range_restarts_cleanly(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    rel = "data/1.dat"
    full = (mirror / SUB / rel).read_bytes()
    part = dest / SUB / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[: len(full) // 3])
    with serve_directory(mirror, ignore_range=True) as server:
        result = download_source(LUDB, server.url, dest, records=["data/1"], **FAST)
        statuses = [r[3] for r in server.requests if r[1] == f"{SUB}/{rel}"]
    assert statuses == [200]
    assert (dest / SUB / rel).read_bytes() == full
    assert result.records == ["data/1"] and result.failures == []


def test_stale_part_with_wrong_bytes_is_discarded(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    rel = "data/3.dat"
    full = (mirror / SUB / rel).read_bytes()
    part = dest / SUB / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * (len(full) // 2))
    with serve_directory(mirror) as server:
        result = download_source(LUDB, server.url, dest, records=["data/3"], **FAST)
        ranges = [r[2] for r in server.requests if r[1] == f"{SUB}/{rel}"]
    assert ranges == [f"bytes={len(full) // 2}-", None]  # resumed, failed the checksum, restarted from zero
    assert (dest / SUB / rel).read_bytes() == full and result.records == ["data/3"]


def test_body_cut_off_mid_transfer_resumes(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    rel = "data/1.dat"
    full = (mirror / SUB / rel).read_bytes()
    cut = 100_000  # the connection drops after this many bytes of the 120 kB file
    with serve_directory(mirror, truncate_once={f"{SUB}/{rel}": cut}) as server:
        result = download_source(LUDB, server.url, dest, records=["data/1"], workers=1, **FAST)
        ranges = [r[2] for r in server.requests if r[1] == f"{SUB}/{rel}"]
    # whole blocks that arrived before the drop are kept; the retry asks only for the rest
    assert ranges[0] is None and len(ranges) == 2
    start = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= cut
    assert (dest / SUB / rel).read_bytes() == full and result.records == ["data/1"]


def test_checksum_mismatch_fails_that_record_only(mirror: Path, tmp_path: Path):
    victim = mirror / SUB / "data/2.dat"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    dest = tmp_path / "raw"
    with serve_directory(mirror) as server:
        result = download_source(LUDB, server.url, dest, retries=2, **FAST)
        attempts = server.count(f"{SUB}/data/2.dat")
    assert result.records == ["data/1", "data/3"]
    assert [f["record"] for f in result.failures] == ["data/2"]
    assert "sha256 mismatch" in result.failures[0]["reason"] and "data/2.dat" in result.failures[0]["reason"]
    assert attempts == 3  # first try + 2 retries
    assert not (dest / SUB / "data/2.dat").exists() and not (dest / SUB / "data/2.dat.part").exists()
    assert "data/2" not in result.records_file.read_text().split()


def test_transient_503_then_success(mirror: Path, tmp_path: Path):
    with serve_directory(mirror, fail_first=3, fail_status=503) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", workers=1, retries=3, **FAST)
        statuses = [r[3] for r in server.requests]
    assert statuses[:3] == [503, 503, 503] and statuses.count(503) == 3
    assert result.records == RECS and result.failures == []


def test_429_on_a_record_file_is_retried(mirror: Path, tmp_path: Path):
    rel = f"{SUB}/data/1.hea"
    with serve_directory(mirror, fail_first=2, fail_status=429, fail_match=lambda p: p == rel) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", retries=2, **FAST)
        assert [r[3] for r in server.requests if r[1] == rel] == [429, 429, 200]
    assert result.records == RECS


def test_retry_after_is_honoured(mirror: Path, tmp_path: Path):
    with serve_directory(mirror, fail_first=1, fail_status=503, fail_headers={"Retry-After": "1"}) as server:
        start = time.monotonic()
        result = download_source(LUDB, server.url, tmp_path / "raw", records=1, **FAST)
        elapsed = time.monotonic() - start
    assert result.records == ["data/1"]
    assert 1.0 <= elapsed < 5  # backoff=0, so the wait is the server's


def test_concurrent_downloads_into_one_folder(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    with serve_directory(mirror) as server, ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: download_source(LUDB, server.url, dest, workers=2, **FAST), range(2)))
    assert all(r.records == RECS and r.failures == [] for r in runs)
    # the folder lock serialises the two: one transfers every file, the other finds them verified
    assert sorted(r.files_downloaded for r in runs) == [0, 3 * FILES_PER_RECORD + 1]
    for rel, digest in _sums(mirror).items():
        assert _sha(runs[0].root / rel) == digest


def test_404_is_not_retried_and_fails_only_that_record(mirror: Path, tmp_path: Path):
    (mirror / SUB / "data/1.i").unlink()
    with serve_directory(mirror) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", retries=4, **FAST)
        assert server.count(f"{SUB}/data/1.i") == 1
    assert result.records == ["data/2", "data/3"]
    assert result.failures[0]["record"] == "data/1" and "404" in result.failures[0]["reason"]


def test_persistent_5xx_gives_up_after_retries(mirror: Path, tmp_path: Path):
    rel = f"{SUB}/data/3.hea"
    with serve_directory(mirror, fail_first=100, fail_status=500, fail_match=lambda p: p == rel) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", retries=2, **FAST)
        assert server.count(rel) == 3
    assert result.records == ["data/1", "data/2"]
    assert "HTTP 500" in result.failures[0]["reason"]


def test_missing_listing_raises_source_unavailable_naming_the_url(mirror: Path, tmp_path: Path):
    (mirror / SUB / "SHA256SUMS.txt").unlink()
    with serve_directory(mirror) as server:
        with pytest.raises(SourceUnavailableError) as err:
            download_source(LUDB, server.url, tmp_path / "raw", **FAST)
        assert server.count(f"{SUB}/SHA256SUMS.txt") == 1  # a 404 is final
    assert err.value.url == f"{server.url}{SUB}/SHA256SUMS.txt" and err.value.url in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_unreachable_mirror_raises_source_unavailable(tmp_path: Path):
    with serve_directory(tmp_path) as server:
        url = server.url
    with pytest.raises(SourceUnavailableError, match="RECORDS"):  # server gone: connection refused
        download_source(LUDB, url, tmp_path / "raw", retries=1, **FAST)


@pytest.mark.parametrize("bad", ["../../outside", "/tmp/outside", "data/..\\..\\outside", "data/../../outside"])
@pytest.mark.parametrize("where", ["RECORDS", "SHA256SUMS.txt"])
def test_traversal_names_are_refused_and_nothing_is_written(mirror: Path, tmp_path: Path, bad, where):
    root = mirror / SUB
    lines = (root / "SHA256SUMS.txt").read_text().splitlines()[1:]  # drop RECORDS' own line
    if where == "RECORDS":
        write_listing(root, [*RECS, bad], lines)
    else:
        write_listing(root, RECS, [*lines, f"{'0' * 64} {bad}.hea"])
    dest = tmp_path / "dest" / "raw"
    with serve_directory(mirror) as server:
        with pytest.raises(UnsafePathError) as err:
            download_source(LUDB, server.url, dest, **FAST)
    assert err.value.entry.startswith(bad) and where in err.value.listing
    assert not (tmp_path / "dest").exists()
    assert not list(tmp_path.glob("**/outside*"))


def test_symlink_escaping_dest_is_refused(mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (dest / SUB).mkdir(parents=True)
    os.symlink(outside, dest / SUB / "data")
    with pytest.raises(UnsafePathError, match="resolves outside"):
        download_source(LUDB, mirror, dest, **FAST)
    assert list(outside.iterdir()) == []


def test_record_without_header_checksum_and_header_naming_unlisted_file(mirror: Path, tmp_path: Path):
    root = mirror / SUB
    lines = (root / "SHA256SUMS.txt").read_text().splitlines()[1:]
    lines = [ln for ln in lines if not ln.endswith((" data/1.hea", " data/3.dat"))]
    write_listing(root, RECS, lines)
    result = download_source(LUDB, mirror, tmp_path / "raw", **FAST)
    reasons = {f["record"]: f["reason"] for f in result.failures}
    assert result.records == ["data/2"]
    assert "no checksum entry for data/1.hea" in reasons["data/1"]
    assert "header names data/3.dat" in reasons["data/3"]


def test_local_folder_and_file_url_mirrors(mirror: Path, tmp_path: Path):
    by_path = download_source(LUDB, mirror, tmp_path / "a", workers=2, **FAST)
    by_url = download_source(LUDB, mirror.as_uri(), tmp_path / "b", **FAST)
    for result in (by_path, by_url):
        assert result.records == RECS and result.failures == []
        for rel, digest in _sums(mirror).items():
            assert _sha(result.root / rel) == digest
    with pytest.raises(ValueError, match="unsupported scheme"):
        download_source(LUDB, "ftp://example.org/", tmp_path / "c", **FAST)


def test_records_limit_filter_and_unknown(mirror: Path, tmp_path: Path):
    assert download_source("ludb", mirror, tmp_path / "a", records=2, **FAST).records == ["data/1", "data/2"]
    picked = download_source(LUDB, mirror, tmp_path / "b", records=lambda p: p.endswith("3"), **FAST)
    assert picked.records == ["data/3"]
    assert not (picked.root / "data/1.hea").exists()
    with pytest.raises(ValueError, match="data/99"):
        download_source(LUDB, mirror, tmp_path / "c", records=["data/1", "data/99"], **FAST)


def test_missing_metadata_file_is_reported(mirror: Path, tmp_path: Path):
    (mirror / SUB / "ludb.csv").unlink()
    result = download_source(LUDB, mirror, tmp_path / "raw", **FAST)
    assert result.records == RECS
    assert result.failures == [{"record": "ludb.csv", "reason": result.failures[0]["reason"]}]
    assert "metadata" in result.failures[0]["reason"] and result.metadata_files == []


def test_fetch_task_returns_a_small_record(mirror: Path, tmp_path: Path):
    from tasks.fetch import fetch_source

    out = fetch_source.fn("ludb", str(mirror), tmp_path / "raw", workers=2, progress=False)
    assert out["slug"] == "ludb" and out["version"] == "1.0.1"
    assert out["records"] == RECS and out["n_records"] == 3 and out["failures"] == []
    assert Path(out["records_file"]).read_text().split() == RECS
    assert out["files_downloaded"] == 3 * FILES_PER_RECORD + 1
    json.dumps(out)  # travels through the orchestrator as JSON


def test_fetch_task_does_not_retry_permanent_errors():
    from prefect.states import Failed

    from tasks.fetch import _retry_unless_permanent

    def retried(exc: Exception) -> bool:
        return _retry_unless_permanent(None, None, Failed(data=exc))

    assert retried(SourceUnavailableError("https://physionet.org/files/ludb/1.0.1/RECORDS", "HTTP 503"))
    assert not retried(UnsafePathError("RECORDS", "../x", "contains '..'"))
    assert not retried(UnknownSourceError("unknown source 'x'"))


# ------------------------------------------------------------------------------------ hostile servers
@pytest.mark.parametrize("value", ["\u00b2", "-1", "nan", "1e9999", "soon", "Wed, 99 Foo 2024 xx:yy:zz GMT"])
def test_odd_retry_after_is_ignored_not_fatal(mirror: Path, tmp_path: Path, value: str):
    assert parse_retry_after(value) is None
    with serve_directory(mirror, fail_first=1, fail_status=503, fail_headers={"Retry-After": value}) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", records=1, **FAST)
    assert result.records == ["data/1"]


def test_retry_after_as_an_http_date():
    from email.utils import formatdate

    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("7") == 7.0


def test_trickling_server_is_cut_off_by_the_attempt_deadline_and_resumed(mirror: Path, tmp_path: Path):
    rel = f"{SUB}/data/1.dat"  # ~120 kB: at a byte per 20 ms it would take 40 minutes
    with serve_directory(mirror, trickle_once={rel: 0.02}) as server:
        start = time.monotonic()
        result = download_source(LUDB, server.url, tmp_path / "raw", records=1, attempt_timeout=0.5, **FAST)
        elapsed = time.monotonic() - start
        ranges = [r[2] for r in server.requests if r[1] == rel]
    assert result.records == ["data/1"] and elapsed < 10
    assert ranges[0] is None and ranges[1] and ranges[1].startswith("bytes=")  # resumed where the stall left it
    assert _sha(result.root / "data/1.dat") == _sums(mirror)["data/1.dat"]


def test_endless_body_is_refused_at_the_size_cap_without_retries(mirror: Path, tmp_path: Path):
    rel = f"{SUB}/data/2.dat"
    with serve_directory(mirror, endless={rel}) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", records=2, retries=3, max_file_bytes=1 << 20,
                                 **FAST)  # fmt: skip
        assert server.count(rel) == 1
    assert result.records == ["data/1"]
    assert "cap" in result.failures[0]["reason"] and result.failures[0]["record"] == "data/2"
    assert not list((tmp_path / "raw").rglob("*.part"))


def test_compressed_response_is_refused_and_identity_is_asked_for(mirror: Path, tmp_path: Path):
    rel = f"{SUB}/data/1.hea"
    with serve_directory(mirror, gzip={rel}) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", records=1, retries=2, **FAST)
        asked = [h.get("Accept-Encoding") for p, h in server.request_headers]
    assert set(asked) == {"identity"}
    assert result.records == [] and "'gzip'-encoded" in result.failures[0]["reason"]


def test_redirect_is_followed_and_the_file_still_verified(mirror: Path, tmp_path: Path):
    rel = f"{SUB}/data/1.hea"
    (mirror / "moved").mkdir()
    (mirror / "moved" / "1.hea").write_bytes((mirror / rel).read_bytes())
    with serve_directory(mirror, redirect={rel: "moved/1.hea"}) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw", records=1, **FAST)
        assert server.count("moved/1.hea") == 1
    assert result.records == ["data/1"]
    (mirror / "moved" / "1.hea").write_bytes(b"not the header")
    with serve_directory(mirror, redirect={rel: "moved/1.hea"}) as server:
        result = download_source(LUDB, server.url, tmp_path / "raw2", records=1, retries=0, **FAST)
    assert result.records == [] and "sha256 mismatch" in result.failures[0]["reason"]


# ------------------------------------------------------------------------------------ broken listings, locks
def test_bom_in_the_checksum_listing_is_accepted(mirror: Path, tmp_path: Path):
    sums = mirror / SUB / "SHA256SUMS.txt"
    sums.write_bytes(b"\xef\xbb\xbf" + sums.read_bytes())
    result = download_source(LUDB, mirror, tmp_path / "raw", records=1, **FAST)
    assert result.records == ["data/1"]


def test_records_that_is_a_folder_is_a_clear_error(mirror: Path, tmp_path: Path):
    (mirror / SUB / "RECORDS").unlink()
    (mirror / SUB / "RECORDS").mkdir()
    with pytest.raises(SourceUnavailableError, match=r"RECORDS.*not a readable file"):
        download_source(LUDB, mirror, tmp_path / "raw", **FAST)


def test_held_download_lock_times_out_clearly(mirror: Path, tmp_path: Path):
    from filelock import FileLock

    root = tmp_path / "raw" / "ludb" / "1.0.1"
    root.mkdir(parents=True)
    with FileLock(str(root / LOCK_NAME)):
        # filelock is re-entrant within a thread: hold it from another one
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(download_source, LUDB, mirror, tmp_path / "raw", lock_timeout=0.3, **FAST)
            with pytest.raises(SourceUnavailableError, match=r"another download holds .* more than 0.3 s"):
                future.result(timeout=30)


def test_pinned_listing_refuses_a_tampered_mirror(mirror: Path, tmp_path: Path):
    listing = (mirror / SUB / "SHA256SUMS.txt").read_bytes()
    pinned = LUDB.model_copy(update={"checksums_sha256": hashlib.sha256(listing).hexdigest()})
    assert download_source(pinned, mirror, tmp_path / "raw", records=1, **FAST).records == ["data/1"]
    (mirror / SUB / "SHA256SUMS.txt").write_bytes(listing.replace(b" data/1.hea", b" data/1.hea", 1) + b"\n")
    with pytest.raises(SourceUnavailableError, match="not the one pinned for ludb 1.0.1"):
        download_source(pinned, mirror, tmp_path / "raw2", records=1, **FAST)
