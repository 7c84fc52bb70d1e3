"""``ecgmodel.serving``: pyfunc models of a (tiny, random) encoder and classifier on real bundled records; the
pyfunc answers equal the evaluation / embedding code paths, and files harmonise like the store."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_models import ARCH, write_model_pt
from helpers_store import DATA, bundled_store

from ecgmodel.data.store import open_store
from ecgmodel.embed import embed_store, random_encoder
from ecgmodel.serving.contract import Contract
from ecgmodel.serving.inputs import (
    expand_inputs,
    from_model_input,
    prepare_inputs,
    prepare_store,
    to_model_input,
)
from ecgmodel.train.checkpoint import save_encoder


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return bundled_store(tmp_path_factory.mktemp("serving") / "store")


def test_files_harmonise_like_the_store(store):
    """A folder of WFDB records gives the windows the store holds (ingest's harmonisation), with warnings."""
    contract = Contract(kind="encoder", input_samples=1000, max_windows=3)
    from_store = {r.record: r for r in prepare_store(store, contract)}
    files = [r for r in prepare_inputs([DATA], contract) if "records100" not in r.input]
    assert len(files) == len(from_store) and all(r.ok for r in files)
    for r in files:
        s = from_store[r.record]
        np.testing.assert_array_equal(r.signal, s.signal)
        np.testing.assert_array_equal(r.valid_length, s.valid_length)
        np.testing.assert_array_equal(r.lead_present, s.lead_present)
    ptb = next(r for r in files if r.record == "S0001")
    assert any("resampled from 1000 Hz" in w for w in ptb.warnings)
    # pyfunc tensors carry exactly these windows back
    back = from_model_input(**to_model_input(files), contract=contract)
    for a, b in zip(files, back, strict=True):
        np.testing.assert_array_equal(a.signal, b.signal)
        np.testing.assert_array_equal(a.valid_length, b.valid_length)


def test_missing_path_is_a_user_error(tmp_path):
    from ecgmodel.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        expand_inputs([tmp_path / "nope.hea"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no WFDB header"):
        expand_inputs([tmp_path / "empty"])


def test_classifier_pyfunc_equals_evaluation(store, tmp_path):
    import mlflow.pyfunc

    from ecgmodel.downstream.dataset import WindowSet
    from ecgmodel.downstream.evaluate import predict_records
    from ecgmodel.serving.core import load_classifier
    from ecgmodel.serving.log import save_classifier_model

    model_pt = write_model_pt(tmp_path / "model.pt")
    folder, contract = save_classifier_model(tmp_path / "clf", model_pt, store=store, card="# card")
    assert (folder / "MLmodel").is_file() and (folder / "contract.json").is_file()
    assert (folder / "serving_input_example.json").is_file()
    c = Contract.read(folder / "contract.json")
    assert c.task == "arrhythmia27" and len(c.classes) == 24 and c.classes[0].name == "IAVB"
    assert c.classes[0].code == "270492004" and c.classes[0].threshold == pytest.approx(0.3)
    assert any("|" in k.code for k in c.classes)  # merged equivalent SNOMED codes
    pf = mlflow.pyfunc.load_model(str(folder))
    recs = list(prepare_store(store, c))
    out = pf.predict(to_model_input(recs))
    assert isinstance(out, pd.DataFrame) and len(out) == len(recs)
    # the evaluation code path on the store's own windows
    st = open_store(store)
    meta = st.meta()
    rec_of = pd.factorize(meta["source"] + "/" + meta["record"])[0]
    ws = WindowSet(st.load_signal(), st.lead_present(), meta["valid_length"].to_numpy(), rec_of,
                   np.zeros(len(recs)), pd.DataFrame({"record": range(len(recs))}))
    model, _ = load_classifier(model_pt)
    expected = predict_records(model, ws, 1000, True)
    probs = out[[f"prob_{n}" for n in c.class_names()]].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    labels = out[[f"label_{n}" for n in c.class_names()]].to_numpy()
    np.testing.assert_array_equal(labels, expected >= np.asarray(c.thresholds())[None])


def test_encoder_pyfunc_equals_embed_store(store, tmp_path):
    import mlflow.pyfunc

    from ecgmodel.serving.log import save_encoder_model
    from ecgmodel.train.checkpoint import load_encoder

    enc, cfg = random_encoder(ARCH, seed=4)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    folder, contract = save_encoder_model(tmp_path / "enc", path, store=store)
    assert load_encoder(folder)[1] == cfg  # the folder still loads as an encoder
    pf = mlflow.pyfunc.load_model(str(folder))
    recs = list(prepare_store(store, contract))
    X = pf.predict(to_model_input(recs))
    expected = np.stack(embed_store(store, path)["vector"])
    assert X.shape == expected.shape == (len(recs), 32)
    np.testing.assert_allclose(X, expected, rtol=1e-4, atol=1e-5)
