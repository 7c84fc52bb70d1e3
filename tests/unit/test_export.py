"""``ecgssl export``: the TorchScript file gives the same crop probabilities / embeddings as the model it came from,
on crops of real records, with the contract inside; the CLI writes it."""

import numpy as np
import torch
from helpers_models import ARCH, DATA, write_model_pt

from ecgmodel.data.transforms import crop, standardize
from ecgmodel.embed import pool, random_encoder
from ecgmodel.predict import load_model
from ecgmodel.serving.export import export_torchscript, load_torchscript
from ecgmodel.serving.inputs import prepare_inputs
from ecgmodel.train.checkpoint import save_encoder
from flows.cli import main


def _crops(contract):
    recs = [r for r in prepare_inputs([DATA / "ptb-xl"], contract) if r.ok]
    sig = torch.from_numpy(np.concatenate([r.signal for r in recs]))
    lp = torch.from_numpy(np.stack([r.lead_present for r in recs for _ in range(r.n_windows)]))
    lp[0, 6:] = False  # a crop with missing chest leads
    starts = torch.zeros(len(sig), dtype=torch.long) + 1000
    return standardize(crop(sig, starts, contract.input_samples)), lp


def test_classifier_export_equals_the_model(tmp_path):
    m = load_model(write_model_pt(tmp_path / "model.pt"))
    path = export_torchscript(m.model, m.contract, "classifier", tmp_path / "clf.pt")
    ts, contract = load_torchscript(path)
    assert contract == m.contract and contract.classes[1].name == "AF"
    x, lp = _crops(m.contract)
    with torch.no_grad():
        np.testing.assert_allclose(ts(x, lp).numpy(), torch.sigmoid(m.model(x, lp)).numpy(), rtol=1e-5, atol=1e-6)


def test_encoder_export_and_cli(tmp_path, capsys):
    enc, cfg = random_encoder(ARCH, seed=1)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    assert main(["export", "--model", str(path), "--out", str(tmp_path / "enc-ts.pt")]) == 0
    ts, contract = load_torchscript(tmp_path / "enc-ts.pt")
    assert contract.kind == "encoder" and contract.pooling == "mean-max"
    x, lp = _crops(contract)
    with torch.no_grad():
        np.testing.assert_allclose(ts(x, lp).numpy(), pool(enc.eval()(x), lp, "mean-max").numpy(), rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
    assert main(["export", "--model", str(path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "ends in .pt" in capsys.readouterr().err
