"""The whole pipeline flow on a slice of the bundled sample: it runs end to end, reports to Prefect and MLflow,
and re-runs continue instead of redoing - a stage is re-run exactly when what it produced is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecgmodel.config import config_hash
from ecgmodel.data.store import content_hash
from flows.pipeline import PipelineConfig, pipeline_flow

pytestmark = pytest.mark.slow


def small_config(tmp: Path) -> PipelineConfig:
    cfg = PipelineConfig.demo().model_dump()
    cfg["ingest"].update(sources=["ptb-xl"], store=str(tmp / "store.zarr"), raw_dir=str(tmp / "raw"), workers=0)
    cfg["pretrain"].update(out=str(tmp / "pretrain"), overrides={
        "optim.max_steps": 4, "data.batch_size": 8, "run.progress": False, "run.register_model": False})
    cfg["ablation"].update(tasks=["localization"], fractions=[1.0], seeds=1, modes=["full"], inits=["random", "ssl"],
                           overrides={"optim.epochs": 1, "min_class_records": 2}, max_concurrent=1,
                           out_dir=str(tmp / "ablation"), bootstrap_samples=50,
                           schedule_grid=[{"lr": 1e-3, "encoder_lr_scale": 1.0, "warmup_fraction": 0.1}])
    return PipelineConfig.model_validate(cfg)


def _artifacts(key: str) -> list:
    """Every version of the artifact ``key``, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC)


