"""Progress of a long stage as a Prefect progress artifact (the run's "Artifacts" tab shows a live bar).

``ProgressArtifact`` is the callback a library loop takes (``on_progress(done, total)``): it creates the artifact
on the first call and updates it when the share done has grown by ``every_pct`` points (and at the end), so a
200k-step run makes a few dozen API calls, not 200k. Outside a flow or task run it does nothing; an API error
is logged once and never stops the work it reports on.
"""

from __future__ import annotations

import logging
from uuid import UUID

log = logging.getLogger(__name__)


class ProgressArtifact:
    """``on_progress(done, total)`` -> a throttled Prefect progress artifact (0-100 %)."""

    def __init__(self, key: str | None, description: str, every_pct: float = 5.0) -> None:
        self.key, self.description, self.every_pct = key, description, every_pct
        self.artifact_id: UUID | None = None
        self.shown: float | None = None
        self.updates = 0
        self._broken = False

    def __call__(self, done: int, total: int) -> None:
        if self._broken or total <= 0:
            return
        pct = round(min(100.0, max(0.0, 100.0 * done / total)), 1)
        if self.shown is not None and pct < 100.0 and pct - self.shown < self.every_pct:
            return
        if self.shown == pct:
            return
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact
            from prefect.context import FlowRunContext, TaskRunContext

            if FlowRunContext.get() is None and TaskRunContext.get() is None:
                return
            text = f"{self.description}: {done} / {total}"
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(pct, key=self.key, description=text)
            else:
                update_progress_artifact(self.artifact_id, pct, description=text)
            self.shown = pct
            self.updates += 1
        except Exception as exc:  # reporting must never stop the work it reports on
            self._broken = True
            log.warning("progress artifact %s could not be written (%s); the work goes on without it", self.key, exc)
