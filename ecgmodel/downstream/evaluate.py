"""Record-level predictions and metrics of a downstream model.

Whole-record evaluation: every stored window of a record is tiled by crops of the encoder's ``input_samples``
(first crop at the start, last one ending at the window's valid length, evenly spaced, overlapping when the
length is not a multiple), so a finding anywhere in the record is seen; a record's prediction aggregates the
probabilities of all its crops (mean, or max for intermittent findings: ``FinetuneConfig.eval_aggregate``). arrhythmia27 reports the Challenge score at the tuned thresholds plus threshold-free
(AUROC, AUPRC) and thresholded (macro F1, exact-match accuracy) metrics; localization reports accuracy,
balanced accuracy, macro F1 and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ecgmodel.data.transforms import crop, standardize
from ecgmodel.downstream.dataset import WindowSet
from ecgmodel.metrics.challenge2020 import challenge_score
from ecgmodel.metrics.classification import (
    confusion_table,
    multiclass_metrics,
    multilabel_metrics,
    per_class_table,
)


def tile_starts(valid_length: int, total: int, length: int) -> np.ndarray:
    """Starts of the crops of ``length`` samples that cover ``[0, valid_length)`` of a ``total``-sample window."""
    span = min(max(int(valid_length), length), total) - length
    if span <= 0:
        return np.zeros(1, dtype=np.int64)
    k = int(np.ceil(span / length)) + 1
    return np.unique(np.round(np.linspace(0, span, k)).astype(np.int64))


def tile_crops(data: WindowSet, input_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(window, start) of every crop that tiles the windows of ``data`` (see :func:`tile_starts`)."""
    total = data.signal.shape[-1] if len(data.signal) else input_samples
    pairs = [(w, int(s)) for w in range(len(data.signal))
             for s in tile_starts(int(data.valid_length[w]), total, input_samples)]  # fmt: skip
    windows = np.array([p[0] for p in pairs], dtype=np.int64)
    starts = np.array([p[1] for p in pairs], dtype=np.int64)
    return windows, starts


def crop_batches(data: WindowSet, windows: np.ndarray, starts: np.ndarray, input_samples: int, batch_size: int):
    """Yield (standardised crops (B, 12, input_samples), lead_present (B, 12)) of the given crops, in order."""
    for begin in range(0, len(windows), batch_size):
        w = windows[begin : begin + batch_size]
        sig = torch.from_numpy(data.signal[w])
        x = standardize(crop(sig, torch.from_numpy(starts[begin : begin + batch_size]), input_samples))
        yield x, torch.from_numpy(data.lead_present[w])


def aggregate_crops(crop_probs: np.ndarray, owner: np.ndarray, n_records: int, aggregate: str = "mean") -> np.ndarray:
    """Per-record probabilities (n_records, C) from per-crop ones; ``owner`` is each crop's record index."""
    if aggregate not in ("mean", "max"):
        raise ValueError(f"unknown aggregate {aggregate!r} (use 'mean' or 'max')")
    out = np.zeros((n_records, crop_probs.shape[1]), dtype=np.float64)
    if aggregate == "max":
        np.maximum.at(out, owner, crop_probs)
        return out
    counts = np.bincount(owner, minlength=n_records).astype(np.float64)
    np.add.at(out, owner, crop_probs)
    return out / np.maximum(counts, 1)[:, None]


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@torch.no_grad()
def predict_records(
    model: torch.nn.Module,
    data: WindowSet,
    input_samples: int,
    multilabel: bool,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    aggregate: str = "mean",
) -> np.ndarray:
    """Per-record probabilities (n_records, C) over crops tiling every window of the record."""
    if aggregate not in ("mean", "max"):
        raise ValueError(f"unknown aggregate {aggregate!r} (use 'mean' or 'max')")
    model.eval()
    windows, starts = tile_crops(data, input_samples)
    probs: list[np.ndarray] = []
    for x, present in crop_batches(data, windows, starts, input_samples, batch_size):
        probs.append(probabilities(model(x.to(device), present.to(device)).float(), multilabel).cpu().numpy())
    crop_probs = np.concatenate(probs) if probs else np.zeros((0, model.head.out_features))
    owner = data.record_index[windows] if len(windows) else np.zeros(0, np.int64)
    return aggregate_crops(crop_probs, owner, data.n_records, aggregate)


@dataclass
class CropFeatures:
    """Frozen-encoder embeddings of the crops tiling a window set (the linear probe's cached features)."""

    features: torch.Tensor  # float32 (n_crops, out_dim), on the training device
    window: np.ndarray  # int64 (n_crops,): window of each crop
    owner: np.ndarray  # int64 (n_crops,): record of each crop
    n_records: int


@torch.no_grad()
def embed_crops(encoder: torch.nn.Module, data: WindowSet, input_samples: int, batch_size: int = 64,
                device: torch.device | str = "cpu") -> CropFeatures:
    """Embed every crop tiling ``data`` once with a frozen encoder (eval mode): the features a linear probe reads."""
    was_training = encoder.training
    encoder.eval()
    windows, starts = tile_crops(data, input_samples)
    feats = [encoder.embed(x.to(device), present.to(device)).float()
             for x, present in crop_batches(data, windows, starts, input_samples, batch_size)]  # fmt: skip
    encoder.train(was_training)
    out_dim = int(getattr(encoder, "out_dim", 0))
    features = torch.cat(feats) if feats else torch.zeros((0, out_dim), device=device)
    owner = data.record_index[windows] if len(windows) else np.zeros(0, np.int64)
    return CropFeatures(features, windows, owner, data.n_records)


@torch.no_grad()
def predict_from_features(head: torch.nn.Module, feats: CropFeatures, multilabel: bool,
                          aggregate: str = "mean") -> np.ndarray:
    """Per-record probabilities from cached crop features: the same numbers as :func:`predict_records` gives for
    a linear probe on the frozen encoder (head in eval mode, i.e. no dropout)."""
    was_training = head.training
    head.eval()
    crop_probs = probabilities(head(feats.features).float(), multilabel).cpu().numpy()
    head.train(was_training)
    return aggregate_crops(crop_probs, feats.owner, feats.n_records, aggregate)


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


def superclass_metrics(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, float], pd.DataFrame]:
    """ptbxl-superclass: macro AUROC (the benchmark's metric), macro AUPRC, macro F1 and exact-match accuracy at
    ``thresholds``; and the per-class table."""
    outputs = probs >= np.asarray(thresholds)[None, :]
    metrics = multilabel_metrics(labels, probs, outputs)
    table = per_class_table(labels, probs, outputs, classes)
    table["threshold"] = np.asarray(thresholds)
    return metrics, table
