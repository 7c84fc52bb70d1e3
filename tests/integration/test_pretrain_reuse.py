"""A finished pretraining run is reused only when the code and the tracking store are the same; one training per
folder; the run logs its store as MLflow dataset inputs and collects system metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import ecgmodel.train.pretrain as pretrain
from ecgmodel.errors import UserError
from ecgmodel.train.out_lock import training_lock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_store import bundled_store  # noqa: E402

TINY = ["run.progress=false", "run.device=cpu", "encoder.d_model=32", "encoder.n_layers=1", "optim.max_steps=4",
        "run.ckpt_every=2", "run.log_every=2", "run.register_model=false", "data.batch_size=8"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return bundled_store(tmp_path_factory.mktemp("reuse") / "store")


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_finished_run_reused_only_with_same_code_and_tracking_store(store, tmp_path, monkeypatch):
    cfg = pretrain.build_config("smoke", TINY)
    out = tmp_path / "run"
    uri_a = f"sqlite:///{tmp_path / 'a.db'}"
    first = pretrain.train(cfg, store, out, tracking_uri=uri_a)
    assert first["step"] == 4 and json.loads((out / "result.json").read_text())["code_digest"]
    run = MlflowClient(uri_a).get_run(first["run_id"])
    assert run.data.tags["ecgssl.code_digest"] == pretrain.code_digest()
    # the store as a dataset input, digest = its content hash, one per split read
    inputs = run.inputs.dataset_inputs
    assert {d.dataset.digest for d in inputs} == {run.data.tags["ecgssl.store_hash"]}
    assert {t.value for d in inputs for t in d.tags if t.key == "mlflow.data.context"} == set(cfg.data.splits)

    again = pretrain.train(cfg, store, out, tracking_uri=uri_a)  # same code, same store: reported, not redone
    assert again["run_id"] == first["run_id"] and _steps(out) == [2, 4]

    uri_b = f"sqlite:///{tmp_path / 'b.db'}"  # another tracking store in force: its run is not there
    other = pretrain.train(cfg, store, out, tracking_uri=uri_b)
    assert other["run_id"] != first["run_id"] and MlflowClient(uri_b).get_run(other["run_id"])

    monkeypatch.setattr(pretrain, "code_digest", lambda *a, **k: "0123456789abcdef")  # the library changed
    redone = pretrain.train(cfg, store, out, tracking_uri=uri_b)
    assert redone["run_id"] != other["run_id"] and _steps(out) == [2, 4]  # trained again from step 0
    assert json.loads((out / "result.json").read_text())["code_digest"] == "0123456789abcdef"


def test_second_training_into_one_folder_is_refused(store, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "busy"
    with training_lock(out):
        with pytest.raises(UserError, match="another process"), training_lock(out):
            pass
        code = main(["pretrain", "--store", str(store), "--out", str(out), *sum((["--set", o] for o in TINY), [])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "being trained into by another process" in err and "--out OTHER_DIR" in err
    assert not (out / "ckpt_last.pt").exists()
