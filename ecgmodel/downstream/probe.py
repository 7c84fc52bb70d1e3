"""The linear probe: a convex, L2-regularised logistic regression on frozen-encoder embeddings.

What ``FinetuneConfig.mode == "linear"`` trains (:func:`ecgmodel.downstream.finetune.finetune` calls it):

* features: the frozen encoder embeds every crop tiling every stored window once (the crops whole-record
  evaluation uses, :func:`ecgmodel.downstream.evaluate.embed_crops`), pooled over the tokens of the present leads as
  the mean and the per-feature max concatenated (:data:`PROBE_POOLING`, ``2 * d_model`` features). The pooling is
  fixed here, not a setting chosen by looking at results. Each crop carries its record's label;
* standardisation: per-feature mean and standard deviation of the TRAINING crops of the cell (its labelled
  subset) only (``sklearn.preprocessing.StandardScaler``);
* model: ``sklearn.linear_model.LogisticRegression`` (L-BFGS, L2, ``tol`` and ``max_iter`` of
  :class:`~ecgmodel.downstream.config.ProbeConfig`): one binary problem per class for the multi-label tasks
  (arrhythmia27, ptbxl-superclass; one-vs-rest), one multinomial problem for single-label localization. Class
  weights as in full fine-tuning (``optim.class_weighted``): positives of class k weighted
  ``min(n_neg / n_pos, optim.max_pos_weight)`` (per-class BCE ``pos_weight``), localization classes
  ``n / (K * n_k)`` (balanced cross-entropy), counted over the training records;
* regularisation: ``C`` from ``probe.C_grid`` maximising the task's primary metric on the cell's own validation
  records (the nested validation subset at the cell's fraction, whose labels ``n_labels_used`` counts), scored
  exactly as the final model is (record aggregation of crop probabilities; arrhythmia27 thresholds tuned on those
  records with one coordinate-ascent sweep). Ties keep the smaller C (the stronger regularisation);
* the fitted probe is folded into the torch head (``W / sigma``, ``b - W mu / sigma``), so the saved
  ``model.pt``, :func:`~ecgmodel.downstream.evaluate.predict_records` and threshold tuning use it unchanged.

A class without both outcomes among the training crops (small fractions) gets a constant logit (its training
prevalence, clipped to [1e-4, 1 - 1e-4]); a localization class absent from training gets logit -30 (never
predicted). Fits are single-threaded BLAS (deterministic, and what a 2-core machine shared by cells wants).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

#: the token pooling of the probe's features (see module docstring)
PROBE_POOLING = "meanmax"
ABSENT_CLASS_LOGIT = -30.0


@dataclass
class ProbeFit:
    """One fitted probe in the raw feature space: logits = features @ weight.T + bias."""

    C: float
    weight: np.ndarray  # (n_classes, n_features), standardisation folded in
    bias: np.ndarray  # (n_classes,)
    n_iter: int  # L-BFGS iterations (the most of any one-vs-rest problem)
    converged: bool  # every problem stopped before max_iter


@dataclass
class ProbeSelection:
    best: ProbeFit
    index: int  # position of best.C in the grid
    grid: list[dict] = field(default_factory=list)  # per C: C, score, n_iter, converged
    grid_edge: bool = False  # chosen C is the first or last of a grid of more than one value


def record_class_weights(y_records: np.ndarray, multilabel: bool, n_classes: int, class_weighted: bool,
                         max_pos_weight: float) -> np.ndarray:  # fmt: skip
    """Positive weight per class (multi-label) or weight per class (single-label), counted over records, as the
    full fine-tuning loss weights them."""
    if not class_weighted:
        return np.ones(n_classes)
    if multilabel:
        pos = np.asarray(y_records).sum(axis=0).astype(np.float64)
        neg = len(y_records) - pos
        return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).clip(1.0, max_pos_weight)
    counts = np.bincount(np.asarray(y_records, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(y_records) / (n_classes * np.maximum(counts, 1)), 0.0)


def fit_probe(X: np.ndarray, y: np.ndarray, multilabel: bool, n_classes: int, C: float, class_weight: np.ndarray,
              max_iter: int, tol: float) -> ProbeFit:  # fmt: skip
    """Fit the probe on crop features ``X`` (n, F) with crop labels ``y`` (bool (n, C) or int (n,))."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    W = np.zeros((n_classes, X.shape[1]))
    b = np.zeros(n_classes)
    iters = [0]

    def solve(target: np.ndarray, sample_weight: np.ndarray) -> LogisticRegression:
        model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported as converged=False instead
            model.fit(Z, target, sample_weight=sample_weight)
        iters.append(int(np.max(model.n_iter_)))
        return model

    with threadpool_limits(limits=1, user_api="blas"):
        if multilabel:
            Y = np.asarray(y, dtype=bool)
            for k in range(n_classes):
                yk = Y[:, k]
                if yk.all() or not yk.any():
                    b[k] = _logit(float(yk.mean()) if len(yk) else 0.0)
                    continue
                m = solve(yk.astype(np.int64), np.where(yk, class_weight[k], 1.0))
                W[k], b[k] = m.coef_[0], m.intercept_[0]
        else:
            yc = np.asarray(y, dtype=np.int64)
            present = np.unique(yc)
            b[:] = ABSENT_CLASS_LOGIT
            if len(present) == 1:
                b[present[0]] = 0.0
            else:
                m = solve(yc, class_weight[yc])
                if len(present) == 2:  # binary: one coefficient row, for classes_[1]
                    W[present[1]], b[present[1]], b[present[0]] = m.coef_[0], m.intercept_[0], 0.0
                else:
                    W[m.classes_], b[m.classes_] = m.coef_, m.intercept_
    # fold the standardisation in: w . (x - mu) / sigma + b = (w / sigma) . x + (b - w . mu / sigma)
    scale = scaler.scale_
    weight = W / scale[None, :]
    bias = b - weight @ scaler.mean_
    n_iter = max(iters)
    return ProbeFit(float(C), weight, bias, n_iter, n_iter < max_iter)


def select_probe(X: np.ndarray, y: np.ndarray, multilabel: bool, n_classes: int, C_grid: list[float],
                 class_weight: np.ndarray, max_iter: int, tol: float,
                 score: Callable[[ProbeFit], float]) -> ProbeSelection:  # fmt: skip
    """Fit one probe per C of ``C_grid`` (ascending) and keep the one ``score`` (validation primary metric, higher
    is better, NaN never wins) rates best; ties keep the smaller C."""
    grid = sorted(float(c) for c in C_grid)
    rows: list[dict] = []
    best: tuple[float, int, ProbeFit] | None = None
    for i, C in enumerate(grid):
        fit = fit_probe(X, y, multilabel, n_classes, C, class_weight, max_iter, tol)
        s = float(score(fit))
        rows.append({"C": C, "score": s, "n_iter": fit.n_iter, "converged": fit.converged})
        if best is None or (math.isfinite(s) and (not math.isfinite(best[0]) or s > best[0])):
            best = (s, i, fit)
    assert best is not None
    edge = len(grid) > 1 and best[1] in (0, len(grid) - 1)
    return ProbeSelection(best[2], best[1], rows, edge)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))
