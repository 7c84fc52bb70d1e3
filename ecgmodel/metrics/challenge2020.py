"""The official PhysioNet/CinC Challenge 2020 metric, reproduced exactly.

Semantics follow ``evaluate_12ECG_score.py`` of physionetchallenges/evaluation-2020 (final version, BSD-2-Clause):

1. the scored classes are the rows of ``weights.csv`` with each equivalent code replaced by its representative
   (713427006=59118001, 284470004=63593006, 427172004=17338001), duplicates removed -> 24 classes;
2. a record's label / binary output for a representative class is positive when any code of its group is;
   codes outside the weight table are ignored;
3. modified confusion matrix ``A[j, k] += 1 / max(|labels_i OR outputs_i|, 1)`` for every positive label j and
   positive output k of record i;
4. ``observed = sum(W * A(labels, outputs))``; ``correct`` uses outputs = labels; ``inactive`` predicts only the
   normal class 426783006; score = (observed - inactive) / (correct - inactive), NaN when correct == inactive (as the official
   scorer, whose division yields NaN there).

No library computes this metric, so it is hand-written; ``tests/unit/test_challenge_metric.py`` compares it with a
literal transcription of the official loops on random inputs. The computation is vectorised: step 3 is
``(L / n)^T @ O`` with ``n`` the per-record normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from ecgmodel.data.labels import NORMAL_CLASS, aux_path, representative


@lru_cache(maxsize=1)
def official_weights() -> tuple[tuple[str, ...], np.ndarray]:
    """(classes, W): the 24 representative classes in weights.csv order and their reward matrix.

    Checks, as the official loader does, that equivalent codes carry identical rows and columns.
    """
    table = pd.read_csv(aux_path("weights.csv"), index_col=0, dtype=str)
    rows = [str(r).strip() for r in table.index]
    cols = [str(c).strip() for c in table.columns]
    if rows != cols:
        raise ValueError("weights.csv: row and column labels differ")
    values = table.to_numpy(dtype=np.float64)
    reps = [representative(c) for c in rows]
    classes: list[str] = []
    indices: list[int] = []
    for i, rep in enumerate(reps):
        if rep in classes:
            first = indices[classes.index(rep)]
            if not (np.array_equal(values[i], values[first]) and np.array_equal(values[:, i], values[:, first])):
                raise ValueError(f"weights.csv: equivalent codes {rows[first]} and {rows[i]} differ in weight")
            continue
        classes.append(rep)
        indices.append(i)
    weights = values[np.ix_(indices, indices)]
    return tuple(classes), weights


def to_scored_space(matrix: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Map a bool (n, len(classes)) matrix onto the 24 representative classes (any-of within a group)."""
    scored, _ = official_weights()
    position = {c: i for i, c in enumerate(scored)}
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != len(classes):
        raise ValueError(f"expected an (n_records, {len(classes)}) array, got shape {matrix.shape}")
    out = np.zeros((matrix.shape[0], len(scored)), dtype=bool)
    for j, code in enumerate(classes):
        k = position.get(representative(str(code)))
        if k is not None:  # unscored codes are ignored, as in the official loader
            out[:, k] |= matrix[:, j].astype(bool)
    return out


def modified_confusion_matrix(labels: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """The Challenge's multi-label confusion matrix (rows: labels, columns: outputs), per-record normalised."""
    labels = np.asarray(labels, dtype=bool)
    outputs = np.asarray(outputs, dtype=bool)
    norm = np.maximum(np.count_nonzero(labels | outputs, axis=1), 1).astype(np.float64)
    return (labels / norm[:, None]).T @ outputs.astype(np.float64)


def challenge_score_scored(labels: np.ndarray, outputs: np.ndarray) -> float:
    """The metric on arrays already in the 24-class scored space (see :func:`official_weights`)."""
    scored, weights = official_weights()
    normal = scored.index(NORMAL_CLASS)
    observed = np.nansum(weights * modified_confusion_matrix(labels, outputs))
    correct = np.nansum(weights * modified_confusion_matrix(labels, labels))
    inactive_outputs = np.zeros_like(labels, dtype=bool)
    inactive_outputs[:, normal] = True
    inactive = np.nansum(weights * modified_confusion_matrix(labels, inactive_outputs))
    if correct != inactive:
        return float(observed - inactive) / float(correct - inactive)
    return float("nan")


def challenge_score(labels: np.ndarray, outputs: np.ndarray, classes: Sequence[str]) -> float:
    """Official Challenge 2020 score of binary ``outputs`` against ``labels``.

    ``labels``, ``outputs``: bool arrays (n_records, len(classes)); ``classes``: SNOMED CT code strings in column
    order (e.g. :func:`ecgmodel.data.labels.scored_codes`). 1.0 = perfect, 0.0 = predicting sinus rhythm only.
    """
    labels = np.asarray(labels)
    outputs = np.asarray(outputs)
    if labels.shape != outputs.shape:
        raise ValueError(f"labels {labels.shape} and outputs {outputs.shape} differ in shape")
    return challenge_score_scored(to_scored_space(labels, classes), to_scored_space(outputs, classes))


class ChallengeScorer:
    """Fast repeated scoring on fixed labels (threshold search): precomputes the label side once."""

    def __init__(self, labels: np.ndarray, classes: Sequence[str]):
        scored, self.weights = official_weights()
        self.classes = list(classes)
        self.labels = to_scored_space(np.asarray(labels), classes)
        self._lab = self.labels.astype(np.float64)
        normal = scored.index(NORMAL_CLASS)
        self.correct = np.nansum(self.weights * modified_confusion_matrix(self.labels, self.labels))
        inactive_outputs = np.zeros_like(self.labels)
        inactive_outputs[:, normal] = True
        self.inactive = np.nansum(self.weights * modified_confusion_matrix(self.labels, inactive_outputs))
        # (model column -> scored column) map, applied without a Python loop per call: the first model column
        # of each scored class is copied, further ones (both codes of an equivalent pair) are OR-ed in
        position = {c: i for i, c in enumerate(scored)}
        first: dict[int, int] = {}
        self._extra: list[tuple[int, int]] = []
        for j, code in enumerate(self.classes):
            k = position.get(representative(str(code)))
            if k is None:
                continue
            if k in first:
                self._extra.append((k, j))
            else:
                first[k] = j
        self._dst = np.array(list(first), dtype=np.int64)
        self._src = np.array(list(first.values()), dtype=np.int64)
        self._n_scored = len(scored)

    def __call__(self, outputs: np.ndarray) -> float:
        outputs = np.asarray(outputs, dtype=bool)
        out = np.zeros((outputs.shape[0], self._n_scored), dtype=bool)
        out[:, self._dst] = outputs[:, self._src]
        for k, j in self._extra:
            out[:, k] |= outputs[:, j]
        observed = np.nansum(self.weights * modified_confusion_matrix(self.labels, out))
        if self.correct != self.inactive:
            return float(observed - self.inactive) / float(self.correct - self.inactive)
        return float("nan")
