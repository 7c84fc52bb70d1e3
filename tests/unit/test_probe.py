"""The convex linear probe: the folded torch head predicts what scikit-learn's standardise + logistic regression
pipeline predicts, C is chosen on the scoring callback, grid edges and non-convergence are reported, and classes
missing from training are handled."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecgmodel.downstream.probe import ABSENT_CLASS_LOGIT, fit_probe, record_class_weights, select_probe


def _data(n=300, f=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)) * rng.uniform(0.1, 50, f) + rng.normal(0, 100, f)  # unscaled, offset features
    logits = (X - X.mean(0)) / X.std(0) @ rng.normal(size=(f, 3))
    return X, logits


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_multilabel_probe_is_the_sklearn_pipeline_folded():
    X, logits = _data()
    Y = logits + np.random.default_rng(1).normal(size=logits.shape) > 0
    fit = fit_probe(X, Y, True, 3, C=0.3, class_weight=np.ones(3), max_iter=1000, tol=1e-8)
    assert fit.converged and 0 < fit.n_iter < 1000
    for k in range(3):
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=1000, tol=1e-8)).fit(X, Y[:, k])
        np.testing.assert_allclose(_sigmoid(X @ fit.weight[k] + fit.bias[k]), ref.predict_proba(X)[:, 1], atol=1e-6)


def test_multinomial_probe_and_absent_classes():
    X, logits = _data(seed=2)
    y = logits.argmax(1) + 1  # classes 1..3 of 5: 0 and 4 never seen in training
    fit = fit_probe(X, y, False, 5, C=1.0, class_weight=np.ones(5), max_iter=1000, tol=1e-8)
    z = X @ fit.weight.T + fit.bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, tol=1e-8)).fit(X, y)
    np.testing.assert_allclose(p[:, 1:4], ref.predict_proba(X), atol=1e-6)
    assert (fit.bias[[0, 4]] == ABSENT_CLASS_LOGIT).all() and (fit.weight[[0, 4]] == 0).all()
    # two classes present: the binary fit fills both softmax rows (softmax of [0, z] is the sigmoid)
    yb = np.where(logits[:, 0] > 0, 2, 0)
    fb = fit_probe(X, yb, False, 3, C=1.0, class_weight=np.ones(3), max_iter=1000, tol=1e-8)
    zb = X @ fb.weight.T + fb.bias
    pb = np.exp(zb - zb.max(1, keepdims=True))
    pb /= pb.sum(1, keepdims=True)
    refb = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, tol=1e-8)).fit(X, yb)
    np.testing.assert_allclose(pb[:, [0, 2]], refb.predict_proba(X), atol=1e-6)


def test_constant_class_gets_its_prevalence_and_weights_follow_the_loss():
    X, logits = _data()
    Y = np.zeros((len(X), 2), bool)
    Y[:, 1] = logits[:, 0] > 0
    fit = fit_probe(X, Y, True, 2, C=1.0, class_weight=np.ones(2), max_iter=500, tol=1e-6)
    assert (fit.weight[0] == 0).all() and fit.bias[0] == pytest.approx(np.log(1e-4 / (1 - 1e-4)))
    w = record_class_weights(np.array([[1, 0], [0, 0], [0, 0], [1, 0]], bool), True, 2, True, 20.0)
    np.testing.assert_allclose(w, [1.0, 1.0])  # 2 pos / 2 neg -> 1; no positives -> 1
    w = record_class_weights(np.array([[1], [0], [0], [0], [0]], bool), True, 1, True, 3.0)
    np.testing.assert_allclose(w, [3.0])  # 4 / 1 capped at max_pos_weight
    np.testing.assert_allclose(record_class_weights(np.array([0, 0, 0, 1]), False, 3, True, 20.0), [4 / 9, 4 / 3, 0])


def test_select_probe_takes_the_best_score_and_flags_edges_and_non_convergence():
    X, logits = _data()
    Y = logits > 0
    picks = iter([0.5, 0.9, 0.9, float("nan")])  # ties keep the smaller C; NaN never wins
    sel = select_probe(X, Y, True, 3, [10.0, 0.01, 1.0, 0.1], np.ones(3), 1000, 1e-6, lambda fit: next(picks))
    assert [r["C"] for r in sel.grid] == [0.01, 0.1, 1.0, 10.0]
    assert sel.best.C == 0.1 and sel.index == 1 and not sel.grid_edge
    edge = select_probe(X, Y, True, 3, [0.01, 1.0], np.ones(3), 1000, 1e-6, lambda fit: fit.C)
    assert edge.best.C == 1.0 and edge.grid_edge
    capped = fit_probe(X, Y, True, 3, C=100.0, class_weight=np.ones(3), max_iter=2, tol=1e-12)
    assert capped.n_iter == 2 and not capped.converged
