"""``ecgmodel.predict``: your own files (a folder of real WFDB records, an EDF copy of one, a broken record, a
store) -> one row per record; files and store give the same numbers, a broken record gets its reason."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_models import ARCH, write_model_pt
from helpers_store import DATA, bundled_store

from ecgmodel.embed import embed_store, random_encoder
from ecgmodel.errors import UserError
from ecgmodel.predict import embed_inputs, load_model, predict_inputs, write_table
from ecgmodel.train.checkpoint import save_encoder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The bundled 500 Hz / resampled records, an EDF copy of one, and a record with a truncated signal file."""
    from wfdb.io.convert.edf import wfdb_to_edf

    root = tmp_path_factory.mktemp("predict") / "ecgs"
    for h in DATA.rglob("*.hea"):
        if "records100" in h.parts:
            continue
        for f in h.parent.glob(h.stem + ".*"):
            shutil.copy2(f, root / f.name) if root.exists() else (root.mkdir(), shutil.copy2(f, root / f.name))
    (root / "edf").mkdir()
    wfdb_to_edf(str(root / "00001_hr"), output_filename=str(root / "edf" / "00001_edf.edf"))
    (root / "broken").mkdir()
    shutil.copy2(root / "A0001.hea", root / "broken" / "A0001.hea")
    (root / "broken" / "A0001.mat").write_bytes((root / "A0001.mat").read_bytes()[:5000])
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return bundled_store(tmp_path_factory.mktemp("predict-store") / "store", max_windows=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory, store):
    """The classifier saved as an MLflow model folder with the store's contract (max 3 windows)."""
    from ecgmodel.serving.log import save_classifier_model

    tmp = tmp_path_factory.mktemp("predict-model")
    folder, _ = save_classifier_model(tmp / "clf", write_model_pt(tmp / "model.pt"), store=store)
    return load_model(folder)


def test_folder_edf_and_broken_record(files, model, tmp_path):
    t = predict_inputs(model, [files])
    assert t["input"].is_unique and len(t) == 12  # 10 records + the EDF copy + the broken one
    broken = t[t["input"].str.contains("broken")].iloc[0]
    assert "truncated signal" in broken["error"] and "\n" not in broken["error"]
    assert np.isnan(broken["prob_IAVB"]) and broken["n_windows"] == 0
    ok = t[t["error"] == ""]
    assert len(ok) == 11 and np.isfinite(ok.filter(like="prob_").to_numpy()).all()
    assert set(ok["labels"].str.split(";").explode().dropna()) - {""} <= set(model.contract.class_names())
    # the EDF copy predicts like the WFDB record it was written from
    probs = ok.set_index("record").filter(like="prob_")
    np.testing.assert_allclose(probs.loc["00001_edf"], probs.loc["00001_hr"], rtol=1e-5, atol=1e-6)
    ptb = ok.set_index("record").loc["S0001"]
    assert "resampled from 1000 Hz to 500 Hz" in ptb["warnings"] and ptb["n_windows"] == 3
    for out in (tmp_path / "p.csv", tmp_path / "p.parquet"):
        write_table(t, out)
        back = pd.read_csv(out) if out.suffix == ".csv" else pd.read_parquet(out)
        assert len(back) == len(t) and list(back.columns) == list(t.columns)
    with pytest.raises(UserError, match="rule: .csv or .parquet"):
        write_table(t, tmp_path / "p.xlsx")


def test_store_equals_files(files, store, model):
    s = predict_inputs(model, [store]).set_index("record")
    f = predict_inputs(model, [files]).query("error == ''").set_index("record")
    assert len(s) == 10
    cols = [c for c in s.columns if c.startswith(("prob_", "label_"))] + ["labels", "n_windows"]
    pd.testing.assert_frame_equal(s.loc[:, cols], f.loc[s.index, cols], rtol=1e-5, atol=1e-6)


def test_embed_inputs_equals_embed_store(files, store, tmp_path):
    enc, cfg = random_encoder(ARCH, seed=2)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    from ecgmodel.predict import LoadedModel
    from ecgmodel.serving.contract import Contract

    m = LoadedModel("encoder", enc.eval(), Contract(kind="encoder", input_samples=1000, pooling="mean-max",
                                                    max_windows=3), str(path))  # fmt: skip
    t = embed_inputs(m, [files])
    assert (t["error"] != "").sum() == 1 and np.isnan(t.loc[t["error"] != "", "vector"].iloc[0]).all()
    t = t[t["error"] == ""].set_index("record")
    ref = embed_store(store, path).set_index("record")
    np.testing.assert_allclose(np.stack(t.loc[ref.index, "vector"]), np.stack(ref["vector"]), rtol=1e-4, atol=1e-5)


def test_not_a_model(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not an ecgssl model"):
        load_model(junk)
    with pytest.raises(UserError, match="neither an existing path"):
        load_model("nowhere/model.pt")
