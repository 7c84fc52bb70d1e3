"""Benchmark: ``ecgssl embed`` throughput, records/s and crops/s of the frozen-encoder embedding of a store.

    python bench/embed.py --store S                      # the cpu preset's architecture, random weights
    python bench/embed.py --store S --encoder runs/pretrain --threads 2 --repeat 2
    python bench/embed.py --store S --encoder runs/pretrain --batch-sizes 32 256   # ratio in one run

Times :func:`ecgmodel.embed.embed_store` (chunk reads, crops covering every record, encoder, pooling,
per-record mean) and the Parquet write, after a warm-up pass on the first chunk. The load average before
and after is printed too: on a shared machine it says how pessimistic the figure is. Prints one JSON object.
Target: the ~3,300-record shared-mirror store in under a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ecgmodel.embed import default_batch_size, embed_store, write_embeddings
from ecgmodel.train.config import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--encoder", default=None, help="encoder reference (default: random, cpu preset architecture)")
    ap.add_argument("--preset", default="cpu", help="architecture of the random encoder (default cpu)")
    ap.add_argument("--pooling", default="mean-max")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[None],
                    help="crops per forward pass, one timed pass (x repeat) each (default: the library's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = {"encoder": args.encoder} if args.encoder else {"random_arch": preset(args.preset).encoder}
    load_before = os.getloadavg()
    rows = []
    table = None
    for bs in args.batch_sizes:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            table = embed_store(args.store, pooling=args.pooling, batch_size=bs, **kw)
            with tempfile.TemporaryDirectory() as tmp:
                write_embeddings(table, Path(tmp) / "e.parquet")
            times.append(time.perf_counter() - t0)
        assert table is not None
        best = min(times)
        crops = int(table["n_crops"].sum())
        rows.append({"batch_size": bs or default_batch_size("cpu"), "seconds": [round(t, 2) for t in times],
                     "best_s": round(best, 2), "records_per_s": round(len(table) / best, 1),
                     "crops_per_s": round(crops / best, 1)})  # fmt: skip
    assert table is not None
    base = rows[-1]["best_s"]
    for r in rows:
        r["speed_vs_last"] = round(base / r["best_s"], 2)
    print(json.dumps({
        "store": args.store, "encoder": args.encoder or f"random ({args.preset} preset architecture)",
        "records": len(table), "crops": int(table["n_crops"].sum()), "dim": len(table["vector"].iloc[0]),
        "threads": args.threads, "runs": rows, "best_s": min(r["best_s"] for r in rows),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }, indent=1))


if __name__ == "__main__":
    main()
