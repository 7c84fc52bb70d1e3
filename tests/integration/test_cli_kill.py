"""``kill -9`` of the ecgssl command also ends the temporary Prefect server it started (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from helpers_store import bundled_store  # noqa: E402


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_the_cli_ends_its_prefect_server(tmp_path):
    store = bundled_store(tmp_path / "store", max_windows=1)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    cmd = [str(REPO / ".venv" / "bin" / "ecgssl"), "pretrain", "--store", str(store), "--out", str(tmp_path / "o"),
           "--set", "optim.max_steps=100000", "--set", "run.mlflow=false", "--set", "run.progress=false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 150
        while server is None and time.monotonic() < deadline and proc.poll() is None:
            server = next((pid for pid, cmdline in _children(proc.pid) if "uvicorn" in cmdline), None)
            time.sleep(0.5)
        assert server is not None, "the CLI started no temporary Prefect server"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server), f"the temporary Prefect server (pid {server}) outlived its kill -9'd parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None and _alive(server):  # do not leak it when the check fails
            os.kill(server, signal.SIGKILL)
