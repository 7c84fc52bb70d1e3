"""Errors a person can act on.

:class:`UserError` is an *expected* failure: bad arguments, a missing or damaged store, a file that is not a
checkpoint of this project, an unreachable mirror. It carries the problem (naming the record, path or argument and
the rule it breaks) and the ``ecgssl ...`` command that fixes it. The ``ecgssl`` command line prints it as one line
without a traceback and exits 2; any other exception is unexpected and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure: ``problem`` (what and which rule) and ``fix`` (the command that fixes it)."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.strip()
        self.fix = (fix or "").strip() or None
        super().__init__(self.line())

    def line(self) -> str:
        """The one line the CLI prints."""
        return f"{self.problem} - fix: {self.fix}" if self.fix else self.problem
