"""Record-level predictions and metrics of a downstream model.

Whole-record evaluation: every stored window of a record is tiled by crops of the encoder's ``input_samples``
(first crop at the start, last one ending at the window's valid length, evenly spaced, overlapping when the
length is not a multiple), so a finding anywhere in the record is seen; a record's prediction aggregates the
probabilities of all its crops (mean, or max for intermittent findings: ``FinetuneConfig.eval_aggregate``). arrhythmia27 reports the Challenge score at the tuned thresholds plus threshold-free
(AUROC, AUPRC) and thresholded (macro F1, exact-match accuracy) metrics; localization reports accuracy,
balanced accuracy, macro F1 and the confusion matrix.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
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
    crop_probs = np.concatenate(probs) if probs else np.zeros((0, int(model.n_classes)))
    owner = data.record_index[windows] if len(windows) else np.zeros(0, np.int64)
    return aggregate_crops(crop_probs, owner, data.n_records, aggregate)


@dataclass
class CropFeatures:
    """Frozen-encoder embeddings of the crops tiling a window set (the linear probe's cached features)."""

    features: torch.Tensor  # float32 (n_crops, out_dim), on the training device
    window: np.ndarray  # int64 (n_crops,): window of each crop
    owner: np.ndarray  # int64 (n_crops,): record of each crop
    n_records: int


class FeatureCache:
    """Frozen-encoder crop embeddings kept across the cells of one process (an ablation trains many linear probes
    of the same frozen encoder on overlapping records). A crop's key is the encoder's weights and architecture,
    the bytes of its window (signal, present leads, valid length), its start and length: content, not names, so
    a changed store or encoder can never be served stale features. Least recently used entries go first."""

    def __init__(self, max_crops: int = 200_000):
        self.max_crops = max_crops
        self._rows: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return row

    def put(self, key: tuple, row: torch.Tensor) -> None:
        with self._lock:
            self._rows[key] = row
            self._rows.move_to_end(key)
            while len(self._rows) > self.max_crops:
                self._rows.popitem(last=False)


#: the process-wide cache the linear probe uses (``finetune`` with ``mode="linear"``)
FEATURE_CACHE = FeatureCache()


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """Digest of an encoder's class, config and every parameter and buffer."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(encoder).__name__.encode())
    cfg = getattr(encoder, "cfg", None)
    h.update(repr(cfg.model_dump() if hasattr(cfg, "model_dump") else cfg).encode())
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _window_digests(data: WindowSet) -> list[bytes]:
    out = []
    for w in range(len(data.signal)):
        h = hashlib.blake2b(digest_size=16)
        h.update(np.ascontiguousarray(data.signal[w]).tobytes())
        h.update(np.ascontiguousarray(data.lead_present[w]).tobytes())
        h.update(int(data.valid_length[w]).to_bytes(8, "little"))
        out.append(h.digest())
    return out


@torch.no_grad()
def embed_crops(encoder: torch.nn.Module, data: WindowSet, input_samples: int, batch_size: int = 64,
                device: torch.device | str = "cpu", cache: FeatureCache | None = None,
                pooling: str = "mean") -> CropFeatures:  # fmt: skip
    """Embed every crop tiling ``data`` once with a frozen encoder (eval mode): the features a linear probe reads
    (``pooling`` as :meth:`ecgmodel.models.encoder.Encoder.embed`). With ``cache``, crops embedded before by the
    same encoder (same weights, same window content, same pooling) are reused."""
    was_training = encoder.training
    encoder.eval()
    windows, starts = tile_crops(data, input_samples)
    out_dim = int(getattr(encoder, "out_dim", 0)) * (2 if pooling == "meanmax" else 1)
    rows: list[torch.Tensor | None] = [None] * len(windows)
    keys: list[tuple] = []
    if cache is not None and len(windows):
        fp = encoder_fingerprint(encoder)
        digests = _window_digests(data)
        keys = [(fp, digests[w], int(s), input_samples, pooling) for w, s in zip(windows, starts, strict=True)]
        rows = [cache.get(k) for k in keys]
    todo = np.array([i for i, r in enumerate(rows) if r is None], dtype=np.int64)
    done = 0
    for x, present in crop_batches(data, windows[todo], starts[todo], input_samples, batch_size):
        f = encoder.embed(x.to(device), present.to(device), pooling=pooling).float().cpu()
        for j in range(len(f)):
            i = int(todo[done + j])
            rows[i] = f[j].clone()
            if cache is not None:
                cache.put(keys[i], rows[i])
        done += len(f)
    encoder.train(was_training)
    features = torch.stack(rows).to(device) if len(rows) else torch.zeros((0, out_dim), device=device)
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
