import pytest
import torch

from ecgmodel.config import apply_overrides
from ecgmodel.models import EncoderConfig, build_encoder
from ecgmodel.train.checkpoint import load_checkpoint, load_encoder, save_encoder
from ecgmodel.train.config import preset
from ecgmodel.train.pretrain import train
from ecgmodel.train.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("ckpt") / "store", n=40, window_samples=1000, chunk_windows=8)


def tiny_cfg(**over):
    base = {
        "encoder.input_samples": 500, "encoder.patch_size": 25, "encoder.d_model": 32, "encoder.n_layers": 2,
        "encoder.n_heads": 4, "encoder.dropout": 0.1, "data.batch_size": 8, "optim.max_steps": 8,
        "optim.warmup_steps": 2, "run.log_every": 1, "run.ckpt_every": 100, "run.mlflow": False,
        "run.progress": False, "run.device": "cpu",
    }
    base.update(over)
    return apply_overrides(preset("smoke"), base)


def test_encoder_roundtrip(tmp_path):
    cfg = EncoderConfig(input_samples=500, patch_size=25, d_model=32, n_layers=1, n_heads=2)
    enc = build_encoder(cfg)
    path = save_encoder(tmp_path / "encoder.pt", enc, cfg)
    obj = torch.load(path, weights_only=True)  # plain data only
    assert obj["config"]["d_model"] == 32
    enc2, cfg2 = load_encoder(path)
    assert cfg2 == cfg and type(enc2) is type(enc)
    x = torch.randn(2, 12, 500)
    assert torch.equal(enc.eval()(x), enc2.eval()(x))
    enc3, _ = load_encoder(tmp_path)  # a directory holding encoder.pt
    assert torch.equal(enc3.eval()(x), enc(x))
    with pytest.raises(FileNotFoundError, match="neither"):
        load_encoder("no/such/encoder.pt")


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_resume_equals_uninterrupted(tmp_path, store, loader):
    cfg = tiny_cfg(**{"data.loader": loader})
    full = train(cfg, store, tmp_path / "full", resume=False)
    first = train(cfg, store, tmp_path / "split", resume=False, stop_after=4)
    assert first["step"] == 4 and "encoder_path" not in first
    second = train(cfg, store, tmp_path / "split", resume=True)
    assert second["step"] == 8
    losses_full = [h["loss"] for h in full["history"]]
    losses_split = [h["loss"] for h in first["history"] + second["history"]]
    assert losses_full == losses_split  # bit-exact: same batches, crops, masks, permutations, dropout
    a = load_checkpoint(tmp_path / "full" / "ckpt_last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "ckpt_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    enc, ecfg = load_encoder(tmp_path / "split" / "ckpt_last.pt")
    assert ecfg == cfg.encoder
    # nothing left to do: resuming a finished run does no more steps
    again = train(cfg, store, tmp_path / "split", resume=True)
    assert again["step"] == 8 and again["history"] == []


def test_resume_refuses_another_architecture(tmp_path, store):
    train(tiny_cfg(**{"optim.max_steps": 2}), store, tmp_path / "run")
    with pytest.raises(ValueError, match="another encoder/ssl config"):
        train(tiny_cfg(**{"encoder.d_model": 64}), store, tmp_path / "run")
