"""Hierarchical paired bootstrap (pretraining runs, fine-tuning seeds, test records) for ablation differences.

The ablation's figures are differences of a task metric between two arms evaluated on the SAME test records:
SSL - random at one label fraction (a *gain*), or SSL at fraction f - random at 100 % (the non-inferiority
comparison behind ``labels_to_match``). Each arm has one run per seed; seed ``s`` draws the same label subset for
both inits, so arms are paired by seed when they have the same seeds.

An SSL arm has K pretraining runs (K encoders of one recipe, different pretraining seeds), each fine-tuned with
the same seeds. One bootstrap replicate draws each arm's pretraining runs with replacement, then the fine-tuning
seeds (one draw shared by both arms: paired by seed NUMBER, the same label subset), then the test records (one
draw shared by both arms, matched by record key: the pairing that removes the between-record variance both arms
share), and recomputes ``value(A) - value(B)``, value being the mean over pretraining runs of the mean over seeds
of the metric on the drawn records. A failed cell is absent from its pretraining run; it never shifts a pairing. The
percentile interval of the replicates is the CI; the point estimate is the difference on the full test set.
Metrics that are not averages over records (the Challenge score, macro AUROC) are recomputed on every replicate,
which is why the predictions, not per-run scores, are bootstrapped. Percentile intervals of the metric's own values
stay inside its range (no t-intervals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    #: per-class tie groups of ``probs`` (see :func:`weighted_macro_auroc`), built on first use
    _tie_groups: list | None = field(default=None, repr=False, compare=False)

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


def weighted_macro_auroc(p: Predictions, counts: np.ndarray) -> float:
    """:func:`fast_macro_auroc` of a bootstrap replicate given as per-record multiplicities ``counts`` (the same as
    ranking the records repeated ``counts`` times, without copying or re-ranking them).

    Mann-Whitney form with ties counted one half: for each class, sum over positive records of their weight times
    the weight of negatives scored below them (plus half the tied ones), divided by W_pos * W_neg. The scores' tie
    groups are found once per prediction set, so a replicate costs a few weighted bincounts instead of a sort.
    Written here because scikit-learn's ``roc_auc_score(sample_weight=...)`` re-sorts on every call."""
    if p._tie_groups is None:
        p._tie_groups = [np.unique(p.probs[:, k], return_inverse=True)[1] for k in range(p.probs.shape[1])]
    y = np.asarray(p.y, bool)
    c = np.asarray(counts, np.float64)
    aucs = []
    for k, inv in enumerate(p._tie_groups):
        pos = np.bincount(inv, weights=c * y[:, k])
        neg = np.bincount(inv, weights=c * ~y[:, k])
        w_pos, w_neg = pos.sum(), neg.sum()
        if w_pos <= 0 or w_neg <= 0:
            continue
        below = np.cumsum(neg) - neg
        aucs.append(float(np.dot(pos, below + 0.5 * neg) / (w_pos * w_neg)))
    return float(np.mean(aucs)) if aucs else math.nan


def metric_function(task: str, metric: str) -> Callable[[Predictions], float]:
    """The function that recomputes ``metric`` (``test_`` prefix allowed) of ``task`` on a set of predictions."""
    name = metric.removeprefix("test_")
    if name == "challenge_score":
        fn = lambda p: challenge_score_scored(p.y, p.outputs)  # noqa: E731 - arrays mapped by :func:`prepare`
        fn.weighted = weighted_challenge_score  # type: ignore[attr-defined]
        return fn
    if name == "macro_auroc":
        fn = lambda p: fast_macro_auroc(p.y, p.probs)  # noqa: E731
        fn.weighted = weighted_macro_auroc  # type: ignore[attr-defined]
        return fn
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


# ---------------------------------------------------------------------------------------------- bootstrap
#: Arm of a comparison: pretraining-run id -> fine-tuning seed -> that cell's test predictions. Arms that are not
#: pretrained (random, supervised) have one pseudo pretraining run ``""``. Pairing is by identity: the seed NUMBER
#: (the same label subset in both arms) and the record key; a failed cell is simply absent from its run.
Arm = dict[str, dict[int, Predictions]]

#: below this many common test records a bootstrap cannot vary enough to support any verdict
MIN_TEST_RECORDS = 5
TOO_FEW_RECORDS = "too few test records"


def as_arm(runs: Sequence[Predictions] | Arm) -> Arm:
    """A list of per-seed predictions (seed = position) as a one-pretraining-run :data:`Arm`."""
    if isinstance(runs, dict):
        return runs
    return {"": dict(enumerate(runs))}


def _common_keys(*arms: Arm) -> np.ndarray:
    common: set | None = None
    for arm in arms:
        for cells in arm.values():
            for p in cells.values():
                common = set(p.keys) if common is None else common & set(p.keys)
    return np.array(sorted(common or ()))


def _aligned(arm: Arm, keys: np.ndarray) -> Arm:
    out: Arm = {}
    for run, cells in arm.items():
        out[run] = {}
        for s, p in cells.items():
            pos = {k: i for i, k in enumerate(p.keys)}
            out[run][s] = p.take(np.array([pos[k] for k in keys], dtype=np.int64))
    return out


def _arm_value(arm: Arm, runs: Sequence[str], seeds: Sequence[int], score) -> float:
    """Mean over the drawn pretraining runs of the mean over the drawn seeds present in that run (a failed cell is
    absent: its seed is skipped in that run only, no other cell takes its place)."""
    per_run = []
    for r in runs:
        vals = [score(r, s) for s in seeds if s in arm[r]]
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            per_run.append(float(np.mean(vals)))
    return float(np.mean(per_run)) if per_run else math.nan


