"""``ecgssl predict`` / ``ecgssl embed --input`` on the command line: expected failures print one line and exit 2
before any work; a folder of real records, an EDF copy and a broken record give one row each."""

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers_models import DATA, write_model_pt

import flows.embed  # noqa: F401 - Prefect sets up its log handlers on import: on the real stderr, not a test's capture
import flows.predict  # noqa: F401
from flows.cli import main


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    ours = [line for line in err.splitlines() if " error: " in line]  # (MLflow may log creating a fresh database)
    assert code == 2 and len(ours) == 1 and "Traceback" not in err, err
    return ours[0]


def test_expected_failures_are_one_line(tmp_path, capsys):
    model = write_model_pt(tmp_path / "model.pt")
    err = _one_line(capsys, main(["predict", "--model", str(model), "--input", str(tmp_path / "none")]))
    assert "does not exist" in err and "fix:" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    err = _one_line(capsys, main(["predict", "--model", str(junk), "--input", str(DATA)]))
    assert "not an ecgssl model" in err and "ecgssl finetune" in err
    err = _one_line(capsys, main(["predict", "--model", str(model), "--input", str(DATA), "--out", "x.xlsx"]))
    assert ".csv or .parquet" in err
    err = _one_line(capsys, main(["predict", "--model", str(model), "--input", str(DATA), "--batch-size", "0"]))
    assert "--batch-size 0" in err
    err = _one_line(capsys, main(["predict", "--model", "models:/ecgssl-nothing@champion", "--input", str(DATA)]))
    assert "ecgssl-nothing" in err
    err = _one_line(capsys, main(["embed", "--encoder", str(model), "--input", str(DATA), "--out",
                                  str(tmp_path / "e.parquet")]))
    assert "classifier, not an encoder" in err


@pytest.mark.slow  # two Prefect flow runs (ephemeral server)
def test_predict_and_embed_a_folder(tmp_path, capsys):
    from helpers_models import ARCH

    from ecgmodel.embed import random_encoder, read_embeddings
    from ecgmodel.train.checkpoint import save_encoder

    folder = tmp_path / "ecgs"
    folder.mkdir()
    for h in DATA.rglob("*.hea"):
        if "records500" in h.parts or "ludb" in h.parts:
            for f in h.parent.glob(h.stem + ".*"):
                shutil.copy2(f, folder / f.name)
    (folder / "bad.hea").write_text("bad 12 500\n")  # no sample count, no signal lines
    model = write_model_pt(tmp_path / "model.pt")
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--model", str(model), "--input", str(folder), "--out", str(out)]) == 0
    t = pd.read_parquet(out)
    assert len(t) == 5 and list(t.columns[:3]) == ["record", "input", "n_windows"]
    bad = t.set_index("record").loc["bad"]
    assert "does not declare the number of samples" in bad["error"] and pd.isna(bad["prob_AF"])
    assert (t["error"] == "").sum() == 4 and np.isfinite(t.loc[t["error"] == "", "prob_AF"]).all()
    enc, cfg = random_encoder(ARCH, seed=0)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    emb = tmp_path / "emb.parquet"
    assert main(["embed", "--encoder", str(path), "--input", str(folder), "--out", str(emb)]) == 0
    table, X, meta = read_embeddings(emb)
    assert len(table) == 5 and X.shape == (5, 32) and np.isnan(X[table["record"] == "bad"]).all()
    assert meta["encoder"] == str(path)
