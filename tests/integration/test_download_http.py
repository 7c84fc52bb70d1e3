"""Download the whole ../shared/physionet mirror over HTTP for every catalog source and check every file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers_http import serve_directory

from ecgmodel.data.download import download_source, parse_checksums
from ecgmodel.data.sources import SOURCES


@pytest.mark.slow
def test_whole_mirror_over_http(physionet_mirror: Path, tmp_path: Path):
    dest = tmp_path / "raw"
    with serve_directory(physionet_mirror) as server:
        results = {}
        for slug, source in SOURCES.items():
            source = source.select(*source.record_groups)  # PTB-XL: 100 Hz and 500 Hz
            results[slug] = download_source(source, server.url, dest, workers=4, progress=False, backoff=0.05)
        reruns = {
            slug: download_source(src.select(*src.record_groups), server.url, dest, progress=False)
            for slug, src in SOURCES.items()
        }

    checked = 0
    for slug, result in results.items():
        mirror_root = physionet_mirror / SOURCES[slug].url_path
        sums = parse_checksums((mirror_root / "SHA256SUMS.txt").read_text())
        assert result.failures == [], (slug, result.failures[:3])
        # every record the mirror lists (all record groups selected), in its order
        assert result.records == (mirror_root / "RECORDS").read_text().split() and result.records
        assert sorted(result.metadata_files) == sorted(SOURCES[slug].metadata_files)
        # every file belonging to a record or listed as metadata is here, and matches the published sha256
        records = set(result.records)
        wanted = [p for p in sums if p in SOURCES[slug].metadata_files or p.rsplit(".", 1)[0] in records]
        assert len(wanted) == result.files_downloaded
        for rel in wanted:
            assert hashlib.sha256((result.root / rel).read_bytes()).hexdigest() == sums[rel], (slug, rel)
            checked += 1
        assert not list(result.root.rglob("*.part"))
        assert reruns[slug].files_downloaded == 0 and reruns[slug].files_skipped == result.files_downloaded
        assert reruns[slug].records == result.records
    assert checked > 4000
