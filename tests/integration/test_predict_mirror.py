"""Held-out records of the five Challenge-2020 databases of the shared mirror, and EDF copies of some: ``predict``
and ``embed --input`` on the files equal the same numbers on a store that ingest's own conversion wrote."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_models import ARCH, write_model_pt

from ecgmodel.data.convert import convert_batch
from ecgmodel.data.sources import get_source
from ecgmodel.data.store import StoreWriter
from ecgmodel.embed import embed_store, random_encoder
from ecgmodel.predict import LoadedModel, embed_inputs, load_model, predict_inputs
from ecgmodel.serving.contract import Contract
from ecgmodel.train.checkpoint import save_encoder

DATABASES = ("cpsc_2018", "cpsc_2018_extra", "georgia", "ptb", "ptb-xl")


@pytest.fixture(scope="module")
def held_out(physionet_mirror, tmp_path_factory):
    """(folder of the last 2 records of each database + EDF copies, store of the same records via ingest's
    convert_batch)."""
    from wfdb.io.convert.edf import wfdb_to_edf

    root = physionet_mirror / "challenge-2020" / "1.0.2"
    tmp = tmp_path_factory.mktemp("mirror")
    folder = tmp / "files"
    (folder / "edf").mkdir(parents=True)
    paths = []
    for db in DATABASES:
        recs = (root / "training" / db / "RECORDS").read_text().split()[-2:]
        for rec in recs:
            paths.append(f"training/{db}/{rec}")
            for f in (root / "training" / db).glob(f"{rec}.*"):
                shutil.copy2(f, folder / f.name)
        # wfdb's own reader refuses Georgia's header quirk, and takes PTB's per-volt gain (2000000/mV) literally
        # (its EDF would hold signals 1000x too small): EDF copies of the other three databases
        if db not in ("georgia", "ptb"):
            name = Path(recs[-1]).name
            wfdb_to_edf(str(root / "training" / db / recs[-1]), output_filename=str(folder / "edf" / f"{name}.edf"))
    source = get_source("challenge-2020")
    res = convert_batch(str(root), source, paths, 500, 10.0, 3)
    assert not res.failures, res.failures
    with StoreWriter(tmp / "store", fs=500, window_samples=5000, chunk_windows=8) as w:
        w.append(res.batch)
        w.commit(sources={"challenge-2020": {"version": "1.0.2", "settings": {"max_windows": 3}}},
                 dx_systems={"challenge-2020": "snomed-ct"})  # fmt: skip
    return folder, tmp / "store"


def test_files_and_edf_copies_equal_the_store(held_out, tmp_path):
    from ecgmodel.serving.log import save_classifier_model

    folder, store = held_out
    clf, _ = save_classifier_model(tmp_path / "clf", write_model_pt(tmp_path / "model.pt"), store=store)
    model = load_model(clf)
    assert model.contract.max_windows == 3  # the contract carries the store's cap
    files = predict_inputs(model, [folder])
    assert (files["error"] == "").all(), files[files["error"] != ""]
    assert len(files) == 10 + 3
    st = predict_inputs(model, [store]).set_index("record")
    cols = [c for c in st.columns if c.startswith(("prob_", "label_"))] + ["labels", "n_windows"]
    wfdb = files[~files["input"].str.endswith(".edf")].set_index("record")
    pd.testing.assert_frame_equal(wfdb.loc[st.index, cols], st[cols], rtol=1e-5, atol=1e-6)
    edf = files[files["input"].str.endswith(".edf")].set_index("record")
    probs = [c for c in cols if c.startswith("prob_")]
    np.testing.assert_allclose(edf[probs].to_numpy(float), st.loc[edf.index, probs].to_numpy(float), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    assert any("resampled from 1000 Hz" in w for w in wfdb.loc[["S0009", "S0010"], "warnings"])


def test_embed_input_equals_embed_store(held_out, tmp_path):
    folder, store = held_out
    enc, cfg = random_encoder(ARCH, seed=5)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    m = LoadedModel("encoder", enc.eval(), Contract(kind="encoder", input_samples=1000, pooling="mean-max",
                                                    max_windows=3), str(path))  # fmt: skip
    t = embed_inputs(m, [folder])
    wfdb = t[~t["input"].str.endswith(".edf")].set_index("record")
    ref = embed_store(store, path).set_index("record")
    np.testing.assert_allclose(np.stack(wfdb.loc[ref.index, "vector"]), np.stack(ref["vector"]), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
