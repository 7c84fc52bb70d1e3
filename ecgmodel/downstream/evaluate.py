"""Record-level predictions and metrics of a downstream model.

A record's prediction is the mean of its windows' probabilities (each window centre-cropped to the encoder's
``input_samples``). arrhythmia27 reports the Challenge score at the tuned thresholds plus threshold-free
(AUROC, AUPRC) and thresholded (macro F1, exact-match accuracy) metrics; localization reports accuracy,
balanced accuracy, macro F1 and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ecgmodel.data.transforms import to_model_input
from ecgmodel.downstream.dataset import WindowSet
from ecgmodel.metrics.challenge2020 import challenge_score
from ecgmodel.metrics.classification import (
    confusion_table,
    multiclass_metrics,
    multilabel_metrics,
    per_class_table,
)


@torch.no_grad()
def predict_records(
    model: torch.nn.Module,
    data: WindowSet,
    input_samples: int,
    multilabel: bool,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Per-record probabilities (n_records, C): mean over the record's windows."""
    model.eval()
    n_windows = len(data.signal)
    probs: list[np.ndarray] = []
    for start in range(0, n_windows, batch_size):
        sl = slice(start, start + batch_size)
        sig = torch.from_numpy(data.signal[sl]).to(device)
        valid = torch.from_numpy(data.valid_length[sl]).to(device)
        present = torch.from_numpy(data.lead_present[sl]).to(device)
        x = to_model_input(sig, length=input_samples, crop_mode="center", valid_length=valid)
        logits = model(x, present).float()
        p = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
        probs.append(p.cpu().numpy())
    window_probs = np.concatenate(probs) if probs else np.zeros((0, model.head.out_features))
    out = np.zeros((data.n_records, window_probs.shape[1]), dtype=np.float64)
    counts = np.bincount(data.record_index, minlength=data.n_records).astype(np.float64)
    np.add.at(out, data.record_index, window_probs)
    return out / np.maximum(counts, 1)[:, None]


def arrhythmia_metrics(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: Sequence[str],
    abbreviations: Sequence[str] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """challenge_score (at ``thresholds``), macro_auroc, macro_auprc, macro_f1, accuracy; and the per-class table."""
    outputs = probs >= np.asarray(thresholds)[None, :]
    metrics = {"challenge_score": challenge_score(labels, outputs, classes)}
    metrics.update(multilabel_metrics(labels, probs, outputs))
    table = per_class_table(labels, probs, outputs, classes, abbreviations)
    table["threshold"] = np.asarray(thresholds)
    return metrics, table


def localization_metrics(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, float], pd.DataFrame]:
    """accuracy, balanced_accuracy, macro_f1; and the confusion matrix (rows true, columns predicted)."""
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    return multiclass_metrics(y, pred, len(classes)), confusion_table(y, pred, classes)
