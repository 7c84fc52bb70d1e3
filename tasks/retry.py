"""Retry policy shared by the tasks: expected failures are final, the rest may be transient.

A :class:`ecgmodel.errors.UserError` (bad store, refused overwrite, not a checkpoint, a folder in use, ...) and an
``OSError`` that waiting cannot fix (disk full, read-only file system, no permission, a file where a folder
belongs) fail a task at once: a retry would only repeat the failure and bury its message under tracebacks.
:func:`user_facing_os_errors` turns such an ``OSError`` into a ``UserError`` naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator

from ecgmodel.errors import UserError

#: errno values another attempt cannot fix.
PERMANENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}
)


def is_permanent(exc: BaseException | None) -> bool:
    """True for a :class:`UserError` or an ``OSError`` whose errno is in :data:`PERMANENT_ERRNOS`."""
    if isinstance(exc, UserError):
        return not getattr(exc, "transient", False)  # e.g. a store lock held past its timeout: worth another try
    return isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS


def retry_unless_permanent(*also_permanent: type[BaseException]) -> Callable:
    """A Prefect ``retry_condition_fn`` refusing :func:`is_permanent` failures and ``also_permanent`` types."""

    def condition(task, task_run, state) -> bool:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # the state could not be read back: let the retry policy decide
            return True
        return not (is_permanent(exc) or isinstance(exc, also_permanent))

    return condition


@contextlib.contextmanager
def user_facing_os_errors(fix: str) -> Iterator[None]:
    """Re-raise a permanent ``OSError`` (disk full, read-only, ...) as a :class:`UserError` with ``fix``."""
    try:
        yield
    except OSError as exc:
        if not is_permanent(exc):
            raise
        where = exc.filename or "the output folder"
        raise UserError(f"cannot write {where}: {exc.strerror or exc} (not transient: no retry)", fix) from exc
