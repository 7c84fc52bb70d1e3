"""The pipeline's stages as cached Prefect tasks: ingest -> pretrain -> ablation -> final classifier.

Each stage wraps the flow that owns the work (``flows.ingest`` / ``flows.pretrain`` / ``flows.ablation``; they
run as nested flow runs under the stage's task run) and adds stage-level caching, so a re-run of the pipeline
after a crash or a schedule tick continues instead of redoing finished stages. The cache keys carry the state
of what the previous stage produced and the digest of the library code (see ``tasks/pipeline.py`` for the
fingerprints and why). A cached stage whose MLflow run is not in the tracking store in force is run again.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.pipeline import STAGE_CACHE, STAGE_CACHE_EXPIRATION


@task(cache_policy=STAGE_CACHE, cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def ingest_stage(ingest: dict[str, Any], mirror_state: str) -> dict[str, Any]:
    """Download + convert into the store (``flows.ingest.ingest_flow``), then each of ``ingest['folders']``
    (``flows.ingest.ingest_folder_flow``). Key: config + mirror listings + the folders' files (``mirror_state``).

    Returns the store summary after the last step, ``run`` and ``failed_sources`` of all of them.
    """
    from flows.ingest import ingest_flow, ingest_folder_flow

    ingest = dict(ingest)
    folders = ingest.pop("folders", None) or []
    summary = dict(ingest_flow(**ingest)) if ingest.get("sources") or not folders else {}
    for folder in folders:
        done = dict(ingest_folder_flow(
            folder=folder["path"], store=ingest["store"], labels=folder.get("labels"), source=folder.get("source"),
            label_system=folder.get("label_system", "user-label"), fs=ingest["fs"], window_s=ingest["window_s"],
            max_windows_per_record=ingest["max_windows_per_record"]))  # fmt: skip
        done["run"] = {**summary.get("run", {}), **done["run"]}
        done["failed_sources"] = {**summary.get("failed_sources", {}), **done["failed_sources"]}
        summary = done
    return summary


@task(cache_policy=STAGE_CACHE - "rebuild", cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def pretrain_stage(
    pretrain: dict[str, Any], store: str, store_hash: str, tracking_uri: str = "", rebuild: bool = False
) -> dict[str, Any]:
    """Self-supervised pretraining (``flows.pretrain.pretrain_flow``). Key: config + store content hash +
    tracking URI (its run and registered encoder live there: another store in force trains and logs anew).

    The training loop resumes from its own checkpoint, so a stage interrupted mid-way continues when re-run.
    ``rebuild`` (not part of the cache key, so the new result replaces the stale cache entry) trains from
    scratch: used when a finished run's encoder file has disappeared.
    """
    pretrain = dict(pretrain)
    if rebuild:
        pretrain["resume"] = False
    launcher = pretrain.pop("launcher", "inline")
    nproc = pretrain.pop("nproc_per_node", None)
    if launcher == "torchrun":
        from flows.pretrain import pretrain_ddp_flow

        return dict(pretrain_ddp_flow(store=store, nproc_per_node=nproc, **pretrain))
    from flows.pretrain import pretrain_flow

    return dict(pretrain_flow(store=store, **pretrain))


@task(cache_policy=STAGE_CACHE, cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def ablation_stage(
    task_name: str,
    ablation: dict[str, Any],
    store: str,
    store_hash: str,
    encoder: str | None,
    encoder_hash: str | None,
    tracking_uri: str,
) -> dict[str, Any]:
    """Label-fraction ablation of one downstream task (``flows.ablation.ablation_flow``).

    Key: config + store content hash + encoder sha256 + tracking URI (the results live there).
    """
    from flows.ablation import ablation_flow

    return dict(ablation_flow(task=task_name, store=store, encoder=encoder, **ablation))


@task(cache_policy=STAGE_CACHE, cache_expiration=STAGE_CACHE_EXPIRATION, persist_result=True)
def final_model_stage(
    task_name: str,
    ablation: dict[str, Any],
    arms: dict[str, str],
    overrides: dict[str, Any],
    store: str,
    store_hash: str,
    tracking_uri: str,
) -> dict[str, Any]:
    """The task's deployable classifier (``flows.finetune.final_classifier_flow``): fraction 1.0 with the init and
    schedule the ablation chose on validation, registered as ``ecgssl-<task>``, ``champion`` if it passes the gate.

    Key: the ablation's result (its parent run) + arms + overrides + store hash + tracking URI.
    """
    from flows.finetune import final_classifier_flow

    return dict(final_classifier_flow(task=task_name, store=store, ablation=ablation, arms=arms, overrides=overrides,
                                      champion=True))  # fmt: skip
