import pytest
import torch

from ecgmodel.data.transforms import to_model_input
from ecgmodel.models import EncoderConfig, build_encoder
from ecgmodel.models.heads import PretrainModel
from ecgmodel.ssl.shuffle import apply_lead_permutation, random_lead_permutation

TINY = {"input_samples": 500, "patch_size": 25, "d_model": 32, "n_layers": 2, "n_heads": 4}


ARCHS = [("transformer", "joint"), ("transformer", "divided"), ("resnet1d", "joint")]


@pytest.mark.parametrize("arch,attention", ARCHS)
def test_shapes_and_api(arch, attention):
    cfg = EncoderConfig(arch=arch, attention=attention, **TINY)
    enc = build_encoder(cfg.model_dump())
    x = torch.randn(3, 12, 500)
    tok = enc(x)
    assert tok.shape == (3, 12, 20, 32)
    assert enc.embed(x).shape == (3, enc.out_dim) and enc.out_dim == 32
    # shorter crops (multiple of the patch) work; longer ones and wrong shapes are refused clearly
    assert enc(torch.randn(1, 12, 250)).shape == (1, 12, 10, 32)
    with pytest.raises(ValueError, match="input_samples"):
        enc(torch.randn(1, 12, 1000))
    with pytest.raises(ValueError, match=r"\(B, 12, T\)"):
        enc(torch.randn(1, 8, 500))


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        EncoderConfig(input_samples=510, patch_size=25)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        EncoderConfig(d_model=30, n_heads=4)


@pytest.mark.parametrize("arch,attention", ARCHS)
def test_no_lead_identity_leak_equivariance(arch, attention):
    """Apart from the slot embedding, the whole pipeline is lead-permutation equivariant: the model learns
    which lead sits in a slot from the signal only."""
    torch.manual_seed(0)
    model = PretrainModel(build_encoder(EncoderConfig(arch=arch, attention=attention, **TINY)), "joint").eval()
    with torch.no_grad():
        model.encoder.slot_embed.zero_()
    raw = (torch.randn(4, 12, 800) * 300 + torch.arange(12)[None, :, None] * 50).to(torch.int16)
    src = random_lead_permutation(4, 12, 1.0, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(4, 12, 20) < 0.5
    # input normalisation is per sample and per lead: it commutes with the permutation
    x = to_model_input(raw, 500, "start")
    assert torch.allclose(to_model_input(apply_lead_permutation(raw, src), 500, "start"), apply_lead_permutation(x, src))
    with torch.no_grad():
        r1, l1 = model(apply_lead_permutation(x, src), apply_lead_permutation(mask, src))
        r0, l0 = model(x, mask)
    assert torch.allclose(r1, apply_lead_permutation(r0, src), atol=1e-4)
    assert torch.allclose(l1, apply_lead_permutation(l0, src), atol=1e-4)


def test_identical_leads_give_chance_level_lead_accuracy():
    """With 12 identical leads nothing but the slot tells slots apart, so lead-number accuracy over random
    permutations stays at 1/12 whatever the weights."""
    torch.manual_seed(0)
    model = PretrainModel(build_encoder(EncoderConfig(**TINY)), "joint").eval()
    one = torch.randn(256, 1, 500)
    x = one.expand(256, 12, 500)
    src = random_lead_permutation(256, 12, 1.0, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, logits = model(apply_lead_permutation(x, src))
    acc = (logits.argmax(-1) == src).float().mean().item()
    assert abs(acc - 1 / 12) < 0.03


@pytest.mark.parametrize("attention", ["joint", "divided"])
def test_masked_patches_are_hidden_but_keep_their_place(attention):
    """The mask token replaces the patch embedding (nothing of the hidden samples reaches the model), while
    the slot and time position still differ between masked tokens."""
    torch.manual_seed(0)
    model = PretrainModel(build_encoder(EncoderConfig(attention=attention, **TINY)), "joint").eval()
    x = torch.randn(2, 12, 500)
    mask = torch.rand(2, 12, 20) < 0.5
    noisy = torch.where(mask.repeat_interleave(25, dim=2), torch.randn_like(x) * 5, x)  # new hidden content
    with torch.no_grad():
        r0, l0 = model(x, mask)
        r1, l1 = model(noisy, mask)
        tok = model.encoder(x, torch.ones(2, 12, 20, dtype=torch.bool))  # everything hidden
    assert torch.allclose(r0, r1, atol=1e-5) and torch.allclose(l0, l1, atol=1e-5)
    assert not torch.allclose(tok[:, 0, 0], tok[:, 1, 0]) and not torch.allclose(tok[:, 0, 0], tok[:, 0, 1])



@pytest.mark.parametrize("arch", ["transformer", "resnet1d"])
def test_weights_come_from_the_given_generator(arch):
    cfg = EncoderConfig(arch=arch, d_model=16, n_layers=1, n_heads=2, input_samples=500, patch_size=50)
    a = build_encoder(cfg, torch.Generator().manual_seed(5))
    torch.manual_seed(0)  # the global generator must not matter
    b = build_encoder(cfg, torch.Generator().manual_seed(5))
    c = build_encoder(cfg, torch.Generator().manual_seed(6))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_meanmax_pooling_ignores_absent_leads():
    cfg = EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=500, patch_size=50)
    enc = build_encoder(cfg).eval()
    x = torch.randn(2, 12, 500)
    present = torch.ones(2, 12, dtype=torch.bool)
    present[0, 3:] = False
    with torch.no_grad():
        z = enc.embed(x, present, pooling="meanmax")
        tok = enc(x)
    assert z.shape == (2, 32) and enc.pooled_dim("meanmax") == 32
    torch.testing.assert_close(z[0, :16], tok[0, :3].mean(dim=(0, 1)))
    torch.testing.assert_close(z[0, 16:], tok[0, :3].amax(dim=(0, 1)))
    torch.testing.assert_close(z[1, 16:], tok[1].amax(dim=(0, 1)))
    torch.testing.assert_close(enc.embed(x, present)[0], z[0, :16])
    with pytest.raises(ValueError, match="pooling"):
        enc.embed(x, present, pooling="median")


def test_seeded_dropout_draws_from_its_generator_only():
    from ecgmodel.models.dropout import SeededDropout, set_dropout_generator

    cfg = EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=500, patch_size=50, dropout=0.3)
    enc = build_encoder(cfg, torch.Generator().manual_seed(0)).train()
    x = torch.randn(2, 12, 500)
    outs = []
    for global_seed in (1, 2):
        set_dropout_generator(enc, torch.Generator().manual_seed(9))
        torch.manual_seed(global_seed)
        outs.append(enc(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    set_dropout_generator(enc, torch.Generator().manual_seed(10))
    assert not torch.allclose(enc(x), outs[0])  # the masks are real
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x), rtol=0, atol=0)
    d = SeededDropout(0.5).train()
    d.generator = torch.Generator().manual_seed(0)
    y = d(torch.ones(10_000))
    assert set(torch.unique(y).tolist()) == {0.0, 2.0} and abs(float(y.mean()) - 1.0) < 0.05
