"""Per-class decision thresholds tuned on the validation split to maximise the Challenge 2020 metric.

Coordinate ascent: start from 0.5 everywhere; for each class in turn try every candidate threshold (a fixed grid
plus the quantiles of that class's validation probabilities) with the other classes fixed, keep the best (ties
keep the current value, so the search never gets worse); repeat ``passes`` sweeps. The Challenge metric couples
the classes (per-record normalisation, off-diagonal rewards), so classes are not tuned independently. No library
tunes thresholds for this metric; the search is hand-written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ecgmodel.metrics.challenge2020 import ChallengeScorer


def candidate_thresholds(probs: np.ndarray, grid: int) -> np.ndarray:
    fixed = np.linspace(0.0, 1.0, grid + 2)[1:-1]
    quant = np.quantile(probs, np.linspace(0.0, 1.0, grid)) if len(probs) else np.zeros(0)
    # a threshold just above each quantile separates ties the same way the quantile itself does
    return np.unique(np.clip(np.concatenate([fixed, quant, np.nextafter(quant, 2.0)]), 1e-6, 1.0))


def tune_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    grid: int = 41,
    passes: int = 2,
    init: float | np.ndarray = 0.5,
) -> tuple[np.ndarray, float]:
    """Thresholds (C,) maximising the Challenge score of ``probs >= thresholds`` on (``labels``, ``probs``).

    Runs with single-threaded BLAS: thousands of tiny (24 x n) @ (n x 24) products are 10-20x slower with a
    multi-threaded BLAS on a busy machine (thread start-up and spinning dominate).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _tune(labels, probs, classes, grid, passes, init)


def _tune(labels, probs, classes, grid, passes, init) -> tuple[np.ndarray, float]:
    labels = np.asarray(labels, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} differ in shape")
    scorer = ChallengeScorer(labels, classes)
    thresholds = np.broadcast_to(np.asarray(init, dtype=np.float64), (probs.shape[1],)).copy()
    outputs = probs >= thresholds
    best = scorer(outputs)
    candidates = [candidate_thresholds(probs[:, k], grid) for k in range(probs.shape[1])]
    for _ in range(passes):
        improved = False
        for k in range(probs.shape[1]):
            column = outputs[:, k].copy()
            for t in candidates[k]:
                outputs[:, k] = probs[:, k] >= t
                score = scorer(outputs)
                if score > best + 1e-12:
                    best, thresholds[k], column, improved = score, t, outputs[:, k].copy(), True
            outputs[:, k] = column
        if not improved:
            break
    return thresholds, float(best)
