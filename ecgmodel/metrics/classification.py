"""Threshold-free and thresholded classification metrics (scikit-learn), reported separately.

* multi-label (arrhythmia27): macro AUROC / AUPRC over classes that have both positives and negatives in the
  evaluated set (others are NaN in the per-class table and left out of the macro mean), macro F1, exact-match
  accuracy, and the per-class table;
* single-label (localization): accuracy, balanced accuracy, macro F1 and the confusion matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def per_class_table(
    labels: np.ndarray, scores: np.ndarray, outputs: np.ndarray, classes: Sequence[str],
    abbreviations: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per class: support, AUROC, AUPRC, precision, recall, F1 (at the given binary outputs)."""
    labels = np.asarray(labels, dtype=bool)
    outputs = np.asarray(outputs, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = labels.shape[1]
    auroc = np.full(n_classes, np.nan)
    auprc = np.full(n_classes, np.nan)
    for k in range(n_classes):
        positives = labels[:, k].sum()
        if 0 < positives < len(labels):  # undefined with a single class present
            auroc[k] = roc_auc_score(labels[:, k], scores[:, k])
            auprc[k] = average_precision_score(labels[:, k], scores[:, k])
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, outputs, average=None, zero_division=0
    )
    return pd.DataFrame(
        {
            "class": list(classes),
            "abbreviation": list(abbreviations) if abbreviations is not None else list(classes),
            "support": support.astype(int),
            "predicted": outputs.sum(axis=0).astype(int),
            "auroc": auroc,
            "auprc": auprc,
            "precision": precision,
            "recall": recall,
            "f1": np.where(support + outputs.sum(axis=0) > 0, f1, np.nan),
        }
    )


def multilabel_metrics(labels: np.ndarray, scores: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """macro_auroc, macro_auprc, macro_f1 (classes with any label or output), exact-match accuracy."""
    table = per_class_table(labels, scores, outputs, [str(i) for i in range(np.shape(labels)[1])])
    return {
        "macro_auroc": _nanmean(table["auroc"].to_numpy()),
        "macro_auprc": _nanmean(table["auprc"].to_numpy()),
        "macro_f1": _nanmean(table["f1"].to_numpy()),
        "accuracy": float(np.all(np.asarray(labels, bool) == np.asarray(outputs, bool), axis=1).mean())
        if len(labels) else float("nan"),
    }


def multiclass_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """accuracy, balanced_accuracy, macro_f1 over the classes present in truth or prediction."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "macro_f1": float("nan")}
    with warnings.catch_warnings():
        # small test splits often miss a class that the model predicts: balanced accuracy is then the mean
        # recall over the classes present in y_true, which is what we report; the warning says just that
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Confusion matrix as a DataFrame (rows: true class, columns: predicted class)."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    return pd.DataFrame(cm, index=[f"true:{c}" for c in classes], columns=[f"pred:{c}" for c in classes])
