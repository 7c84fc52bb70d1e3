"""Benchmark: samples/s delivered to the training step (int16 windows as a batch on the device).

The crop + standardisation that follow (``to_model_input``, part of the training step on the device) is timed
separately and reported as ``transform_ms_per_batch``.

Compares, in the same run and on the same store:
  naive     - per-sample random-access zarr reads (``store.signal[i]``), the pattern the loaders avoid;
  memory    - InMemoryLoader (whole-chunk load once, then index on the device);
  stream    - StreamingLoader (whole chunks in random order, shuffle buffer, background prefetch thread).

    python bench/loader.py                       # builds a synthetic store of 2048 x 12 x 5000 windows
    python bench/loader.py --store data/store --device cuda
Prints one JSON object. Targets: memory >= 20x naive, stream >= 5x naive.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ecgmodel.data.loader import InMemoryLoader, StreamingLoader
from ecgmodel.data.store import open_store
from ecgmodel.data.transforms import to_model_input
from ecgmodel.train.synthetic import make_synthetic_store


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_naive(store, batch_size: int, seconds: float, crop: int, device: torch.device) -> float:
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rows = rng.integers(0, store.n, batch_size)
        sig = np.stack([store.signal[int(i)] for i in rows])  # one zarr access per sample
        x = torch.from_numpy(sig).to(device)
        n += x.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_loader(loader, seconds: float, crop: int, device: torch.device) -> float:
    b = loader.next()  # warm-up (starts the prefetch thread)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = loader.next()
        n += b.signal.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=None, help="existing store (default: build a synthetic one)")
    ap.add_argument("--n", type=int, default=2048, help="windows of the synthetic store")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=2500)
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per method")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.store) if args.store else make_synthetic_store(
            Path(tmp) / "store", n=args.n, chunk_windows=64, progress=True)  # fmt: skip
        store = open_store(path)
        naive = bench_naive(store, args.batch_size, args.seconds, args.crop, device)
        t0 = time.perf_counter()
        mem = InMemoryLoader(store, args.batch_size, device)
        load_s = time.perf_counter() - t0
        memory = bench_loader(mem, args.seconds, args.crop, device)
        stream_loader = StreamingLoader(store, args.batch_size, device, buffer_chunks=4, prefetch=8)
        stream = bench_loader(stream_loader, args.seconds, args.crop, device)
        stream_loader.close()
        b = mem.next()
        t0 = time.perf_counter()
        for _ in range(10):
            to_model_input(b.signal, args.crop, valid_length=b.valid_length)
        _sync(device)
        transform_ms = (time.perf_counter() - t0) / 10 * 1000
        print(json.dumps({
            "store": str(args.store or f"synthetic n={args.n}"), "windows": store.n,
            "chunk_windows": store.chunk_windows, "batch_size": args.batch_size, "crop": args.crop,
            "device": str(device), "torch_threads": torch.get_num_threads(),
            "naive_samples_per_s": round(naive, 1), "memory_samples_per_s": round(memory, 1),
            "stream_samples_per_s": round(stream, 1), "memory_load_s": round(load_s, 2), "transform_ms_per_batch": round(transform_ms, 1),
            "memory_speedup": round(memory / naive, 1), "stream_speedup": round(stream / naive, 1),
            "targets_met": bool(memory >= 20 * naive and stream >= 5 * naive),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
