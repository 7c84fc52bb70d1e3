"""The pipeline's ingest stage fails when a source could not be fetched, so its result is never cached."""

from __future__ import annotations

import pytest


def test_failed_source_fails_the_stage_instead_of_caching_partial_data(monkeypatch):
    import flows.ingest
    from tasks.pipeline import ingest_stage

    outcome = {"path": "s.zarr", "windows": 10, "failed_sources": {}}
    monkeypatch.setattr(flows.ingest, "ingest_flow", lambda **kw: dict(outcome))
    assert ingest_stage.fn({"sources": ["ludb"]}, "fp")["windows"] == 10
    outcome["failed_sources"] = {"ptb-xl": "cannot fetch https://physionet.org/files/ptb-xl/1.0.3/RECORDS: 503"}
    with pytest.raises(RuntimeError, match=r"ptb-xl.*503.*stage fails so that it is retried"):
        ingest_stage.fn({"sources": ["ludb", "ptb-xl"]}, "fp")
