"""Paired bootstrap over test records (and seeds) for differences between two ablation arms.

The ablation's figures are differences of a task metric between two arms evaluated on the SAME test records:
SSL - random at one label fraction (a *gain*), or SSL at fraction f - random at 100 % (the non-inferiority
comparison behind ``labels_to_match``). Each arm has one run per seed; seed ``s`` draws the same label subset for
both inits, so arms are paired by seed when they have the same seeds.

One bootstrap replicate draws the test records with replacement (one draw shared by both arms: the pairing that
removes the between-record variance both arms share) and the seeds with replacement (shared when paired), and
recomputes ``mean over drawn seeds of metric(arm A) - mean of metric(arm B)`` on the drawn records. The
percentile interval of the replicates is the CI; the point estimate is the difference on the full test set.
Metrics that are not averages over records (the Challenge score, macro AUROC) are recomputed on every replicate,
which is why the predictions, not per-run scores, are bootstrapped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from threadpoolctl import threadpool_limits

from ecgmodel.metrics.challenge2020 import challenge_score_scored, to_scored_space

PREDICTIONS_FILE = "test_predictions.npz"


@dataclass
class Predictions:
    """One run's test predictions: ``keys`` (record ids), ``y`` labels, ``probs``, ``outputs`` (thresholded or
    argmax), aligned by row."""

    keys: np.ndarray
    y: np.ndarray
    probs: np.ndarray
    outputs: np.ndarray
    classes: list[str]

    def take(self, order: np.ndarray) -> Predictions:
        return Predictions(self.keys[order], self.y[order], self.probs[order], self.outputs[order], self.classes)


def load_predictions(path: str | Path) -> Predictions:
    with np.load(path, allow_pickle=False) as z:
        return Predictions(z["keys"].astype(str), z["y"], z["probs"], z["outputs"], [str(c) for c in z["classes"]])


# ---------------------------------------------------------------------------------------------- metrics
def fast_macro_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Macro AUROC (Mann-Whitney form, ties averaged) over the classes with both positives and negatives."""
    y = np.asarray(y, bool)
    n = len(y)
    pos = y.sum(axis=0)
    ok = (pos > 0) & (pos < n)
    if not ok.any():
        return math.nan
    ranks = rankdata(scores[:, ok], axis=0)
    p = pos[ok].astype(np.float64)
    auc = ((ranks * y[:, ok]).sum(axis=0) - p * (p + 1) / 2) / (p * (n - p))
    return float(auc.mean())


def metric_function(task: str, metric: str) -> Callable[[Predictions], float]:
    """The function that recomputes ``metric`` (``test_`` prefix allowed) of ``task`` on a set of predictions."""
    name = metric.removeprefix("test_")
    if name == "challenge_score":
        fn = lambda p: challenge_score_scored(p.y, p.outputs)  # noqa: E731 - arrays mapped by :func:`prepare`
        fn.weighted = weighted_challenge_score  # type: ignore[attr-defined]
        return fn
    if name == "macro_auroc":
        return lambda p: fast_macro_auroc(p.y, p.probs)
    if name == "accuracy" and task == "localization":
        fn = lambda p: float(np.mean(p.outputs == p.y)) if len(p.y) else math.nan  # noqa: E731
        fn.weighted = lambda p, w: float(np.sum(w * (p.outputs == p.y)) / max(w.sum(), 1))  # type: ignore[attr-defined]
        return fn
    if name == "balanced_accuracy" and task == "localization":
        def balanced(p: Predictions) -> float:
            recalls = [np.mean(p.outputs[p.y == c] == c) for c in np.unique(p.y)]
            return float(np.mean(recalls)) if recalls else math.nan
        return balanced
    raise ValueError(f"no bootstrap for metric {metric!r} of task {task!r} (challenge_score, macro_auroc, "
                     "accuracy, balanced_accuracy)")  # fmt: skip


def weighted_challenge_score(p: Predictions, counts: np.ndarray) -> float:
    """The Challenge score of a bootstrap replicate given as per-record multiplicities ``counts`` (the same as
    scoring the records repeated ``counts`` times, without copying them); arrays in the 24-class scored space."""
    from ecgmodel.data.labels import NORMAL_CLASS
    from ecgmodel.metrics.challenge2020 import official_weights

    scored, weights = official_weights()
    labels, outputs = np.asarray(p.y, bool), np.asarray(p.outputs, bool)
    lab = labels.astype(np.float64)
    c = np.asarray(counts, np.float64)

    def confusion(out: np.ndarray) -> np.ndarray:
        norm = np.maximum(np.count_nonzero(labels | out, axis=1), 1).astype(np.float64)
        return (lab * (c / norm)[:, None]).T @ out.astype(np.float64)

    observed = np.nansum(weights * confusion(outputs))
    correct = np.nansum(weights * confusion(labels))
    inactive_out = np.zeros_like(labels)
    inactive_out[:, scored.index(NORMAL_CLASS)] = True
    inactive = np.nansum(weights * confusion(inactive_out))
    return float(observed - inactive) / float(correct - inactive) if correct != inactive else math.nan


