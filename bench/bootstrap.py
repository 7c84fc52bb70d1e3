"""Benchmark: the paired bootstrap behind every CI of an ablation report (``ecgmodel.metrics.bootstrap``).

    python bench/bootstrap.py [--records 2000] [--seeds 5] [--replicates 1000]

Times one SSL - random comparison (two arms x ``--seeds`` runs on ``--records`` test records, ``--replicates``
replicates) for the Challenge score (24 scored classes) and macro AUROC (5 classes), and extrapolates to a full
default report (7 fractions x 2 modes x 2 comparisons); for macro AUROC also the baseline that copies and re-ranks
each replicate's records (same intervals, same run). Prints one JSON object. Target: a full default report's
bootstrap in under 10 minutes on 2 cores at 2000 test records.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ecgmodel.data.labels import merged_scored_codes
from ecgmodel.metrics.bootstrap import (
    Predictions,
    fast_macro_auroc,
    metric_function,
    paired_bootstrap,
    prepare,
)


def arm(rng: np.random.Generator, y: np.ndarray, classes: list[str], noise: float) -> Predictions:
    probs = np.clip(y * 0.6 + rng.random(y.shape) * noise, 0, 1)
    keys = np.array([f"r{i}" for i in range(len(y))])
    return Predictions(keys, y, probs, probs >= 0.5, classes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--replicates", type=int, default=1000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    out = {"records": args.records, "seeds": args.seeds, "replicates": args.replicates}
    for name, classes, metric in (("challenge_score", merged_scored_codes(), "test_challenge_score"),
                                  ("macro_auroc", ["NORM", "MI", "STTC", "CD", "HYP"], "test_macro_auroc")):
        y = rng.random((args.records, len(classes))) < 0.1
        fn = metric_function("arrhythmia27" if name == "challenge_score" else "ptbxl-superclass", metric)
        a = [prepare(arm(rng, y, classes, 0.7), metric) for _ in range(args.seeds)]
        b = [prepare(arm(rng, y, classes, 0.8), metric) for _ in range(args.seeds)]
        t0 = time.perf_counter()
        res = paired_bootstrap(a, b, fn, n_boot=args.replicates)
        seconds = time.perf_counter() - t0
        out[name] = {"seconds_per_comparison": round(seconds, 2), "estimate": round(res["estimate"], 4),
                     "ci": [round(res["ci_low"], 4), round(res["ci_high"], 4)],
                     "full_report_minutes": round(seconds * 7 * 2 * 2 / 60, 1)}  # fmt: skip
        if name == "macro_auroc":  # baseline, same run: every replicate copies its records and re-ranks them
            t0 = time.perf_counter()
            base = paired_bootstrap(a, b, lambda q: fast_macro_auroc(q.y, q.probs), n_boot=args.replicates)
            copies = time.perf_counter() - t0
            assert abs(base["ci_low"] - res["ci_low"]) < 1e-9 and abs(base["ci_high"] - res["ci_high"]) < 1e-9
            out[name].update({"copies_seconds_per_comparison": round(copies, 2),
                              "speedup_vs_copies": round(copies / seconds, 1)})  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
