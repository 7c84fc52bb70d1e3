"""``ecgssl embed`` end to end: a `cpu`-preset encoder pretrained a few steps and registered in MLflow, embedded
through the CLI by registered-model URI, run id and path, and the ``--random`` baseline of the same architecture."""

import numpy as np
import pytest
from helpers_store import bundled_store

from ecgmodel.embed import embed_store, read_embeddings
from ecgmodel.train.pretrain import build_config, train
from flows.cli import main

pytestmark = pytest.mark.slow

TINY = {"optim.max_steps": 2, "optim.warmup_steps": 1, "data.batch_size": 4, "run.progress": False,
        "run.device": "cpu", "run.threads": 1, "run.experiment": "embed-test"}


def test_embed_cli_by_uri_run_id_path_and_random(tmp_path, capsys):
    store = bundled_store(tmp_path / "store")
    res = train(build_config("cpu", TINY), store, tmp_path / "run")
    uri, run_id = res["encoder_uri"], res["run_id"]
    assert uri.startswith("models:/ecgssl-encoder-smoke/")  # a 2-step run never becomes ecgssl-encoder
    outs = {}
    for name, ref in (("uri", uri), ("run", run_id), ("path", str(tmp_path / "run"))):
        outs[name] = tmp_path / f"{name}.parquet"
        assert main(["embed", "--encoder", ref, "--store", str(store), "--out", str(outs[name])]) == 0
    t, X, meta = read_embeddings(outs["uri"])
    from ecgmodel.data.store import open_store

    assert t["record"].is_unique and len(t) == open_store(store).meta()["record"].nunique()
    assert X.shape[1] == 2 * 64  # mean-max of the cpu preset's d_model 64
    for name in ("run", "path"):
        np.testing.assert_allclose(read_embeddings(outs[name])[1], X, rtol=1e-5, atol=1e-6)
    # the random baseline: same architecture, seeded, different weights
    rnd = tmp_path / "random.parquet"
    assert main(["embed", "--random", "--seed", "3", "--encoder", uri, "--store", str(store), "--out", str(rnd)]) == 0
    R = read_embeddings(rnd)[1]
    assert R.shape == X.shape and not np.allclose(R, X)
    np.testing.assert_allclose(R, np.stack(embed_store(store, random_arch=str(tmp_path / "run"), seed=3)["vector"]),
                               rtol=1e-5, atol=1e-6)
    assert "records" in capsys.readouterr().out
    # neither --encoder nor --random: the registry's champion, which this tracking store does not have
    assert main(["embed", "--store", str(store), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "ecgssl-encoder@champion" in capsys.readouterr().err
