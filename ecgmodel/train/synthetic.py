"""A small synthetic ECG-like store for tests and benchmarks (no download needed).

Every lead is a periodic beat train whose shape depends on the lead (a different mix of harmonics and
polarity per lead) plus noise, so lead identity is learnable from the signal alone, like in real ECGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ecgmodel.data.store import StoreWriter, WindowBatch


def synthetic_windows(n: int, window_samples: int = 5000, fs: int = 500, seed: int = 0) -> np.ndarray:
    """int16 microvolts (n, 12, window_samples)."""
    rng = np.random.default_rng(seed)
    t = np.arange(window_samples) / fs
    lead = np.arange(12)[:, None]
    out = np.empty((n, 12, window_samples), np.int16)
    for i in range(n):
        hr = rng.uniform(0.9, 1.8)  # beats per second
        phase = 2 * np.pi * hr * t + rng.uniform(0, 2 * np.pi)
        sig = (
            600 * np.cos(lead * 0.5) * np.sin(phase) ** 15  # spike, lead-dependent amplitude and polarity
            + 200 * np.sin(2 * phase + lead)  # lead-dependent wave shape
            + 40 * rng.standard_normal((12, window_samples))
        )
        out[i] = np.clip(sig, -32768, 32767).astype(np.int16)
    return out


def make_synthetic_store(
    path: str | Path,
    n: int = 128,
    window_samples: int = 5000,
    chunk_windows: int = 16,
    seed: int = 0,
    batch: int = 64,
    progress: bool = False,
) -> Path:
    """Write ``n`` synthetic windows to a new store at ``path`` (through the regular ``StoreWriter``)."""
    path = Path(path)
    with StoreWriter(path, fs=500, window_samples=window_samples, create=True, chunk_windows=chunk_windows,
                     meta_chunk=chunk_windows * max(1, 256 // chunk_windows), durable=False) as w:
        for start in tqdm(range(0, n, batch), desc="synthetic store", disable=not progress):
            k = min(batch, n - start)
            sig = synthetic_windows(k, window_samples, seed=seed + start)
            w.append(WindowBatch(
                signal=sig, lead_present=np.ones((k, 12), bool), record=[f"S{start + i:07d}" for i in range(k)],
                source=["synthetic"] * k, database=["synthetic"] * k, window_start=np.zeros(k, np.int64),
                valid_length=np.full(k, window_samples, np.int32), dx=[""] * k, patient_id=[""] * k,
                age=np.full(k, np.nan, np.float32), sex=[""] * k, fold=np.full(k, -1, np.int8),
                qc=np.zeros(k, np.uint8),
            ))
        w.commit(sources={"synthetic": {"version": "1", "base_url": "", "records": n}}, quarantine=[])
    return path
