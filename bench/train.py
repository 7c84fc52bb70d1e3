"""Benchmark: pretraining throughput, model FLOPs utilisation and time waiting for data, per preset.

    python bench/train.py                                  # smoke preset on CPU
    python bench/train.py --device cuda --preset base      # bf16 on a CUDA GPU (add --compile to compile)

FLOPs of one training step (forward + backward) are counted with torch.utils.flop_counter.FlopCounterMode.
Peak: dense bf16 989 TFLOP/s on H100/H200; on other devices the measured matmul FLOP/s of a large GEMM in the
training dtype. MFU = achieved model FLOP/s / peak. Data wait = share of step time spent in ``loader.next()``.
Input comes through the real in-memory loader from a synthetic store. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ecgmodel.config import apply_overrides
from ecgmodel.data.loader import InMemoryLoader
from ecgmodel.models.encoder import build_encoder
from ecgmodel.models.heads import PretrainModel
from ecgmodel.train.config import preset
from ecgmodel.train.pretrain import param_groups, pretext_step
from ecgmodel.train.synthetic import make_synthetic_store

H100_CLASS_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s of H100 / H200 SXM


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CPU, 50 on CUDA)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = apply_overrides(preset(args.preset), args.overrides)
    cfg = apply_overrides(cfg, {"run.device": str(device), "run.compile": args.compile,
                                "data.batch_size": args.batch_size or cfg.data.batch_size})  # fmt: skip
    steps = args.steps or (50 if device.type == "cuda" else 10)
    bf16 = device.type == "cuda" and cfg.run.dtype in ("auto", "bfloat16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    B = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        n_windows = max(4 * B, 256)
        store = make_synthetic_store(Path(tmp) / "store", n=n_windows, window_samples=5000, chunk_windows=64)
        loader = InMemoryLoader(store, B, device)
        raw = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode).to(device)
        model = torch.compile(raw) if args.compile else raw
        opt = torch.optim.AdamW(param_groups(raw, 0.05), lr=1e-4, fused=device.type == "cuda")
        gen = torch.Generator(device=device).manual_seed(0)

        def step(batch) -> None:
            out = pretext_step(model, batch.signal, batch.lead_present, batch.valid_length, cfg, gen)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
            opt.step()

        b = loader.next()
        with FlopCounterMode(display=False) as fc:  # one eager step: forward + backward FLOPs
            out = pretext_step(raw, b.signal, b.lead_present, b.valid_length, cfg, gen)
            out["loss"].backward()
        flops_per_step = fc.get_total_flops()
        opt.zero_grad(set_to_none=True)
        for _ in range(3 if not args.compile else 5):  # warm-up (compilation, allocator, kernels)
            step(loader.next())
        _sync(device)
        t_data = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            td = time.perf_counter()
            batch = loader.next()
            _sync(device)
            t_data += time.perf_counter() - td
            step(batch)
        _sync(device)
        elapsed = time.perf_counter() - t0
    dtype = torch.bfloat16 if bf16 else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda" and any(k in name for k in ("H100", "H200")):
        peak, peak_src = H100_CLASS_BF16_PEAK, "H100/H200 dense bf16 spec"
    else:
        peak, peak_src = measured_peak(device, dtype), f"measured {dtype} 2048^3 matmul"
    achieved = flops_per_step * steps / elapsed
    print(json.dumps({
        "preset": args.preset, "device": name, "dtype": str(dtype).replace("torch.", ""), "compile": args.compile,
        "params_M": round(sum(p.numel() for p in raw.encoder.parameters()) / 1e6, 2),
        "tokens_per_sample": cfg.encoder.n_leads * cfg.encoder.n_patches, "batch_size": B, "steps": steps,
        "torch_threads": torch.get_num_threads(), "step_s": round(elapsed / steps, 4),
        "samples_per_s": round(B * steps / elapsed, 1), "gflop_per_step": round(flops_per_step / 1e9, 2),
        "achieved_tflops": round(achieved / 1e12, 4), "peak_tflops": round(peak / 1e12, 3), "peak_source": peak_src,
        "mfu": round(achieved / peak, 4), "data_wait_frac": round(t_data / elapsed, 4),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