def test_pipeline_end_to_end_then_cached_then_rebuilt(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    cfg = small_config(tmp_path)
    cfg.pretrain.runs = 2  # K pretraining runs: the ablation's SSL arm gets both
    client = MlflowClient()

    first = pipeline_flow(cfg)
    store_hash = content_hash(cfg.ingest.store)
    assert first["store_hash"] == store_hash and first["n_windows"] == 20
    encoder = Path(first["encoder_path"])
    assert encoder.is_file() and encoder.parent.name.startswith(store_hash)  # checkpoints keyed on the data
    abl = first["ablations"]["localization"]
    assert Path(abl["summary_csv"]).is_file() and Path(abl["plot"]).is_file()
    import pandas as pd

    cells = pd.read_csv(Path(abl["summary_csv"]).parent / "cells.csv")
    ssl_cells = cells[(cells["init"] == "ssl") & (cells["role"] == "cell")]
    assert ssl_cells["pretrain_id"].nunique() == 2  # both pretraining runs were fine-tuned from
    assert (tmp_path / "pretrain").is_dir() and any(p.name.endswith("-seed1") for p in (tmp_path / "pretrain").iterdir())

    # MLflow: the pipeline's own run links every stage and carries the standard tags
    run = client.get_run(first["pipeline_run_id"])
    tags = run.data.tags
    assert tags["ecgssl.config_hash"] == config_hash(cfg) and tags["ecgssl.store_hash"] == store_hash
    assert tags["prefect.flow_run_id"] and tags["ecgssl.git_commit"]
    assert tags["ecgssl.ablation.localization.parent_run_id"] == abl["parent_run_id"]
    assert tags["ecgssl.pretrain_run_id"] == first["pretrain_run_id"]
    assert any(k.startswith("localization.gains") for k in run.data.metrics), run.data.metrics
    assert "summary.md" in {a.path for a in client.list_artifacts(run.info.run_id)}
    parent = client.get_run(abl["parent_run_id"])
    assert parent.data.tags["ecgssl.store_hash"] == store_hash

    # Prefect: markdown summary with the links, and the ablation table
    summary = _artifacts("pipeline-summary")
    assert summary and abl["parent_run_id"] in summary[0].data and "noisy" in summary[0].data
    table = _artifacts("ablation-localization")
    assert table and "fraction" in str(table[0].data) and "test_accuracy mean" in str(table[0].data)
    assert "test_accuracy" in table[0].description
    # progress artifacts of the long stages, finished
    for key in ("pretrain-progress", "ingest-progress"):
        progress = _artifacts(key)
        assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0, key

    # 2nd run: nothing changed -> every stage cached (same MLflow runs, no new pretraining run)
    n_pretrain_runs = len(client.search_runs([client.get_experiment_by_name("ecgssl-pretrain").experiment_id]))
    second = pipeline_flow(cfg)
    assert second["pretrain_run_id"] == first["pretrain_run_id"]
    assert second["ablations"]["localization"]["parent_run_id"] == abl["parent_run_id"]
    assert len(client.search_runs([client.get_experiment_by_name("ecgssl-pretrain").experiment_id])) == n_pretrain_runs
    assert second["pipeline_run_id"] != first["pipeline_run_id"]

    # 3rd run: the encoder file was deleted -> pretraining is rebuilt (a new run) and replaces the cached result;
    # the ablations are keyed on the encoder's sha256: re-run when it changed, cached when it did not
    encoder.unlink()
    third = pipeline_flow(cfg)
    assert Path(third["encoder_path"]).is_file() and third["pretrain_run_id"] != first["pretrain_run_id"]
    same_encoder = third["encoder_hash"] == first["encoder_hash"]
    assert (third["ablations"]["localization"]["parent_run_id"] == abl["parent_run_id"]) == same_encoder
    abl = third["ablations"]["localization"]

    # 4th run: the ablation's MLflow parent run was deleted -> only the ablation runs again
    client.delete_run(abl["parent_run_id"])
    fourth = pipeline_flow(cfg)
    new_parent = fourth["ablations"]["localization"]["parent_run_id"]
    assert new_parent != abl["parent_run_id"] and client.get_run(new_parent).info.status == "FINISHED"
    assert fourth["pretrain_run_id"] == third["pretrain_run_id"]  # the rebuilt result is the one cached now

    # 5th run: every fine-tuning cell fails (no class keeps enough records) -> the run ends Failed, after its
    # report, with a message naming the setting that decides it
    failing = cfg.model_copy(deep=True)
    failing.ablation.overrides = {**cfg.ablation.overrides, "min_class_records": 10_000}
    state = pipeline_flow(failing, return_state=True)
    assert state.is_failed(), state
    assert "localization" in state.message and "min_class_records" in state.message
    failed_summary = _artifacts("pipeline-summary")[0].data
    assert "The run failed" in failed_summary and "min_class_records" in failed_summary

    # 6th run: the library code changed (its digest) -> every stage runs again: a new pretraining run (the finished
    # checkpoint was trained by the old code) and a new ablation, not the cached results of the old code
    import ecgmodel.train.pretrain as pretrain_module
    import tasks.pipeline as pipeline_tasks

    monkeypatch.setattr(pipeline_tasks, "code_digest", lambda *a, **k: "c0de0000c0de0000")
    monkeypatch.setattr(pretrain_module, "code_digest", lambda *a, **k: "c0de0000c0de0000")
    sixth = pipeline_flow(cfg)
    assert sixth["pretrain_run_id"] not in (third["pretrain_run_id"], fourth["pretrain_run_id"])
    assert sixth["ablations"]["localization"]["parent_run_id"] != new_parent
    pretrain_tags = client.get_run(sixth["pretrain_run_id"]).data.tags
    assert pretrain_tags["ecgssl.code_digest"] == "c0de0000c0de0000"

    # 7th run: nothing changed, but --refresh -> every stage recomputed (pretraining from scratch)
    seventh = pipeline_flow(cfg, refresh=True)
    assert seventh["pretrain_run_id"] != sixth["pretrain_run_id"]
    assert seventh["ablations"]["localization"]["parent_run_id"] != sixth["ablations"]["localization"]["parent_run_id"]


def test_pretrain_ddp_flow_through_the_torchrun_launcher(tmp_path, monkeypatch):
    """The gpu pool's multi-process path: flow -> infra/torchrun/pretrain.sh -> torchrun (2 gloo processes here)."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.data.convert import convert_sources
    from ecgmodel.data.download import download_source
    from ecgmodel.data.ingest_config import IngestConfig
    from ecgmodel.pipeline_config import SAMPLE_MIRROR
    from flows.pretrain import pretrain_ddp_flow

    monkeypatch.chdir(tmp_path)
    cfg = IngestConfig(sources=["ludb", "ptb-xl"], mirror=str(SAMPLE_MIRROR), store=str(tmp_path / "store.zarr"),
                       raw_dir=str(tmp_path / "raw"), workers=0, progress=False)
    fetched = [dict(download_source(cfg.source(s), cfg.mirror, cfg.raw_dir, progress=False).summary(), slug=s,
                    mirror=cfg.mirror) for s in cfg.sources]
    convert_sources(cfg, fetched, client=None)

    state = pretrain_ddp_flow(store=cfg.store, preset="smoke", out=str(tmp_path / "ddp"), nproc_per_node=2,
                              overrides={"optim.max_steps": 3, "data.batch_size": 8, "run.progress": False,
                                         "run.register_model": False}, return_state=True)
    result = state.result()
    assert Path(result["encoder_path"]).is_file() and result["step"] == 3
    tags = MlflowClient().get_run(result["run_id"]).data.tags
    assert tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert tags["ecgssl.store_hash"] == content_hash(cfg.store)
