"""Benchmark: pretraining throughput, model FLOPs utilisation, memory and time waiting for data.

    python bench/train.py                                          # smoke preset on CPU, in-memory loader
    python bench/train.py --device cuda --preset base \\
        --batch-sizes 128 256 --modes eager compiled --loaders memory stream \\
        --store STORE --out runs.jsonl --profile traces/             # the GPU matrix (bench/gpu_check.sh)
    python bench/train.py --rows runs.jsonl                        # markdown rows for docs/performance.md

Every combination of mode (eager / compiled) x batch size x loader (memory = ``InMemoryLoader``, resident on
the GPU when it fits; stream = ``StreamingLoader`` reading whole chunks from the store on disk through its
prefetch thread) runs the real training step of ``ecgmodel.train.pretrain`` (crop + standardise, lead shuffle,
span mask, encoder + heads, backward, gradient clipping, AdamW; bf16 autocast on CUDA) and reports:

* ``samples_per_s``, ``tokens_per_s`` (tokens = 12 leads x patches per sample);
* ``flop_per_step`` - forward + backward FLOPs of one step, counted by ``torch.utils.flop_counter`` (matmuls
  and attention; element-wise work is not counted, as usual for MFU);
* ``mfu`` - achieved FLOP/s / the device's peak: dense bf16 tensor-core peak from ``PEAK_BF16`` for bf16 on a
  listed GPU, else the measured FLOP/s of a large matmul in the training dtype (``peak_source`` says which);
* ``peak_mem_gib`` - ``torch.cuda.max_memory_allocated`` during the timed steps (CUDA only);
* ``matmul_tflops_measured`` (CUDA) - an 8192^3 matmul in the training dtype, the practical ceiling beside the
  data-sheet peak;
* ``data_wait_frac`` - share of the timed wall time the training thread spent blocked in ``loader.next()``;
* for compiled runs, Dynamo's graph count and graph breaks.

``--profile DIR`` records one step of the first run of each mode with ``torch.profiler`` (Chrome trace JSON in
DIR) and reports the attention kernels chosen, the top kernels, the optimizer's share and the host syncs.
Without ``--store`` a synthetic store is built in a temporary folder; a store with fewer windows than
``--windows`` is tiled (its real windows repeated) into a temporary store on local disk. Prints one JSON object
(``runs``: one entry per combination); ``--out`` also appends each run as a JSON line as soon as it finishes.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ecgmodel.config import apply_overrides
from ecgmodel.data.loader import make_loader
from ecgmodel.data.store import StoreWriter, WindowBatch, open_store
from ecgmodel.models.encoder import build_encoder
from ecgmodel.models.heads import PretrainModel
from ecgmodel.train.config import PretrainConfig, preset
from ecgmodel.train.pretrain import param_groups, pretext_step
from ecgmodel.train.synthetic import make_synthetic_store

# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s from NVIDIA's data sheets; first match on the device name.
PEAK_BF16: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),  # H200 SXM (same GH100 compute as H100 SXM); H200 NVL is lower (~835)
    ("H100", 989e12),  # H100 SXM
    ("H800", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]
ATTENTION_KERNEL_KEYS = ("flash", "fmha", "efficient_attention", "attention", "sdpa", "cudnn_sdp")
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for MFU."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_BF16:
            if key in name:
                return peak, f"{key} dense bf16 data-sheet peak"
    n = 4096 if device.type == "cuda" else 1024
    return measured_peak(device, dtype, n), f"measured {str(dtype).replace('torch.', '')} {n}^3 matmul"


def measured_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def tile_store(src: str | Path, dst: Path, n: int, chunk_windows: int = 64) -> Path:
    """A store of ``n`` windows on local disk made of ``src``'s real windows repeated (for batch sizes larger
    than a small store); metadata that names a window gets a ``#copy`` suffix."""
    store = open_store(src)
    sig = store.load_signal()
    lp = store.lead_present()
    meta = store.meta()
    reps = -(-n // store.n)
    with StoreWriter(dst, fs=store.fs, window_samples=store.window_samples, create=True,
                     chunk_windows=chunk_windows, meta_chunk=chunk_windows * 4, durable=False) as w:  # fmt: skip
        for r in range(reps):
            k = min(store.n, n - r * store.n)
            w.append(WindowBatch(
                signal=sig[:k], lead_present=lp[:k], record=[f"{x}#{r}" for x in meta["record"][:k]],
                source=list(meta["source"][:k]), database=list(meta["database"][:k]),
                window_start=np.asarray(meta["window_start"][:k], np.int64),
                valid_length=np.asarray(meta["valid_length"][:k], np.int32), dx=[""] * k, patient_id=[""] * k,
                age=np.full(k, np.nan, np.float32), sex=[""] * k, fold=np.full(k, -1, np.int8),
                qc=np.asarray(meta["qc"][:k], np.uint8),
            ))  # fmt: skip
        w.commit(sources={"tiled": {"version": "1", "base_url": str(src), "records": n}}, quarantine=[])
    return dst


class Bench:
    """One model + optimizer per (mode, batch size); the training step of ``ecgmodel.train.pretrain``."""

    def __init__(self, cfg: PretrainConfig, device: torch.device, compile_: bool):
        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        self.raw = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode).to(device)
        self.model = torch.compile(self.raw) if compile_ else self.raw
        self.opt = torch.optim.AdamW(param_groups(self.raw, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                     betas=(cfg.optim.beta1, cfg.optim.beta2), fused=device.type == "cuda")
        self.gen = torch.Generator(device=device).manual_seed(0)

    def step(self, batch) -> torch.Tensor:
        out = pretext_step(self.model, batch.signal, batch.lead_present, batch.valid_length, self.cfg, self.gen)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        return out["loss"].detach()

    def count_flops(self, batch) -> int:
        with FlopCounterMode(display=False) as fc:  # one eager forward + backward
            out = pretext_step(self.raw, batch.signal, batch.lead_present, batch.valid_length, self.cfg, self.gen)
            out["loss"].backward()
        self.opt.zero_grad(set_to_none=True)
        return int(fc.get_total_flops())


def profile_step(bench: Bench, loader, trace_path: Path) -> dict[str, Any]:
    """One step under torch.profiler: Chrome trace + what limits the step."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    batch = loader.next()
    _sync(bench.device)
    with profile(activities=acts, record_shapes=False) as prof:
        bench.step(batch)
        _sync(bench.device)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    events = prof.key_averages()
    on_gpu = bench.device.type == "cuda"

    def self_us(e) -> float:
        return float(e.self_device_time_total if on_gpu else e.self_cpu_time_total)

    kernels = [e for e in events if self_us(e) > 0 and (not on_gpu or e.device_type.name == "CUDA")]
    total = sum(self_us(e) for e in kernels) or 1.0
    top = sorted(kernels, key=self_us, reverse=True)[:12]
    attention = sorted({e.key[:160] for e in events if any(k in e.key.lower() for k in ATTENTION_KERNEL_KEYS)})
    optim = sum(self_us(e) for e in kernels if any(k in e.key.lower() for k in ("adam", "foreach", "clip")))
    copies = sum(self_us(e) for e in kernels if any(k in e.key.lower() for k in ("copy", "transpose", "contiguous")))
    syncs = {e.key: int(e.count) for e in events if any(e.key.startswith(s.strip()) for s in SYNC_EVENTS)}
    return {
        "trace": str(trace_path), "attention_ops": attention,
        "top_ops": [{"name": e.key[:120], "share": round(self_us(e) / total, 4), "calls": int(e.count)} for e in top],
        "optimizer_share": round(optim / total, 4), "copy_transpose_share": round(copies / total, 4),
        "host_syncs": syncs,
    }  # fmt: skip


def run_one(bench: Bench, store: Path, loader_kind: str, B: int, steps: int, warmup: int, flops: int,
            peak: float, trace: Path | None) -> dict[str, Any]:  # fmt: skip
    cfg, device = bench.cfg, bench.device
    loader = make_loader(str(store), loader_kind, B, device, seed=0, buffer_chunks=cfg.data.buffer_chunks,
                         prefetch=cfg.data.prefetch)  # fmt: skip
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):  # compilation, allocator, cuDNN/cuBLAS heuristics, prefetch thread start
            bench.step(loader.next())
        _sync(device)
        warmup_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_data = 0.0
        loss = None
        t0 = time.perf_counter()
        for _ in range(steps):
            td = time.perf_counter()
            batch = loader.next()
            t_data += time.perf_counter() - td
            loss = bench.step(batch)
        _sync(device)
        elapsed = time.perf_counter() - t0
        res: dict[str, Any] = {
            "warmup_steps": warmup, "warmup_s": round(warmup_s, 2), "steps": steps,
            "step_ms": round(1000 * elapsed / steps, 2), "samples_per_s": round(B * steps / elapsed, 1),
            "tokens_per_s": round(B * steps * cfg.encoder.n_leads * cfg.encoder.n_patches / elapsed),
            "flop_per_step": flops, "achieved_tflops": round(flops * steps / elapsed / 1e12, 3),
            "mfu": round(flops * steps / elapsed / peak, 4), "data_wait_frac": round(t_data / elapsed, 4),
            "final_loss": round(float(loss), 4) if loss is not None else None,
            "loss_finite": bool(loss is not None and torch.isfinite(loss).item()),
        }  # fmt: skip
        if device.type == "cuda":
            res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if trace is not None:
            res["profile"] = profile_step(bench, loader, trace)
        return res
    finally:
        loader.close()


def prepare_store(args, tmp: Path, batch_sizes: list[int]) -> tuple[Path, str]:
    need = max(args.windows, 4 * max(batch_sizes))
    if args.store is None:
        path = make_synthetic_store(tmp / "synthetic", n=need, window_samples=5000, chunk_windows=64)
        return path, f"synthetic n={need}"
    src = open_store(args.store)
    if src.n >= need:
        return Path(args.store), f"{args.store} ({src.n} windows)"
    path = tile_store(args.store, tmp / "tiled", need)
    return path, f"{args.store} ({src.n} real windows) tiled to {need} on local disk"


def markdown_rows(jsonl: Path) -> str:
    """Rows for the GPU table of docs/performance.md from a ``--out`` file."""
    import re

    def si(x: float) -> str:
        return next(f"{x / d:.3g} {u}" for d, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")) if x >= d)

    lines = []
    for ln in jsonl.read_text().splitlines():
        r = json.loads(ln)
        r["command"] = re.sub(r"\s--store \S+", " --store STORE", re.sub(r"\s--(out|profile) \S+", "", r["command"]))
        if "error" in r:
            lines.append(f"| {r.get('device', '?')} | {r['mode']} | {r['loader']} | {r['batch_size']} | "
                         f"failed: {r['error'][:60]} | | | | | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['device']} | {r['mode']} | {r['loader']} | {r['batch_size']} | {r['samples_per_s']:.0f} | "
            f"{si(r['tokens_per_s'])} | {si(r['flop_per_step'])} | {100 * r['mfu']:.1f} % | "
            f"{r.get('peak_mem_gib', '-')} | {100 * r['data_wait_frac']:.1f} % | {r['torch']} / {r['cuda']} | "
            f"`{r['command']}` |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: the preset's batch size")
    ap.add_argument("--batch-size", type=int, default=None, help="one batch size (same as --batch-sizes N)")
    ap.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=None)
    ap.add_argument("--compile", action="store_true", help="same as --modes compiled")
    ap.add_argument("--loaders", nargs="+", choices=["memory", "stream"], default=["memory"])
    ap.add_argument("--store", default=None, help="store to read (default: a synthetic one in a temporary folder)")
    ap.add_argument("--windows", type=int, default=512, help="least windows in the store read (tiled if fewer)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CPU, 30 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3, 5 when compiled)")
    ap.add_argument("--profile", default=None, metavar="DIR", help="profile one step per mode, traces in DIR")
    ap.add_argument("--out", default=None, help="append each run as a JSON line to this file")
    ap.add_argument("--rows", default=None, metavar="JSONL", help="print markdown table rows of a --out file")
    ap.add_argument("--make-store", default=None, metavar="DST",
                    help="only write the store the runs would read (--store tiled to --windows, or synthetic) to DST")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.rows:
        print(markdown_rows(Path(args.rows)))
        return 0
    if args.make_store:
        dst = Path(args.make_store)
        if args.store is None:
            make_synthetic_store(dst, n=args.windows, window_samples=5000, chunk_windows=64)
        else:
            tile_store(args.store, dst, max(args.windows, open_store(args.store).n))
        print(json.dumps({"store": str(dst), "windows": open_store(dst).n, "from": args.store or "synthetic"}))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench/train.py: --device {args.device} but torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)  # fmt: skip
        return 2
    cfg = apply_overrides(preset(args.preset), args.overrides)
    cfg = apply_overrides(cfg, {"run.device": str(device)})
    batch_sizes = args.batch_sizes or [args.batch_size or cfg.data.batch_size]
    modes = args.modes or (["compiled"] if args.compile else ["eager"])
    steps = args.steps or (30 if device.type == "cuda" else 10)
    bf16 = device.type == "cuda" and cfg.run.dtype in ("auto", "bfloat16")
    dtype = torch.bfloat16 if bf16 else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda or "-", "python": platform.python_version(),
        "preset": args.preset, "dtype": str(dtype).replace("torch.", ""), "torch_threads": torch.get_num_threads(),
        "command": "python bench/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }  # fmt: skip
    peak, peak_src = device_peak(device, dtype)
    if device.type == "cuda":  # what a plain large GEMM reaches here, beside the data-sheet peak
        env["matmul_tflops_measured"] = round(measured_peak(device, dtype, 8192) / 1e12, 1)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ecgssl-bench-") as tmp:
        store, store_desc = prepare_store(args, Path(tmp), batch_sizes)
        for mode in modes:
            profiled = args.profile is None
            for B in batch_sizes:
                if mode == "compiled":
                    torch._dynamo.reset()
                    torch._dynamo.utils.counters.clear()
                base = {**env, "mode": mode, "batch_size": B, "store": store_desc, "peak_tflops": peak / 1e12,
                        "peak_source": peak_src}  # fmt: skip
                bench = None
                try:
                    bench = Bench(cfg, device, mode == "compiled")
                    flops = bench.count_flops(make_loader(str(store), "memory", B, device).next())
                    base["params_M"] = round(sum(p.numel() for p in bench.raw.encoder.parameters()) / 1e6, 2)
                    base["tokens_per_sample"] = cfg.encoder.n_leads * cfg.encoder.n_patches
                except Exception as exc:  # one failing configuration must not stop the others
                    flops, bench_err = 0, exc
                else:
                    bench_err = None
                for kind in args.loaders:
                    rec = {**base, "loader": kind}
                    if bench_err is not None:
                        rec["error"] = f"{type(bench_err).__name__}: {bench_err}"
                    else:
                        trace = None if profiled else Path(args.profile) / f"trace_{mode}_b{B}_{kind}.json"
                        try:
                            rec.update(run_one(bench, store, kind, B, steps,
                                               args.warmup or (5 if mode == "compiled" else 3), flops, peak, trace))
                            profiled = True
                            if mode == "compiled":
                                c = torch._dynamo.utils.counters
                                rec["compiled_graphs"] = int(c["stats"].get("unique_graphs", 0))
                                rec["graph_breaks"] = {k[:200]: v for k, v in c["graph_break"].items()}
                        except Exception as exc:
                            rec["error"] = f"{type(exc).__name__}: {exc}"
                            rec["traceback"] = traceback.format_exc()[-2000:]
                    runs.append(rec)
                    print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}), file=sys.stderr)
                    if args.out:
                        with open(args.out, "a") as fh:
                            fh.write(json.dumps(rec) + "\n")
                del bench
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    env["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps({**env, "peak_tflops": peak / 1e12, "peak_source": peak_src, "runs": runs}))
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
