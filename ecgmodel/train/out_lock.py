"""One training at a time per output folder.

Two processes training into one folder interleave ``metrics.jsonl`` and overwrite each other's checkpoints,
leaving an encoder no MLflow run points to. :func:`training_lock` holds ``<out>/.train.lock`` (an OS file lock via
``filelock``: released when the process ends, even by ``kill -9``) for the whole run and refuses a second
holder at once with a :class:`~ecgmodel.errors.UserError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ecgmodel.errors import UserError

LOCK_FILE = ".train.lock"


def _refusal(out: Path) -> UserError:
    return UserError(
        f"{out} is being trained into by another process (lock {out / LOCK_FILE} held); one training per folder",
        "wait for it to finish, or train elsewhere: ecgssl pretrain ... --out OTHER_DIR "
        "(pipeline: ecgssl pipeline --set pretrain.out=OTHER_DIR)",
    )


@contextlib.contextmanager
def training_lock(out: str | Path) -> Iterator[None]:
    """Hold the training lock of ``out`` (created if needed) for the ``with`` block; refuse if it is held."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _refusal(out) from None
    try:
        yield
    finally:
        lock.release()


def check_not_training(out: str | Path) -> None:
    """Raise the refusal if another process holds the training lock of ``out`` now (nothing is created)."""
    out = Path(out)
    if not (out / LOCK_FILE).exists():
        return
    lock = FileLock(out / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _refusal(out) from None
    lock.release()
