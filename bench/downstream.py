"""Benchmark: downstream metric, threshold tuning and fine-tuning step throughput.

    python bench/downstream.py [--records 10000] [--val 2000] [--device cpu]

* ``challenge_score`` (vectorised) vs the official per-record/per-class loops (baseline, same inputs, same run);
* per-class threshold coordinate ascent on a validation set of ``--val`` records (27 classes);
* training windows/s of a fine-tuning step (default FinetuneConfig encoder, batch 32, 2500-sample crops),
  full fine-tune vs linear probe.

Prints one JSON object. Targets: vectorised score >= 100x the loops and < 50 ms on 10k records; threshold
tuning < 10 s on 2000 records; linear probe faster per step than full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ecgmodel.data.labels import NORMAL_CLASS, scored_codes
from ecgmodel.data.transforms import to_model_input
from ecgmodel.downstream.config import FinetuneConfig
from ecgmodel.downstream.model import DownstreamModel
from ecgmodel.downstream.thresholds import tune_thresholds
from ecgmodel.metrics.challenge2020 import challenge_score, official_weights, to_scored_space
from ecgmodel.models.encoder import build_encoder


def loop_score(labels: np.ndarray, outputs: np.ndarray, classes: list[str]) -> float:
    """The official algorithm's loops (evaluate_12ECG_score.py), on the scored-space arrays."""
    scored, weights = official_weights()
    lab, out = to_scored_space(labels, classes), to_scored_space(outputs, classes)

    def confusion(a, b):
        m = np.zeros((a.shape[1], a.shape[1]))
        for i in range(len(a)):
            norm = float(max(np.sum(np.any((a[i], b[i]), axis=0)), 1))
            for j in range(a.shape[1]):
                if a[i, j]:
                    for k in range(a.shape[1]):
                        if b[i, k]:
                            m[j, k] += 1.0 / norm
        return m

    inactive = np.zeros_like(lab)
    inactive[:, scored.index(NORMAL_CLASS)] = True
    obs, cor, ina = (np.nansum(weights * confusion(lab, x)) for x in (out, lab, inactive))
    return float(obs - ina) / float(cor - ina)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def bench_steps(mode: str, device: torch.device, steps: int, batch: int = 32) -> float:
    cfg = FinetuneConfig()
    torch.manual_seed(0)
    model = DownstreamModel(build_encoder(cfg.encoder), 27, mode).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sig = torch.randint(-2000, 2000, (batch, 12, 5000), dtype=torch.int16)
    target = (torch.rand(batch, 27) < 0.1).float().to(device)
    model.train()

    def step():
        x = to_model_input(sig, length=cfg.encoder.input_samples).to(device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    classes = scored_codes()
    rng = np.random.default_rng(0)
    prevalence = np.linspace(0.01, 0.2, len(classes))
    labels = rng.random((args.records, len(classes))) < prevalence
    outputs = labels ^ (rng.random(labels.shape) < 0.05)

    t_vec, s_vec = timed(lambda: challenge_score(labels, outputs, classes))
    n_loop = min(args.records, 1000)
    t_loop, s_loop = timed(lambda: loop_score(labels[:n_loop], outputs[:n_loop], classes), repeat=1)
    t_vec_small, s_small = timed(lambda: challenge_score(labels[:n_loop], outputs[:n_loop], classes))
    assert abs(s_small - s_loop) < 1e-9, (s_small, s_loop)

    val = labels[: args.val]
    probs = np.clip(np.where(val, 0.35, 0.15) + rng.normal(0, 0.1, val.shape), 0, 1)
    t_tune, (thr, tuned) = timed(lambda: tune_thresholds(val, probs, classes), repeat=1)

    device = torch.device(args.device)
    full = bench_steps("full", device, args.steps)
    linear = bench_steps("linear", device, args.steps)
    print(json.dumps({
        "records": args.records,
        "challenge_score_s": round(t_vec, 5),
        "challenge_score": round(s_vec, 6),
        "loop_records": n_loop,
        "loop_s": round(t_loop, 3),
        "vectorised_same_records_s": round(t_vec_small, 5),
        "speedup_vs_loops": round(t_loop / t_vec_small, 1),
        "tune_val_records": args.val,
        "tune_s": round(t_tune, 2),
        "tuned_score": round(tuned, 4),
        "score_at_0.5": round(challenge_score(val, probs >= 0.5, classes), 4),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "full_windows_per_s": round(full, 1),
        "linear_windows_per_s": round(linear, 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
