"""DDP on CPU (gloo, 2 processes) through the same entry point as single-process training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecgmodel.train.synthetic import make_synthetic_store

ARGS = [
    "--preset", "smoke", "--no-resume",
    "--set", "encoder.input_samples=500", "--set", "encoder.patch_size=25", "--set", "encoder.d_model=32",
    "--set", "encoder.n_layers=2", "--set", "encoder.n_heads=4", "--set", "data.batch_size=16",
    "--set", "optim.max_steps=30", "--set", "optim.warmup_steps=3", "--set", "optim.lr=0.003",
    "--set", "run.log_every=5", "--set", "run.mlflow=false",
    "--set", "run.progress=false", "--set", "run.device=cpu", "--set", "run.threads=1",
]  # fmt: skip


def _curve(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_gloo_two_processes_matches_single_process(tmp_path):
    store = make_synthetic_store(tmp_path / "store", n=96, window_samples=1000, chunk_windows=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "ecgmodel.train.pretrain", "--store", str(store), "--out", str(tmp_path / "single"),
         *ARGS], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ecgmodel.train.pretrain", "--store", str(store), "--out", str(tmp_path / "ddp"), *ARGS],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    summary = json.loads(ddp.stdout.strip().splitlines()[-1])
    assert summary["step"] == 30 and Path(summary["encoder_path"]).is_file()
    a, b = _curve(tmp_path / "single"), _curve(tmp_path / "ddp")
    assert len(a) == len(b) == 6
    # both learn, and the curves agree closely (same global batch; different but equally sized data shards)
    assert a[-1] < a[0] - 0.15 and b[-1] < b[0] - 0.15
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.1 * a[0]
