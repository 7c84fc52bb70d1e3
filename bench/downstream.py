"""Benchmark: downstream metric, threshold tuning and fine-tuning step throughput.

    python bench/downstream.py [--records 10000] [--val 2000] [--device cpu]

* ``challenge_score`` (vectorised) vs the official per-record/per-class loops (baseline, same inputs, same run);
* per-class threshold coordinate ascent on a validation set of ``--val`` records (27 classes);
* the two fine-tuning modes on the same ``--crops`` crops (default FinetuneConfig encoder, 2500-sample crops):
  full fine-tuning = training steps (batch 32) over the crops, i.e. ONE epoch; linear probe = the frozen encoder
  embeds every crop once (no grad) and ``select_probe`` fits the L2 logistic regression for every C of the default
  ``probe.C_grid`` (27 one-vs-rest problems, ~10 % positives).

Prints one JSON object. Targets: vectorised score >= 100x the loops and < 50 ms on 10k records; threshold
tuning < 10 s on 2000 records; a whole linear-probe cell (embedding + every C) cheaper than one epoch of full
fine-tuning on the same crops (full fine-tuning trains tens of epochs).
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
from ecgmodel.downstream.probe import PROBE_POOLING, record_class_weights, select_probe
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


def bench_modes(device: torch.device, crops: int, batch: int = 32) -> dict[str, float]:
    """Seconds for one full fine-tuning epoch over ``crops`` crops vs a whole linear-probe cell on them."""
    cfg = FinetuneConfig()
    torch.manual_seed(0)
    n_classes = 27
    g = torch.Generator().manual_seed(0)
    sig = torch.randint(-2000, 2000, (crops, 12, cfg.encoder.input_samples), dtype=torch.int16, generator=g)
    target = torch.rand(crops, n_classes, generator=g) < 0.1

    model = DownstreamModel(build_encoder(cfg.encoder), n_classes, "full").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def epoch() -> None:
        for i in range(0, crops, batch):
            x = to_model_input(sig[i:i + batch], length=cfg.encoder.input_samples).to(device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target[i:i + batch].float().to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()

    t_full, _ = timed(epoch, repeat=1)

    encoder = build_encoder(cfg.encoder).to(device).eval()

    def embed() -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, crops, 4 * batch):
                x = to_model_input(sig[i:i + 4 * batch], length=cfg.encoder.input_samples).to(device)
                out.append(encoder.embed(x, pooling=PROBE_POOLING).float().cpu().numpy())
        return np.concatenate(out)

    t_embed, X = timed(embed, repeat=1)
    y = target.numpy()
    weights = record_class_weights(y, True, n_classes, cfg.optim.class_weighted, cfg.optim.max_pos_weight)
    t_fit, sel = timed(lambda: select_probe(X, y, True, n_classes, list(cfg.probe.C_grid), weights,
                                            cfg.probe.max_iter, cfg.probe.tol, score=lambda fit: 0.0), repeat=1)
    return {"crops": crops, "full_epoch_s": round(t_full, 2), "full_windows_per_s": round(crops / t_full, 1),
            "linear_embed_s": round(t_embed, 2), "linear_fit_s": round(t_fit, 2),
            "linear_fits": len(sel.grid), "linear_cell_s": round(t_embed + t_fit, 2),
            "full_epoch_over_linear_cell": round(t_full / (t_embed + t_fit), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--crops", type=int, default=1024, help="crops of the fine-tuning comparison")
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
    modes = bench_modes(device, args.crops)
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
        **modes,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
