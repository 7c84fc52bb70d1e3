"""A small store of the real records bundled in ``tests/data`` (no shared mirror needed).

    from helpers_store import bundled_store

    path = bundled_store(tmp_path / "store")   # every 500 Hz / resampled record, up to 3 windows each
"""

from __future__ import annotations

from pathlib import Path

from ecgmodel.data.signal import harmonise
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.data.wfdb_io import read_header, read_signal

DATA = Path(__file__).resolve().parent / "data" / "physionet"


def bundled_store(path: Path, max_windows: int = 3) -> Path:
    """Write the bundled records into a store at ``path``; record ``i`` gets fold ``i % 10 + 1`` and dx NORM."""
    heads = sorted(p for p in DATA.rglob("*.hea") if "records100" not in p.parts)
    with StoreWriter(path, fs=500, window_samples=5000, chunk_windows=4, meta_chunk=64, durable=False) as w:
        for i, h in enumerate(heads):
            header = read_header(h.with_suffix(""), h.stem)
            hm = harmonise(read_signal(header, h.parent, h.stem), header.sig_name, header.fs, max_windows=max_windows)
            w.append(WindowBatch.for_record(hm.signal, hm.lead_present, hm.window_start, hm.valid_length, hm.qc,
                                            record=h.stem, source="test", database=h.parts[-3], dx=["NORM"],
                                            fold=(i % 10) + 1))  # fmt: skip
        w.commit(sources={"test": {"version": "1", "base_url": "", "records": len(heads)}}, quarantine=[])
    return path
