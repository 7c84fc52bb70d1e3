"""The library layer stays orchestration-free: importing every ``ecgmodel`` module never pulls in prefect,
so the model code runs on a bare GPU machine with torch, numpy and zarr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ecgmodel_never_imports_prefect():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "ecgmodel").rglob("*.py")
        if p.name != "__init__.py"
    )
    assert len(modules) > 20
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(len(bad)); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ecgmodel imported prefect: {out.stdout} {out.stderr[-2000:]}"


def test_flows_and_tasks_hold_no_numerics():
    """Flows and tasks orchestrate; maths lives in ecgmodel (no torch/scipy imports at their top level)."""
    offenders = []
    for folder in ("flows", "tasks"):
        for path in (REPO / folder).glob("*.py"):
            for line in path.read_text().splitlines():
                if line.startswith(("import torch", "from torch", "import scipy", "from scipy")):
                    offenders.append(f"{path.relative_to(REPO)}: {line}")
    assert not offenders, offenders
