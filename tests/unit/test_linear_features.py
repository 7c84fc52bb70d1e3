"""The linear probe's cached features: frozen-encoder crop embeddings (mean or mean+max pooled) computed once give the
same record predictions as the model's own forward pass over the same tiling crops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ecgmodel.downstream.dataset import WindowSet
from ecgmodel.downstream.evaluate import (
    aggregate_crops,
    embed_crops,
    predict_from_features,
    predict_records,
    tile_crops,
)
from ecgmodel.downstream.model import DownstreamModel
from ecgmodel.models.encoder import EncoderConfig, build_encoder

TINY = EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=1000, patch_size=50)


def window_set(seed: int = 0) -> WindowSet:
    """7 windows of 2,000 samples over 4 records; some windows shorter than the crop or than the window, one lead
    missing in one window."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 300, (7, 12, 2000)).astype(np.int16)
    present = np.ones((7, 12), bool)
    present[2, 4] = False
    signal[2, 4] = 0
    valid = np.array([2000, 1500, 2000, 800, 2000, 1999, 1000], np.int64)
    record_index = np.array([0, 0, 1, 1, 2, 3, 3], np.int64)
    y = rng.random((4, 3)) < 0.5
    records = pd.DataFrame({"source": "s", "record": [f"r{i}" for i in range(4)], "patient_id": "p", "fold": 1,
                            "split": "val"})  # fmt: skip
    return WindowSet(signal, present, valid, record_index, y, records)


@pytest.mark.parametrize("multilabel,aggregate,pooling",
                         [(True, "mean", "meanmax"), (True, "max", "mean"), (False, "mean", "meanmax")])  # fmt: skip
def test_cached_features_predict_like_the_model(multilabel, aggregate, pooling):
    torch.manual_seed(0)
    model = DownstreamModel(build_encoder(TINY), n_classes=3, mode="linear", dropout=0.5, pooling=pooling)
    torch.nn.init.normal_(model.head.weight, std=0.3)  # a head that makes the outputs differ between records
    ws = window_set()
    direct = predict_records(model, ws, TINY.input_samples, multilabel, batch_size=3, aggregate=aggregate)
    feats = embed_crops(model.encoder, ws, TINY.input_samples, batch_size=4, pooling=pooling)
    cached = predict_from_features(model.head, feats, multilabel, aggregate=aggregate)
    windows, _ = tile_crops(ws, TINY.input_samples)
    assert len(feats.features) == len(windows) > len(ws.signal)  # several crops tile the longer windows
    assert feats.features.shape[1] == model.encoder.out_dim * (2 if pooling == "meanmax" else 1)
    np.testing.assert_allclose(cached, direct, atol=1e-5)
    assert not np.allclose(cached, cached[:1])  # a real comparison, not constant outputs


def test_embed_crops_restores_the_encoder_mode_and_handles_empty_sets():
    encoder = build_encoder(TINY)
    encoder.train()
    ws = window_set()
    embed_crops(encoder, ws, TINY.input_samples)
    assert encoder.training
    empty = WindowSet(ws.signal[:0], ws.lead_present[:0], ws.valid_length[:0], ws.record_index[:0], ws.y[:0],
                      ws.records.iloc[:0])  # fmt: skip
    feats = embed_crops(encoder, empty, TINY.input_samples)
    assert feats.features.shape == (0, encoder.out_dim)


def test_aggregate_crops_mean_and_max():
    p = np.array([[0.2, 0.9], [0.4, 0.1], [0.7, 0.5]])
    owner = np.array([0, 0, 1])
    np.testing.assert_allclose(aggregate_crops(p, owner, 3), [[0.3, 0.5], [0.7, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(aggregate_crops(p, owner, 2, "max"), [[0.4, 0.9], [0.7, 0.5]])
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_crops(p, owner, 2, "median")


def test_feature_cache_reuses_only_identical_encoder_and_window_content():
    from ecgmodel.downstream.evaluate import FeatureCache

    torch.manual_seed(0)
    encoder = build_encoder(TINY)
    ws = window_set()
    cache = FeatureCache()
    plain = embed_crops(encoder, ws, TINY.input_samples)
    first = embed_crops(encoder, ws, TINY.input_samples, cache=cache)
    n = len(first.features)
    assert (cache.hits, cache.misses) == (0, n)
    again = embed_crops(encoder, ws, TINY.input_samples, batch_size=5, cache=cache)
    assert (cache.hits, cache.misses) == (n, n)
    torch.testing.assert_close(again.features, plain.features, atol=1e-5, rtol=0)
    # a subset of the windows (a smaller label fraction) is served from the cache too
    sub = WindowSet(ws.signal[2:5], ws.lead_present[2:5], ws.valid_length[2:5], ws.record_index[2:5] - 1,
                    ws.y[1:4], ws.records.iloc[1:4])  # fmt: skip
    embed_crops(encoder, sub, TINY.input_samples, cache=cache)
    assert cache.misses == n
    # changed content (one sample of one window) or changed weights: recomputed, never stale
    changed = WindowSet(ws.signal.copy(), ws.lead_present, ws.valid_length, ws.record_index, ws.y, ws.records)
    changed.signal[0, 0, 10] += 1000
    embed_crops(encoder, changed, TINY.input_samples, cache=cache)
    crops_of_window0 = int((first.window == 0).sum())
    assert cache.misses == n + crops_of_window0
    with torch.no_grad():
        encoder.patch_embed.weight[0, 0] += 1.0
    moved = embed_crops(encoder, ws, TINY.input_samples, cache=cache)
    assert cache.misses == 2 * n + crops_of_window0
    assert not torch.allclose(moved.features, plain.features)
    # another pooling of the same crops is another feature
    embed_crops(encoder, ws, TINY.input_samples, cache=cache, pooling="meanmax")
    assert cache.misses == 3 * n + crops_of_window0
    small = FeatureCache(max_crops=3)
    embed_crops(encoder, ws, TINY.input_samples, cache=small)
    assert len(small._rows) == 3
