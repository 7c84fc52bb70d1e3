"""The GPU path on a CUDA device: bf16 numerics, GPU-resident loading, exact resume, compiled = eager.

Run with ``pytest -m gpu`` on a CUDA machine (``bench/gpu_check.sh`` does). ``ECGSSL_TEST_DEVICE`` picks the device
(default ``cuda``); ``ECGSSL_TEST_DEVICE=cpu`` runs the same checks on the CPU (the dry run of
``bench/gpu_check.sh``). Asked for CUDA where there is none, every test fails at setup saying so.
"""

from __future__ import annotations

import json
import os

# cuBLAS picks deterministic reductions only with a fixed workspace; must be set before the first cuBLAS call
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

from ecgmodel.config import apply_overrides  # noqa: E402
from ecgmodel.data.loader import InMemoryLoader, StreamingLoader  # noqa: E402
from ecgmodel.models.encoder import build_encoder  # noqa: E402
from ecgmodel.models.heads import PretrainModel  # noqa: E402
from ecgmodel.train.checkpoint import load_checkpoint  # noqa: E402
from ecgmodel.train.config import preset  # noqa: E402
from ecgmodel.train.pretrain import pretext_step, train  # noqa: E402
from ecgmodel.train.synthetic import make_synthetic_store  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device() -> torch.device:
    name = os.environ.get("ECGSSL_TEST_DEVICE", "cuda")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"GPU tests need a CUDA device and torch {torch.__version__} sees none "
                    "(ECGSSL_TEST_DEVICE=cpu runs them on the CPU)", pytrace=False)  # fmt: skip
    return dev


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 means fp32 here (TF32 matmuls would be compared against themselves otherwise)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("gpu") / "store", n=96, window_samples=5000,
                                chunk_windows=16)  # fmt: skip


def model_cfg(device: torch.device, **over):
    """A mid-sized model on CUDA (the base preset's width and crop, 4 layers), a small one on the CPU."""
    if device.type == "cuda":
        enc = {"encoder.input_samples": 2500, "encoder.patch_size": 25, "encoder.d_model": 512,
               "encoder.n_layers": 4, "encoder.n_heads": 8, "encoder.attention": "divided", "data.batch_size": 32}  # fmt: skip
    else:
        enc = {"encoder.input_samples": 1000, "encoder.patch_size": 25, "encoder.d_model": 64,
               "encoder.n_layers": 2, "encoder.n_heads": 4, "encoder.attention": "divided", "data.batch_size": 8}  # fmt: skip
    return apply_overrides(preset("smoke"), {**enc, "encoder.dropout": 0.0, "run.device": str(device), **over})


def _loss_and_grads(model, batch, cfg, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=batch.signal.device).manual_seed(seed)  # same crops, masks, permutations
    model.zero_grad(set_to_none=True)
    out = pretext_step(model, batch.signal, batch.lead_present, batch.valid_length, cfg, gen)
    out["loss"].backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return out["loss"].detach().float(), grads


def test_bf16_forward_backward_is_finite_and_close_to_fp32(device, store):
    cfg32 = model_cfg(device, **{"run.dtype": "float32"})
    cfg16 = apply_overrides(cfg32, {"run.dtype": "bfloat16"})
    torch.manual_seed(0)
    model = PretrainModel(build_encoder(cfg32.encoder), cfg32.ssl.mode).to(device)
    batch = InMemoryLoader(store, cfg32.data.batch_size, device).next()
    loss32, g32 = _loss_and_grads(model, batch, cfg32)
    loss16, g16 = _loss_and_grads(model, batch, cfg16)
    assert torch.isfinite(loss16) and torch.isfinite(g16).all()
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32) + 1e-3, (float(loss16), float(loss32))
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.99, float(cos)
    assert (g16.norm() / g32.norm() - 1).abs() < 0.05


