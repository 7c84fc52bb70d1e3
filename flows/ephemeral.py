"""Prefect's temporary API server dies with the command that started it.

Without a ``PREFECT_API_URL``, Prefect runs flows against a temporary server it starts as a child process and
stops at interpreter exit. A ``kill -9`` (or an OOM kill) of the command skips that exit handler and leaves the
server (~220 MB) running. :func:`tie_ephemeral_server_to_process` makes the kernel send the server SIGTERM when its
parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``, set in the child between fork and exec).

The signal follows the *thread* that started the child; Prefect starts the server from the thread that first
needs the API, the main thread for the ``ecgssl`` commands, so the tie is set only there (elsewhere, and on
other systems, the server is left as Prefect starts it).
"""

from __future__ import annotations

import ctypes
import importlib.abc
import signal
import subprocess
import sys
import threading
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _SubprocessWithPdeathsig:
    """Stands for the ``subprocess`` module inside Prefect's server module: its ``Popen`` ties the child."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - the name it stands for
        if threading.current_thread() is threading.main_thread() and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = _die_with_parent
        return subprocess.Popen(*args, **kwargs)


SERVER_MODULE = "prefect.server.api.server"


def _patch(module: Any) -> None:
    if not isinstance(module.subprocess, _SubprocessWithPdeathsig):
        module.subprocess = _SubprocessWithPdeathsig()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches Prefect's server module when it is first imported (importing it costs seconds: a command that
    fails its argument checks, or needs no server, never pays for it)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != SERVER_MODULE:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module: Any, _exec: Any = exec_module) -> None:
                    _exec(module)
                    _patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def tie_ephemeral_server_to_process() -> bool:
    """Install the tie (idempotent); returns whether it is in place (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    if SERVER_MODULE in sys.modules:
        _patch(sys.modules[SERVER_MODULE])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
    return True