def _replicate_value(arm: Arm, runs: Sequence[str], seeds: Sequence[int], idx: np.ndarray, metric) -> float:
    """:func:`_arm_value` on the records ``idx`` (each drawn cell scored once)."""
    weights = np.bincount(idx, minlength=len(next(iter(next(iter(arm.values())).values())).keys))
    cache: dict[tuple[str, int], float] = {}

    def score(r: str, s: int) -> float:
        if (r, s) not in cache:
            p = arm[r][s]
            # per-record multiplicities instead of copies where the metric supports it: same value, faster
            cache[(r, s)] = metric.weighted(p, weights) if hasattr(metric, "weighted") else metric(p.take(idx))
        return cache[(r, s)]

    return _arm_value(arm, runs, seeds, score)


def hierarchical_bootstrap(
    arm_a: Sequence[Predictions] | Arm,
    arm_b: Sequence[Predictions] | Arm | None,
    metric: Callable[[Predictions], float],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``value(A) - value(B)`` (or ``value(A)`` when ``arm_b`` is None) with its hierarchical paired-bootstrap CI.

    value(arm) = mean over pretraining runs of the mean over fine-tuning seeds of the metric on the test records.
    One replicate draws, with replacement: each arm's pretraining runs (independently: different arms have
    different pretraining runs), then fine-tuning seeds from the union of seed numbers (one draw shared by both
    arms: seed s is the same label subset in both), then test records (one draw shared by both arms, matched by
    key). Percentile interval; the estimate uses every run, seed and common record. ``too_few`` is True when the
    replicates cannot vary (fewer than :data:`MIN_TEST_RECORDS` common records, or a zero-width interval): such a
    comparison supports no verdict."""
    a = as_arm(arm_a)
    b = as_arm(arm_b) if arm_b is not None else None
    a = {r: c for r, c in a.items() if c}
    b = {r: c for r, c in b.items() if c} if b is not None else None
    empty = {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_records": 0, "n_boot": 0,
             "n_cells_a": sum(map(len, a.values())), "n_cells_b": sum(map(len, (b or {}).values())),
             "n_pretrain_a": len(a), "n_pretrain_b": len(b or {}), "too_few": True}  # fmt: skip
    if not a or (b is not None and not b):
        return empty
    keys = _common_keys(a, *([b] if b is not None else []))
    n = len(keys)
    if not n:
        return empty
    a = _aligned(a, keys)
    b = _aligned(b, keys) if b is not None else None
    seeds = sorted({s for arm in ([a, b] if b is not None else [a]) for c in arm.values() for s in c})
    runs_a, runs_b = sorted(a), sorted(b) if b is not None else []

    def full(arm: Arm, runs: list[str]) -> float:
        return _arm_value(arm, runs, seeds, lambda r, s: metric(arm[r][s]))

    estimate = full(a, runs_a) - (full(b, runs_b) if b is not None else 0.0)
    rng = np.random.default_rng(seed)
    reps = []
    with threadpool_limits(limits=1, user_api="blas"):  # thousands of tiny products: threads only cost here
        for _ in range(n_boot):
            ra = [runs_a[i] for i in rng.integers(0, len(runs_a), len(runs_a))]
            rb = [runs_b[i] for i in rng.integers(0, len(runs_b), len(runs_b))] if b is not None else []
            ss = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
            idx = rng.integers(0, n, n)
            d = _replicate_value(a, ra, ss, idx, metric)
            if b is not None:
                d -= _replicate_value(b, rb, ss, idx, metric)
            if np.isfinite(d):
                reps.append(d)
    if reps:
        lo, hi = (float(v) for v in np.percentile(reps, [50 * (1 - confidence), 50 * (1 + confidence)]))
    else:
        lo = hi = math.nan
    too_few = bool(n < MIN_TEST_RECORDS or not reps or hi - lo <= 0.0)
    return {**empty, "estimate": float(estimate), "ci_low": lo, "ci_high": hi, "n_records": int(n),
            "n_boot": len(reps), "too_few": too_few}  # fmt: skip


def paired_bootstrap(
    arm_a: Sequence[Predictions] | Arm,
    arm_b: Sequence[Predictions] | Arm,
    metric: Callable[[Predictions], float],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`hierarchical_bootstrap` of A - B; lists are one pretraining run whose seeds are the positions.
    Also returns ``n_seeds_a`` / ``n_seeds_b`` (cells per arm)."""
    res = hierarchical_bootstrap(arm_a, arm_b, metric, n_boot, confidence, seed)
    return {**res, "n_seeds_a": res["n_cells_a"], "n_seeds_b": res["n_cells_b"]}


def seed_interval(values: dict[tuple[str, int], float], n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of an arm's mean score from per-cell scores ``{(pretraining run, seed):
    value}``: pretraining runs, then seeds, resampled. Inside the range of the scores (so inside the metric's
    range), unlike a t-interval; NaN with a single cell."""
    vals = {k: v for k, v in values.items() if v is not None and np.isfinite(v)}
    if len(vals) < 2:
        return math.nan, math.nan
    runs = sorted({r for r, _ in vals})
    seeds = sorted({s for _, s in vals})
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        rr = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        ss = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        per_run = [np.mean(v) for v in ([vals[(r, s)] for s in ss if (r, s) in vals] for r in rr) if v]
        if per_run:
            reps.append(float(np.mean(per_run)))
    lo, hi = np.percentile(reps, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


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
