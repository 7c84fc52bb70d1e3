"""Ingest throughput and memory: Dask conversion vs a naive single-process loop, on the PTB-XL mirror.

    python bench/ingest.py --mirror ../shared/physionet --records 500 --small 100 --workers 2

Prints one JSON object:
* ``naive``: records/s of ``wfdb.rdrecord`` + resample + window + store append, one record at a time;
* ``in_process``: records/s of ``convert_sources(workers=0)`` (the ingest reader, no Dask);
* ``dask``: records/s of ``convert_sources`` on a warm local cluster of ``--workers`` processes, and
  ``dask_end_to_end`` including the cluster start;
* ``speedup_vs_naive``: dask / naive (target >= 1.6 on 2 cores);
* ``memory``: peak RSS (MB) of the main process and of main + workers, sampled every 20 ms, when converting
  ``--small`` and ``--records`` records: flat memory means the two peaks are close.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def ptbxl_fetched(mirror: Path, n: int) -> tuple[dict, list[str]]:
    from ecgmodel.data.sources import get_source

    src = get_source("ptb-xl").select("records500")
    root = mirror / src.slug / src.version
    paths = src.record_paths((root / "RECORDS").read_text())[:n]
    if len(paths) < n:
        raise SystemExit(f"{root}: only {len(paths)} records500 records, asked for {n}")
    return {"slug": "ptb-xl", "root": str(root), "records": paths, "failures": []}, paths


def naive_loop(root: Path, paths: list[str], store: Path, fs: int = 500, max_windows: int = 6) -> float:
    """The straightforward way: wfdb.rdrecord, then resample/window/int16, append one record at a time."""
    import wfdb

    from ecgmodel.data.signal import harmonise
    from ecgmodel.data.sources import get_source
    from ecgmodel.data.store import StoreWriter, WindowBatch
    from ecgmodel.data.wfdb_io import MetadataTable

    src = get_source("ptb-xl")
    meta = MetadataTable(root, "ptbxl", "ptb-xl")
    t0 = time.perf_counter()
    with StoreWriter(store, fs=fs, window_samples=10 * fs) as w:
        for p in paths:
            rec = wfdb.rdrecord(str(root / p))
            h = harmonise(rec.p_signal.T, rec.sig_name, rec.fs, fs=fs, window_s=10, max_windows=max_windows)
            info = meta.lookup(p, p)
            w.append(WindowBatch.for_record(
                h.signal, h.lead_present, h.window_start, h.valid_length, h.qc, record=src.record_name(p),
                source="ptb-xl", database="ptb-xl", dx=info["dx"], patient_id=info["patient_id"],
                age=info["age"], sex=info["sex"], fold=info["fold"],
            ))  # fmt: skip
        w.commit(sources={"ptb-xl": {"version": src.version}})
    return time.perf_counter() - t0


class RssSampler:
    """Peak RSS of this process and of this process + all its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_main, self.peak_total = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                main = me.memory_info().rss
                total = main + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            self.peak_main, self.peak_total = max(self.peak_main, main), max(self.peak_total, total)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def chunk_reads(windows: np.ndarray, tmp: Path) -> dict:
    """Read speed of whole-chunk access for a few chunk sizes (the training loader reads whole chunks)."""
    from ecgmodel.data.store import StoreWriter, WindowBatch, open_store

    k = len(windows)
    out = {}
    for c in (32, 64, 128):
        path = tmp / f"chunks-{c}.zarr"
        with StoreWriter(path, chunk_windows=c, meta_chunk=4096 // c * c) as w:
            w.append(WindowBatch(signal=windows, lead_present=np.ones((k, 12), bool), record=[str(i) for i in range(k)],
                                 source=["s"] * k, database=["d"] * k, window_start=np.zeros(k), valid_length=np.zeros(k),
                                 dx=[""] * k, patient_id=[""] * k, age=np.zeros(k), sex=[""] * k, fold=np.zeros(k),
                                 qc=np.zeros(k)))  # fmt: skip
            w.commit()
        s = open_store(path)
        t0 = time.perf_counter()
        s.load_signal()
        seq = time.perf_counter() - t0
        order = np.random.default_rng(0).permutation(len(s.chunk_bounds()))
        t0 = time.perf_counter()
        for _ in s.iter_chunks(order):
            pass
        rnd = time.perf_counter() - t0
        out[str(c)] = {"sequential_windows_per_s": round(k / seq), "random_chunk_windows_per_s": round(k / rnd),
                       "ms_per_chunk": round(1e3 * rnd / len(order), 1)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_mirror = Path(os.environ.get("ECGSSL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--mirror", type=Path, default=default_mirror / "physionet")
    ap.add_argument("--records", type=int, default=500)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-records", type=int, default=32)
    args = ap.parse_args()

    from ecgmodel.data.convert import convert_batch, convert_sources, dask_client
    from ecgmodel.data.ingest_config import IngestConfig
    from ecgmodel.data.sources import get_source
    from ecgmodel.data.store import open_store

    tmp = Path(tempfile.mkdtemp(prefix="ecgssl-bench-"))
    os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(tmp / "dask"))
    fetched, paths = ptbxl_fetched(args.mirror, args.records)
    root = Path(fetched["root"])
    for p in paths:  # warm the page cache so every variant reads from memory
        for f in (root / p).parent.glob((root / p).name + ".*"):
            f.read_bytes()

    def cfg(store: Path, workers: int) -> IngestConfig:
        return IngestConfig(sources=["ptb-xl"], store=str(store), workers=workers, progress=False,
                            batch_records=args.batch_records)  # fmt: skip

    out: dict = {"records": args.records, "workers": args.workers, "cores": os.cpu_count(),
                 "batch_records": args.batch_records}  # fmt: skip
    t_naive = naive_loop(root, paths, tmp / "naive.zarr")
    out["naive_records_per_s"] = round(args.records / t_naive, 1)

    t0 = time.perf_counter()
    convert_sources(cfg(tmp / "inproc.zarr", 0), [fetched], client=None)
    out["in_process_records_per_s"] = round(args.records / (time.perf_counter() - t0), 1)

    t0 = time.perf_counter()
    with dask_client(args.workers) as client:
        t_start = time.perf_counter() - t0
        # warm-up: every worker imports the reader (scipy.signal alone takes ~1-3 s)
        client.gather(client.map(convert_batch, [str(root)] * args.workers, [get_source("ptb-xl")] * args.workers,
                                 [paths[:1]] * args.workers, [500] * args.workers, [10] * args.workers,
                                 [6] * args.workers, pure=False))  # fmt: skip
        memory = {}
        for n in (args.small, args.records):
            sub = dict(fetched, records=paths[:n])
            store = tmp / f"dask-{n}.zarr"
            with RssSampler() as rss:
                t1 = time.perf_counter()
                summary = convert_sources(cfg(store, args.workers), [sub], client=client)
                dt = time.perf_counter() - t1
            memory[str(n)] = {"peak_main_mb": round(rss.peak_main / 2**20), "peak_total_mb": round(rss.peak_total / 2**20),
                              "seconds": round(dt, 2), "windows": summary["windows"]}  # fmt: skip
            if n == args.records:
                out["dask_records_per_s"] = round(n / dt, 1)
                out["dask_end_to_end_records_per_s"] = round(n / (dt + t_start), 1)
    out["cluster_start_s"] = round(t_start, 2)
    out["speedup_vs_naive"] = round(out["dask_records_per_s"] / out["naive_records_per_s"], 2)
    out["speedup_in_process_vs_naive"] = round(out["in_process_records_per_s"] / out["naive_records_per_s"], 2)
    out["memory"] = memory
    # the three stores hold the same windows
    a, b = open_store(tmp / "naive.zarr"), open_store(tmp / f"dask-{args.records}.zarr")
    out["same_content_as_naive"] = bool(a.n == b.n and np.array_equal(a.load_signal(), b.load_signal()))
    sig = b.signal
    out["store_bytes_per_window"] = round(sum(f.stat().st_size for f in (b.path / "signal").rglob("*") if f.is_file())
                                          / b.n)  # fmt: skip
    out["raw_bytes_per_window"] = int(np.prod(sig.shape[1:]) * 2)
    out["chunk_reads"] = chunk_reads(b.load_signal(), tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
