"""Benchmark the verified downloader: the whole ../shared/physionet mirror served over local HTTP.

    .venv/bin/python bench/download.py [--workers 1 4] [--mirror ../shared/physionet]

Prints one JSON object: for each worker count, a cold download of all four sources (PTB-XL at both rates),
then a re-run that skips every file through the verification manifest, and a re-run without the manifest
(every file re-hashed). Local HTTP measures the downloader's own overhead (request, write, sha256, rename),
not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test HTTP server (Range-capable, threaded)

from helpers_http import serve_directory  # noqa: E402

from ecgmodel.data.download import MANIFEST_NAME, download_source  # noqa: E402
from ecgmodel.data.sources import SOURCES  # noqa: E402


def _run_all(url: str, dest: Path, workers: int) -> dict:
    start = time.perf_counter()
    files = nbytes = skipped = records = failures = 0
    for src in SOURCES.values():
        r = download_source(src.select(*src.record_groups), url, dest, workers=workers, progress=False)
        files += r.files_downloaded
        skipped += r.files_skipped
        nbytes += r.bytes_downloaded
        records += len(r.records)
        failures += len(r.failures)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "records": records, "failures": failures, "files_downloaded": files,
            "files_skipped": skipped, "mb_downloaded": round(nbytes / 1e6, 1),
            "mb_per_s": round(nbytes / 1e6 / seconds, 1), "files_per_s": round((files + skipped) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path,
                        default=Path(os.environ.get("ECGSSL_SHARED", REPO.parent / "shared")) / "physionet")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    out = {"benchmark": "download", "mirror": str(args.mirror), "cpus": os.cpu_count(),
           "python": platform.python_version(), "runs": {}}
    with serve_directory(args.mirror) as server:
        for workers in args.workers:
            dest = Path(tempfile.mkdtemp(prefix="ecgssl-bench-dl-"))
            try:
                cold = _run_all(server.url, dest, workers)
                warm = _run_all(server.url, dest, workers)
                for manifest in dest.rglob(MANIFEST_NAME):
                    manifest.unlink()
                rehash = _run_all(server.url, dest, workers)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
            out["runs"][f"workers={workers}"] = {"cold": cold, "rerun_manifest": warm, "rerun_rehash": rehash}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
