"""End to end through MLflow: a pretraining run's encoder and a fine-tuned classifier are registered as pyfunc
models that ``mlflow.pyfunc.load_model('models:/...')`` loads and that answer like ``ecgssl predict`` / ``embed``."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_models import registered_classifier
from helpers_store import bundled_store

from ecgmodel.data.store import open_store
from ecgmodel.embed import embed_store
from ecgmodel.serving.inputs import prepare_store, to_model_input

pytestmark = pytest.mark.slow

TINY = {"optim.max_steps": 2, "optim.warmup_steps": 1, "data.batch_size": 4, "run.progress": False,
        "run.device": "cpu", "run.threads": 1, "run.experiment": "registry-test"}


def test_pretraining_registers_a_pyfunc_encoder(tmp_path):
    from ecgmodel.train.checkpoint import load_encoder
    from ecgmodel.train.pretrain import build_config, train

    store = bundled_store(tmp_path / "store")
    res = train(build_config("cpu", TINY), store, tmp_path / "run")
    uri = res["encoder_uri"]
    assert uri.startswith("models:/ecgssl-encoder-smoke/") and res["registered_model"] == "ecgssl-encoder-smoke"
    model = mlflow.pyfunc.load_model(uri)
    sig = model.metadata.get_input_schema()
    assert sig.input_names() == ["signal", "lead_present"]
    recs = list(prepare_store(store, model.unwrap_python_model().contract))
    X = model.predict(to_model_input(recs))
    np.testing.assert_allclose(X, np.stack(embed_store(store, res["encoder_path"])["vector"]), rtol=1e-4, atol=1e-5)
    enc, _ = load_encoder(uri)  # the same version still loads as an Encoder (ablations, fine-tuning)
    assert enc.cfg.input_samples == build_config("cpu").encoder.input_samples


def test_registered_classifier_loads_and_equals_predict(tmp_path):
    from ecgmodel.predict import predict_inputs
    from ecgmodel.tracking import CHAMPION

    store, result, reg = registered_classifier(tmp_path)
    assert reg["name"] == "ecgssl-arrhythmia27" and reg["model_uri"].endswith(f"/{reg['version']}")
    client = mlflow.MlflowClient()
    mv = client.get_model_version(reg["name"], reg["version"])
    assert mv.tags["ecgssl.ablation_run_id"] == "abc123" and mv.tags["ecgssl.gate_passed"] in ("true", "false")
    assert "ecgssl.test_challenge_score" in mv.tags and "not a medical device" in mv.description
    aliases = client.get_registered_model(reg["name"]).aliases
    assert (aliases.get(CHAMPION) == reg["version"]) == reg["gate"]["passed"]
    arts = {a.path for a in client.list_artifacts(result["run_id"], "classifier")}
    assert {"classifier/MLmodel", "classifier/contract.json", "classifier/model_card.md"} <= arts
    card = mlflow.artifacts.download_artifacts(f"runs:/{result['run_id']}/model_card.md")
    assert "Research use only" in open(card).read()

    model = mlflow.pyfunc.load_model(reg["model_uri"])
    contract = model.unwrap_python_model().contract
    recs = list(prepare_store(store, contract))[:5]
    out = model.predict(to_model_input(recs))
    table = predict_inputs(reg["model_uri"], [store]).head(5)
    cols = [c for c in out.columns if c.startswith("prob_")]
    np.testing.assert_allclose(out[cols].to_numpy(), table[cols].to_numpy(dtype=float), rtol=1e-5, atol=1e-6)
    assert list(out["labels"]) == list(table["labels"])
    example = json.loads(open(mlflow.artifacts.download_artifacts(f"{reg['model_uri']}/serving_input_example.json"
                                                                   )).read())
    assert set(example["inputs"]) == {"signal", "lead_present"}
    assert np.asarray(example["inputs"]["signal"]).shape[1:] == (12, open_store(store).window_samples)
    assert isinstance(out, pd.DataFrame)
