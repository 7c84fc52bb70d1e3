"""Progress reporting: the throttled Prefect progress artifact, and the hooks the library loops call."""

from __future__ import annotations

import math

import prefect.artifacts
import prefect.context
import pytest

from tasks.progress import ProgressArtifact


@pytest.fixture
def recorded(monkeypatch):
    """Record what would reach the Prefect API, as if inside a task run."""
    calls: list[tuple] = []
    monkeypatch.setattr(prefect.context.TaskRunContext, "get", classmethod(lambda cls: object()))
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact",
                        lambda progress, key=None, description=None: calls.append(("create", progress, key)) or "id-1")
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact",
                        lambda artifact_id, progress, description=None: calls.append(("update", progress, artifact_id)))
    return calls


def test_updates_are_throttled_to_every_few_percent(recorded):
    bar = ProgressArtifact("pretrain-progress", "pretraining steps", every_pct=5.0)
    for step in range(0, 1001):
        bar(step, 1000)
    assert recorded[0] == ("create", 0.0, "pretrain-progress")
    shown = [c[1] for c in recorded]
    assert shown[-1] == 100.0 and len(recorded) == 21  # 0, 5, ..., 100
    assert all(b - a >= 5.0 for a, b in zip(shown, shown[1:], strict=False))
    assert {c[2] for c in recorded[1:]} == {"id-1"}


def test_a_resumed_run_starts_where_it_was_and_the_end_is_always_shown(recorded):
    bar = ProgressArtifact(None, "records", every_pct=50.0)
    bar(70, 100)
    bar(99, 100)
    bar(100, 100)
    bar(100, 100)  # repeated: no second update
    assert [c[1] for c in recorded] == [70.0, 100.0]


def test_api_errors_never_stop_the_work(monkeypatch, caplog):
    monkeypatch.setattr(prefect.context.TaskRunContext, "get", classmethod(lambda cls: object()))

    def down(*args, **kwargs):
        raise ConnectionError("API unreachable")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", down)
    bar = ProgressArtifact("k", "steps")
    bar(1, 10)
    bar(10, 10)  # no second attempt, no exception
    assert "could not be written" in caplog.text and bar.updates == 0


def test_outside_a_run_it_does_nothing():
    bar = ProgressArtifact("k", "steps")
    bar(5, 10)
    assert bar.updates == 0 and bar.artifact_id is None


def test_registered_encoder_description_and_tags():
    from ecgmodel.train.pretrain import build_config, encoder_version_metadata

    cfg = build_config("smoke", {"optim.max_steps": 7})
    meta = encoder_version_metadata(cfg, "abc123", {"eval_recon_loss": 0.123456789, "lead_acc": math.nan}, "r1")
    tags = meta["tags"]
    assert tags["ecgssl.store_hash"] == "abc123" and tags["ecgssl.pretext"] == cfg.ssl.mode
    assert tags["ecgssl.config_hash"] and tags["ecgssl.steps"] == "7"
    assert tags["ecgssl.metric.eval_recon_loss"] == "0.123457" and "ecgssl.metric.lead_acc" not in tags
    assert "abc123" in meta["description"] and "r1" in meta["description"] and "0.1235" in meta["description"]
