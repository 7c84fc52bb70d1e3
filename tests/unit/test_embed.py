"""``ecgmodel.embed``: one vector per record from crops covering the whole record, on real bundled records."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_store import bundled_store

from ecgmodel.data.store import open_store
from ecgmodel.embed import (
    crop_starts,
    embed_store,
    embed_to_file,
    pool,
    ptbxl_split,
    random_encoder,
    read_embeddings,
    write_embeddings,
)
from ecgmodel.train.checkpoint import save_encoder

ARCH = {"input_samples": 1000, "patch_size": 50, "d_model": 16, "n_layers": 1, "n_heads": 2, "attention": "divided"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The bundled records (ptb at 1000 Hz is resampled; its long record gives several windows)."""
    return bundled_store(tmp_path_factory.mktemp("embed") / "store")


def test_crop_starts_cover_the_valid_part():
    assert crop_starts(5000, 5000, 2500) == [0, 2500]
    assert crop_starts(5000, 5000, 1250) == [0, 1250, 2500, 3750]
    s = crop_starts(4000, 5000, 1500)  # 3 crops, the last ending on the last valid sample
    assert s[0] == 0 and s[-1] + 1500 == 4000 and len(s) == 3
    assert crop_starts(800, 5000, 1000) == [0]  # shorter than a crop: one crop from the start (padding after)
    with pytest.raises(ValueError, match="longer than the store"):
        crop_starts(5000, 5000, 6000)


def test_ptbxl_split():
    assert [ptbxl_split(f) for f in (1, 8, 9, 10, -1)] == ["train", "train", "val", "test", ""]


def test_one_row_per_record_with_all_crops(store):
    st = open_store(store)
    meta = st.meta()
    t = embed_store(store, random_arch=ARCH, seed=0, pooling="mean", batch_size=7)
    assert list(t["record"]) == list(dict.fromkeys(meta["record"]))  # store order, each record once
    assert (t["n_windows"] == meta.groupby("record", sort=False).size().to_numpy()).all()
    assert t["n_windows"].max() > 1  # the long ptb record spans several windows
    expected = meta.groupby("record", sort=False)["valid_length"].apply(
        lambda v: sum(len(crop_starts(int(x), 5000, 1000)) for x in v)).to_numpy()
    assert (t["n_crops"].to_numpy() == expected).all()
    X = np.stack(t["vector"])
    assert X.shape == (len(t), 16) and np.isfinite(X).all() and X.dtype == np.float32
    assert len(np.unique(X.round(5), axis=0)) == len(t)  # different records, different vectors
    assert set(t["split"]) <= {"train", "val", "test"}


def test_batch_size_does_not_change_the_vectors(store):
    a = np.stack(embed_store(store, random_arch=ARCH, seed=0, batch_size=3)["vector"])
    b = np.stack(embed_store(store, random_arch=ARCH, seed=0, batch_size=1000)["vector"])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_vector_is_the_mean_of_the_record_crops(store):
    """Recompute one record by hand through the encoder: crops, per-lead standardisation, mean pooling."""
    from ecgmodel.data.transforms import standardize

    enc, cfg = random_encoder(ARCH, seed=3)
    t = embed_store(store, random_arch=ARCH, seed=3, pooling="mean")
    st = open_store(store)
    meta = st.meta()
    rec = t.loc[t["n_windows"].idxmax(), "record"]
    rows = np.flatnonzero(meta["record"] == rec)
    feats = []
    with torch.no_grad():
        for r in rows:
            sig = st.load_signal([int(r)])[0]
            for s in crop_starts(int(meta["valid_length"][r]), 5000, 1000):
                x = standardize(torch.from_numpy(sig[None, :, s : s + 1000]))
                lp = torch.from_numpy(st.lead_present()[r][None])
                feats.append(enc.eval().embed(x, lp)[0].numpy())
    got = t.loc[t["record"] == rec, "vector"].iloc[0]
    np.testing.assert_allclose(got, np.mean(feats, axis=0), rtol=1e-4, atol=1e-5)


def test_poolings_and_absent_leads():
    tok = torch.randn(2, 12, 5, 8)
    present = torch.ones(2, 12, dtype=torch.bool)
    present[1, 3:] = False
    assert pool(tok, present, "mean").shape == (2, 8)
    mm = pool(tok, present, "mean-max")
    assert mm.shape == (2, 16)
    assert torch.allclose(mm[1, 8:], tok[1, :3].amax(dim=(0, 1)))  # max over present leads only
    lm = pool(tok, present, "lead-mean")
    assert lm.shape == (2, 96) and (lm[1, 24:] == 0).all()
    with pytest.raises(ValueError, match="pooling"):
        pool(tok, present, "median")


def test_random_is_seeded_and_a_saved_encoder_gives_the_same_vectors(store, tmp_path):
    a = np.stack(embed_store(store, random_arch=ARCH, seed=1)["vector"])
    b = np.stack(embed_store(store, random_arch=ARCH, seed=1)["vector"])
    c = np.stack(embed_store(store, random_arch=ARCH, seed=2)["vector"])
    assert np.array_equal(a, b) and not np.allclose(a, c)
    enc, cfg = random_encoder(ARCH, seed=1)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    d = np.stack(embed_store(store, str(path))["vector"])
    np.testing.assert_allclose(a, d, rtol=1e-5, atol=1e-6)
    # --random with an encoder reference copies its architecture, not its weights
    e = np.stack(embed_store(store, random_arch=str(path), seed=2)["vector"])
    np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        embed_store(store)


def test_parquet_file_round_trip(store, tmp_path):
    enc, cfg = random_encoder(ARCH, seed=0)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    out = tmp_path / "emb.parquet"
    summary = embed_to_file(store, out, str(path), pooling="mean-max")
    assert summary["records"] == open_store(store).meta()["record"].nunique() and summary["dim"] == 32
    df = pd.read_parquet(out)  # plain pandas reads it
    assert list(df.columns) == ["record", "source", "database", "split", "fold", "patient_id", "dx", "n_windows",
                                "n_crops", "vector"]
    t, X, meta = read_embeddings(out)
    assert X.shape == (len(t), 32) and meta["pooling"] == "mean-max" and meta["encoder"] == str(path)
    np.testing.assert_allclose(np.stack(df["vector"]), X)
    with pytest.raises(ValueError, match="--random"):
        embed_to_file(store, tmp_path / "x.parquet")
    write_embeddings(t.assign(vector=list(X)), tmp_path / "again.parquet")
    assert np.array_equal(read_embeddings(tmp_path / "again.parquet")[1], X)


def test_several_poolings_in_one_pass_match_single_runs(store):
    both = embed_store(store, random_arch=ARCH, seed=0, pooling=["mean", "lead-mean"])
    for p in ("mean", "lead-mean"):
        one = embed_store(store, random_arch=ARCH, seed=0, pooling=p)
        np.testing.assert_allclose(np.stack(both[p]["vector"]), np.stack(one["vector"]), rtol=1e-5, atol=1e-6)


def test_default_batch_size_follows_the_device():
    from ecgmodel.embed import default_batch_size

    assert default_batch_size("cpu") == 32  # measured faster per crop on CPU than 256 (bench/embed.py)
    assert default_batch_size("cuda:0") == 256