def test_gpu_resident_loader_yields_the_cpu_loaders_batches(device, store):
    B, n_batches = 16, 8  # 96 windows: crosses an epoch boundary
    ref = InMemoryLoader(store, B, "cpu", seed=3)
    resident = InMemoryLoader(store, B, device, seed=3, device_resident=True)
    pinned = InMemoryLoader(store, B, device, seed=3, device_resident=False)
    s_ref = StreamingLoader(store, B, "cpu", seed=3, buffer_chunks=2, prefetch=2)
    s_dev = StreamingLoader(store, B, device, seed=3, buffer_chunks=2, prefetch=2)
    try:
        assert resident.device_resident and resident._data.signal.device.type == device.type
        for _ in range(n_batches):
            want = ref.next()
            for got in (resident.next(), pinned.next()):
                assert got.signal.device.type == device.type
                for a, b in ((got.signal, want.signal), (got.lead_present, want.lead_present),
                             (got.valid_length, want.valid_length)):  # fmt: skip
                    assert torch.equal(a.cpu(), b)
            sw, sg = s_ref.next(), s_dev.next()
            assert sg.signal.device.type == device.type and torch.equal(sg.signal.cpu(), sw.signal)
            assert torch.equal(sg.valid_length.cpu(), sw.valid_length)
    finally:
        s_ref.close()
        s_dev.close()


def test_resume_on_the_device_is_bit_exact_in_fp32(device, store, tmp_path):
    """8 steps in one go == 4 steps, stop, resume for 4 more: same losses, same weights, bit for bit."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = model_cfg(device, **{"run.dtype": "float32", "optim.max_steps": 8, "optim.warmup_steps": 2,
                               "run.log_every": 1, "run.ckpt_every": 100, "run.mlflow": False,
                               "run.progress": False, "encoder.dropout": 0.1})  # fmt: skip
    # the math kernel: the fused attention backward kernels may accumulate in a different order on each run,
    # which would make any two runs differ, resumed or not
    with sdpa_kernel([SDPBackend.MATH]):
        full = train(cfg, store, tmp_path / "full", resume=False)
        train(cfg, store, tmp_path / "split", resume=False, stop_after=4)
        second = train(cfg, store, tmp_path / "split", resume=True)

    def losses(run):
        return [json.loads(ln)["loss"] for ln in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert second["step"] == 8 and len(losses("full")) == 8
    assert losses("full") == losses("split")
    a = load_checkpoint(tmp_path / "full" / "ckpt_last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "ckpt_last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["metrics"]["loss"] == second["metrics"]["loss"]


@pytest.mark.slow
def test_compiled_model_agrees_with_eager(device, store):
    cfg = model_cfg(device, **{"run.dtype": "float32"})
    torch.manual_seed(0)
    eager = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode).to(device)
    compiled = torch.compile(eager)  # same parameters
    batch = InMemoryLoader(store, cfg.data.batch_size, device).next()
    loss_e, g_e = _loss_and_grads(eager, batch, cfg)
    loss_c, g_c = _loss_and_grads(compiled, batch, cfg)
    assert torch.isfinite(loss_c)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    assert (g_c - g_e).norm() <= 1e-4 * g_e.norm(), float((g_c - g_e).norm() / g_e.norm())
    if device.type == "cuda":  # and in bf16, within bf16's precision
        cfg16 = apply_overrides(cfg, {"run.dtype": "bfloat16"})
        loss_e16, _ = _loss_and_grads(eager, batch, cfg16)
        loss_c16, _ = _loss_and_grads(compiled, batch, cfg16)
        assert abs(loss_c16 - loss_e16) <= 0.02 * abs(loss_e16)


def test_training_step_makes_no_host_sync(device, store):
    """loader.next() + pretext step + backward + clipping + fused AdamW, as in the training loop, never wait for
    the GPU (CUDA's sync debug mode raises on any synchronising call; on the CPU the same step just runs)."""
    from ecgmodel.train.pretrain import param_groups

    cfg = model_cfg(device)
    model = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=device.type == "cuda")
    loader = InMemoryLoader(store, 16, device, device_resident=True)  # 96 windows: 6 batches per epoch
    gen = torch.Generator(device=device).manual_seed(0)
    loader.next()  # the epoch's permutation goes to the device once, here
    acc = torch.zeros((), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            b = loader.next()
            out = pretext_step(model, b.signal, b.lead_present, b.valid_length, cfg, gen)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            acc += out["loss"].detach()
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(acc)
