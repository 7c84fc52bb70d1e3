"""xresnet1d, the supervised reference arm: block design, shapes, lead masking, seeded init and dropout."""

from __future__ import annotations

import pytest
import torch

from ecgmodel.models.dropout import set_dropout_generator
from ecgmodel.models.xresnet1d import ResBlock1d, XResNet1d, XResNet1dConfig

TINY = XResNet1dConfig(layers=[1, 2], widths=[8, 16], expansion=1, stem=[8, 8], head_hidden=8)


def test_default_is_xresnet1d50_and_shapes():
    cfg = XResNet1dConfig()
    assert (cfg.layers, cfg.expansion, cfg.kernel_size) == ([3, 4, 6, 3], 4, 5)
    model = XResNet1d(cfg, n_classes=5).eval()
    assert model.out_dim == 2048 and model.head[-1].out_features == 5
    with torch.no_grad():
        assert model(torch.randn(2, 12, 1000)).shape == (2, 5)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock1d)]
    assert len(blocks) == 16
    # residual branches start at zero (the block starts as the identity path), shortcuts average-pool on stride 2
    assert all(float(b.convs[-1][1].weight.detach().abs().sum()) == 0 for b in blocks)
    assert isinstance(blocks[3].idpath[0], torch.nn.AvgPool1d)


def test_config_rules():
    with pytest.raises(ValueError, match="one entry per stage"):
        XResNet1dConfig(layers=[1, 1], widths=[8])
    with pytest.raises(ValueError, match="odd"):
        XResNet1dConfig(kernel_size=4)
    with pytest.raises(ValueError, match="expected input"):
        XResNet1d(TINY, 3)(torch.randn(2, 11, 500))


def test_absent_leads_are_ignored_and_init_is_seeded():
    a = XResNet1d(TINY, 3, torch.Generator().manual_seed(0)).eval()
    torch.manual_seed(1)
    b = XResNet1d(TINY, 3, torch.Generator().manual_seed(0)).eval()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    x = torch.randn(2, 12, 500)
    present = torch.ones(2, 12, dtype=torch.bool)
    present[:, 6:] = False
    noisy = x.clone()
    noisy[:, 6:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(a(x, present), a(noisy, present))
        assert not torch.allclose(a(x), a(noisy))


def test_training_dropout_follows_the_generator():
    model = XResNet1d(TINY.model_copy(update={"head_dropout": 0.5}), 3, torch.Generator().manual_seed(0)).train()
    x = torch.randn(4, 12, 500)
    outs = []
    for g in (7, 7, 8):
        set_dropout_generator(model, torch.Generator().manual_seed(g))
        torch.manual_seed(g + 100)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        outs.append(model(x))
        model.load_state_dict(state)  # undo the BatchNorm running-stat update
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])
