"""bench/gpu_check.sh refuses to run without a GPU at once, saying what is missing (its measuring steps are
exercised by ``bench/gpu_check.sh --cpu-dry-run``, which takes minutes)."""

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run(tmp_path, fake_smi: str, *args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(fake_smi)
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    env.pop("PYTHON", None)
    t0 = time.perf_counter()
    res = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)
    return res, time.perf_counter() - t0


def test_no_gpu_listed_fails_within_seconds_and_says_why(tmp_path):
    res, wall = _run(tmp_path, "#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    assert res.returncode == 2 and wall < 10
    assert "no CUDA GPU" in res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "failed" and "nvidia-smi lists none" in summary["reason"]


def test_unknown_argument_is_refused(tmp_path):
    res, _ = _run(tmp_path, "#!/bin/sh\nexit 1\n", "--gpu-dry-run")
    assert res.returncode == 2 and "unknown argument --gpu-dry-run" in res.stderr
