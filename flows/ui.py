"""``ecgssl ui``: the MLflow UI on 127.0.0.1 over the tracking URI in force (``./mlflow.db`` by default).

The UI runs as a child process group (``mlflow ui`` starts web workers of its own); Ctrl-C, SIGTERM and SIGHUP
sent to ``ecgssl ui`` are forwarded to that whole group, so stopping the command stops every process it started.
A port that is already taken is reported before anything starts, with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

STOP_GRACE_S = 20.0


def port_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound now (nothing else listens there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
    """Send ``sig`` to the process group of ``proc`` (its own session), then SIGKILL after ``grace`` seconds."""
    for s, wait in ((sig, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # web workers outlive their parent when it dies first: sweep the group once more
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()


def _cmd_ui(args: argparse.Namespace) -> int:
    from ecgmodel.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"The tracking URI is a server already; open {uri}")
        return 0
    if not port_free(args.host, args.port):
        print(f"ecgssl ui: {args.host}:{args.port} is already in use (another MLflow UI?). "
              f"Open http://{args.host}:{args.port} if it is one, or pick another port: ecgssl ui --port 5001",
              file=sys.stderr)  # fmt: skip
        return 1
    url = f"http://{args.host}:{args.port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port),
           "--backend-store-uri", uri, "--workers", "1"]  # fmt: skip
    print(f"MLflow UI on {url} (tracking URI {uri}); Ctrl-C to stop", flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        # only signal here: waiting inside a handler could deadlock with the interrupted wait below
        received.append(signum)
        _signal_group(proc, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        deadline = None
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + STOP_GRACE_S
                if deadline is not None and time.monotonic() > deadline:
                    _signal_group(proc, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_group(proc)  # also on an exception above; sweeps workers left behind by their parent
    if received:
        return 0 if received[0] == signal.SIGINT else 128 + received[0]
    return code


def register_cli(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("ui", help="browse the MLflow runs (mlflow ui on 127.0.0.1 over the tracking URI)")
    u.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    u.set_defaults(func=_cmd_ui)