def prepare(p: Predictions, metric: str) -> Predictions:
    """Map a run's arrays into the space ``metric`` is computed in (Challenge score: the 24 scored classes)."""
    if metric.removeprefix("test_") == "challenge_score":
        return Predictions(p.keys, to_scored_space(p.y, p.classes), p.probs, to_scored_space(p.outputs, p.classes),
                           p.classes)  # fmt: skip
    return p


def _align(runs: Sequence[Predictions], keys: np.ndarray) -> list[Predictions]:
    out = []
    for r in runs:
        pos = {k: i for i, k in enumerate(r.keys)}
        out.append(r.take(np.array([pos[k] for k in keys], dtype=np.int64)))
    return out


# ---------------------------------------------------------------------------------------------- bootstrap
def paired_bootstrap(
    arm_a: Sequence[Predictions],
    arm_b: Sequence[Predictions],
    metric: Callable[[Predictions], float],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Difference ``mean metric(A) - mean metric(B)`` with its paired-bootstrap percentile CI (module docstring).

    ``arm_a`` / ``arm_b``: one :class:`Predictions` per seed (paired by position when both have as many); records
    are matched by key and only the records both arms scored are used. Returns estimate, ci_low, ci_high,
    n_records, n_seeds_a, n_seeds_b, n_boot (valid replicates)."""
    if not arm_a or not arm_b:
        return {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_records": 0,
                "n_seeds_a": len(arm_a), "n_seeds_b": len(arm_b), "n_boot": 0}  # fmt: skip
    common = set(arm_a[0].keys)
    for r in (*arm_a, *arm_b):
        common &= set(r.keys)
    keys = np.array(sorted(common))
    a, b = _align(arm_a, keys), _align(arm_b, keys)
    n = len(keys)
    estimate = float(np.nanmean([metric(r) for r in a]) - np.nanmean([metric(r) for r in b])) if n else math.nan
    with threadpool_limits(limits=1, user_api="blas"):  # thousands of tiny products: threads only cost here
        diffs = _replicates(a, b, metric, n, n_boot, seed)
    if diffs:
        lo, hi = np.percentile(diffs, [50 * (1 - confidence), 50 * (1 + confidence)])
    else:
        lo = hi = math.nan
    return {"estimate": estimate, "ci_low": float(lo), "ci_high": float(hi), "n_records": int(n),
            "n_seeds_a": len(a), "n_seeds_b": len(b), "n_boot": len(diffs)}  # fmt: skip


def _replicates(a: list[Predictions], b: list[Predictions], metric, n: int, n_boot: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    paired = len(a) == len(b)
    diffs = []
    for _ in range(n_boot if n else 0):
        idx = rng.integers(0, n, n)
        sa = rng.integers(0, len(a), len(a))
        sb = sa if paired else rng.integers(0, len(b), len(b))
        if hasattr(metric, "weighted"):  # per-record multiplicities instead of copies: same value, faster
            w = np.bincount(idx, minlength=n)
            ma = {s: metric.weighted(a[s], w) for s in set(sa.tolist())}
            mb = {s: metric.weighted(b[s], w) for s in set(sb.tolist())}
        else:
            ma = {s: metric(a[s].take(idx)) for s in set(sa.tolist())}
            mb = {s: metric(b[s].take(idx)) for s in set(sb.tolist())}
        d = np.mean([ma[s] for s in sa]) - np.mean([mb[s] for s in sb])
        if np.isfinite(d):
            diffs.append(d)
    return diffs


def labels_to_match(lower_bounds: dict[float, float], margin: float) -> float:
    """Non-inferiority ``labels_to_match``: the smallest fraction f such that at f AND every larger fraction the
    lower CI bound of SSL(f) - random(100 %) is at least ``-margin``; NaN ("not reached") when even the largest
    fraction fails, or when a bound is missing. A curve that passes at 20 % but fails at 40 % does not count
    20 %: only an unbroken run up to the largest fraction does."""
    if margin < 0:
        raise ValueError(f"non-inferiority margin must be >= 0, got {margin}")
    found = math.nan
    for f in sorted(lower_bounds, reverse=True):
        lb = lower_bounds[f]
        if lb is None or not math.isfinite(lb) or lb < -margin:
            break
        found = float(f)
    return found
