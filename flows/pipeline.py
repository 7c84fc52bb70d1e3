"""The whole pipeline as one Prefect flow: ingest -> pretrain -> label-fraction ablations of both tasks.

    ecgssl pipeline --demo                       # bundled real sample, ephemeral Prefect, ./mlflow.db
    ecgssl pipeline --config my.yaml --set pretrain.preset=base
    ecgssl ui                                    # browse the results in MLflow (127.0.0.1:5000)

The settings are a :class:`ecgmodel.pipeline_config.PipelineConfig`. The stages are cached Prefect tasks
(``flows/stages.py``) whose cache keys carry the state of what the previous stage produced (mirror listings ->
store content hash -> encoder sha256), so a re-run after a crash continues where it stopped, and a changed store
or encoder re-runs exactly the stages downstream of it.

Each run leaves, in Prefect, a markdown summary artifact (headline numbers + links to the MLflow runs) and one
table artifact per ablation; in MLflow, a ``pipeline`` run (experiment ``ecgssl-pipeline``) tagged with the git
commit, config hash, store content hash and Prefect flow-run id, linking the pretraining and ablation runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from ecgmodel.config import config_hash
from ecgmodel.pipeline_config import (  # noqa: F401  (re-exported: the config lives in ecgmodel)
    ALL_SOURCES,
    SAMPLE_MIRROR,
    AblationSection,
    IngestSection,
    PipelineConfig,
    PretrainSection,
)
from ecgmodel.report import mlflow_run_link, render_summary, table_records
from flows.stages import ablation_stage, final_model_stage, ingest_stage, pretrain_stage
from tasks.pipeline import (
    experiment_ids,
    file_fingerprint,
    log_pipeline_run,
    mirror_fingerprint,
    mlflow_run_exists,
    store_fingerprint,
)

CELL_FAILURE_HINT = (
    "Cells fail most often when the labelled records are too few for the split: a localization class with fewer "
    "than `min_class_records` records is merged into 'other', and fewer than 2 classes leave nothing to learn. "
    "Lower `min_class_records` in the ablation overrides (CLI: --set "
    "'ablation.overrides={\"min_class_records\": 3}'; deployment: config.ablation.overrides) or ingest more records; "
    "every cell's error is in the ablation's cells.csv and in this run's log"
)


PRETEXT_ARMS = ("mask", "shuffle", "joint")


class PipelineFailed(RuntimeError):
    """A pipeline run that finished its report but whose stages did not all succeed (``.result``: the report)."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}

    def __reduce__(self):
        return (type(self), (str(self), self.result))


def ingest_state(cfg: PipelineConfig) -> str:
    """The ingest stage's view of its inputs: the mirror's listings, and the files of each ``ingest.folders``."""
    from ecgmodel.data.folder import fingerprint

    state = mirror_fingerprint(cfg.ingest.mirror, cfg.ingest.sources)
    folders = [fingerprint(f.path, f.labels) for f in cfg.ingest.folders]
    return "+".join([state, *folders])


def source_failures(ingested: dict[str, Any], cfg: PipelineConfig) -> list[str]:
    """One line per source that could not be fetched, naming the settings that decide it."""
    return [
        f"ingest: source `{slug}` could not be fetched from `{cfg.ingest.mirror}` ({reason}). Check the mirror "
        "(`ingest.mirror`) and the network, or leave the source out (`ingest.sources`)."
        for slug, reason in (ingested.get("failed_sources") or {}).items()
    ]


def cell_failures(name: str, res: dict[str, Any]) -> str | None:
    """The line for an ablation whose fine-tuning cells failed (None when all succeeded)."""
    failed = int(res.get("n_failed") or 0)
    if not failed:
        return None
    first = _first_cell_error(res.get("summary_csv"))
    return (f"ablation `{name}`: {failed} of {res.get('n_cells', '?')} fine-tuning cells failed"
            + (f" (first error: {first})" if first else "") + f". {CELL_FAILURE_HINT}.")  # fmt: skip


def _first_cell_error(summary_csv: str | None) -> str | None:
    cells = Path(summary_csv).parent / "cells.csv" if summary_csv else None
    if cells is None or not cells.is_file():
        return None
    import pandas as pd

    frame = pd.read_csv(cells)
    errors = frame["error"].dropna() if "error" in frame.columns else []
    return str(errors.iloc[0])[:300] if len(errors) else None


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig = PipelineConfig(), refresh: bool = False) -> dict[str, Any]:  # noqa: B008
    """Ingest -> pretrain -> ablations of both downstream tasks; every stage cached on the state it consumes
    (and on the digest of the code it runs). ``refresh`` recomputes every stage, pretraining from scratch.

    Ends Failed (after writing its report) when a source could not be fetched or an ablation's fine-tuning cells
    failed; the state message says which, and which setting decides it.
    """
    from ecgmodel.tracking import tracking_uri

    cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(config)
    logger = get_run_logger()
    uri = tracking_uri()
    run_id = flow_run.id
    logger.info("pipeline config %s (hash %s); MLflow at %s", cfg.model_dump_json(), config_hash(cfg), uri)

    seconds: dict[str, float] = {}
    failures: list[str] = []
    t0 = time.perf_counter()

    # 1. ingest: keyed on the config and the mirror's checksum listings
    ingest_cfg = cfg.ingest.model_dump()
    mirror_state = ingest_state(cfg)
    state = ingest_stage.with_options(refresh_cache=refresh)(ingest_cfg, mirror_state, return_state=True)
    ingested = state.result()
    if store_fingerprint(cfg.ingest.store) != ingested.get("store_hash"):
        logger.warning("store %s does not match the cached ingest result: ingesting again", cfg.ingest.store)
        ingested = ingest_stage.with_options(refresh_cache=True)(ingest_cfg, mirror_state)
    elif ingested.get("failed_sources") and state.name == "Cached":
        logger.warning("the cached ingest result has failed sources: fetching them again")
        ingested = ingest_stage.with_options(refresh_cache=True)(ingest_cfg, mirror_state)
    failures += source_failures(ingested, cfg)
    store_hash = ingested.get("store_hash")
    if not store_hash:
        raise RuntimeError(
            f"ingest left no committed store at {cfg.ingest.store}: nothing to pretrain on. " + " ".join(failures)
        )
    seconds["ingest"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 2. pretrain: keyed on the config and the store's content hash; reads the train split of the store's split
    # assignment (linked to PTB-XL's patients when its metadata is at hand), the one the ablations use
    split_overrides = split_settings(cfg)
    pretrain_cfg = cfg.pretrain.model_dump(exclude={"runs"})  # runs: how many pretraining stages, below
    pretrain_cfg["overrides"] = {**pretrain_cfg["overrides"],
                                 **{f"data.split.{k}": v for k, v in split_overrides.items()}}  # fmt: skip
    pretrain_cfg["out"] = str(Path(cfg.pretrain.out) / f"{store_hash}-{config_hash(cfg.pretrain, 8)}")
    stage = pretrain_stage.with_options(refresh_cache=refresh)
    state = stage(pretrain_cfg, cfg.ingest.store, store_hash, uri, rebuild=refresh, return_state=True)
    pretrained = state.result()
    encoder = pretrained.get("encoder_path")
    encoder_hash = file_fingerprint(encoder)
    pretrain_run = pretrained.get("run_id")
    run_gone = state.name == "Cached" and bool(pretrain_run) and not mlflow_run_exists(pretrain_run, uri)
    if encoder_hash is None or run_gone:
        logger.warning("the cached pretraining result's %s: pretraining again",
                       f"encoder {encoder} is gone" if encoder_hash is None else
                       f"MLflow run {pretrain_run} is not in the tracking store in force ({uri})")
        pretrained = pretrain_stage.with_options(refresh_cache=True)(
            pretrain_cfg, cfg.ingest.store, store_hash, uri, rebuild=encoder_hash is None
        )
        encoder = pretrained.get("encoder_path")
        encoder_hash = file_fingerprint(encoder)
        if encoder_hash is None:
            raise FileNotFoundError(f"pretraining finished but its encoder file {encoder!r} does not exist")
    arms: dict[str, str] = {}
    if cfg.ablation.pretext_ablation:  # one encoder per pretext task, same preset and budget as the main one
        from ecgmodel.train.pretrain import build_config as pretrain_config

        main_mode = pretrain_config(cfg.pretrain.preset, pretrain_cfg["overrides"]).ssl.mode
        for arm in PRETEXT_ARMS:
            if arm == main_mode:
                arms[f"ssl-{arm}"] = encoder
                continue
            arm_cfg = dict(pretrain_cfg, overrides={**pretrain_cfg["overrides"], "ssl.mode": arm,
                                                    "run.registered_model": f"ecgssl-encoder-{arm}"})
            arm_cfg["out"] = f"{pretrain_cfg['out']}-{arm}"
            arms[f"ssl-{arm}"] = pretrain_stage.with_options(name=f"pretrain-{arm}", refresh_cache=refresh)(
                arm_cfg, cfg.ingest.store, store_hash, uri, rebuild=refresh)["encoder_path"]  # fmt: skip
    # K pretraining runs per SSL arm: runs 1..K-1 of every arm (seed + k, own folder, not registered); the
    # ablations get each arm's K encoders and resample them in the hierarchical bootstrap
    arm_runs: dict[str, list[str]] = {arm: [path] for arm, path in (arms or {"ssl": encoder}).items()}
    for k in range(1, cfg.pretrain.runs):
        for arm in arm_runs:
            mode = arm.removeprefix("ssl-") if arm != "ssl" else None
            base = pretrain_config_seed(pretrain_cfg["overrides"])
            extra = {**pretrain_cfg["overrides"], "run.seed": base + k, "run.register_model": False,
                     **({"ssl.mode": mode} if mode else {})}  # fmt: skip
            out_k = pretrain_cfg["out"] + (f"-{mode}" if mode and mode != _main_mode(cfg, pretrain_cfg) else "")
            run_cfg = dict(pretrain_cfg, overrides=extra, out=f"{out_k}-seed{k}")
            arm_runs[arm].append(pretrain_stage.with_options(name=f"pretrain-{arm}-seed{k}", refresh_cache=refresh)(
                run_cfg, cfg.ingest.store, store_hash, uri, rebuild=refresh)["encoder_path"])  # fmt: skip
    seconds["pretrain"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 3. ablations: keyed on the config, the store hash, the encoder's sha256 and the tracking URI. A failed
    # ablation does not stop the other one; the run ends Failed after its report.
    ablations: dict[str, dict[str, Any]] = {}
    for name in cfg.ablation.tasks:
        ablation_cfg = cfg.ablation.model_dump(exclude={"tasks", "out_dir", "pretext_ablation", "final_models"})
        ablation_cfg["overrides"] = {**ablation_cfg["overrides"],
                                     **{f"split.{k}": v for k, v in split_overrides.items()}}  # fmt: skip
        if arms or cfg.pretrain.runs > 1:
            ablation_cfg["encoders"] = arm_runs
        if cfg.ablation.out_dir:
            ablation_cfg["out_dir"] = str(Path(cfg.ablation.out_dir) / name)
        runs_hash = encoder_hash if cfg.pretrain.runs == 1 else "+".join(
            str(file_fingerprint(p)) for refs in arm_runs.values() for p in refs)  # every pretraining run's content
        args = (name, ablation_cfg, cfg.ingest.store, store_hash, None if "encoders" in ablation_cfg else encoder,
                runs_hash, uri)
        stage = ablation_stage.with_options(name=f"ablation-{name}", refresh_cache=refresh)
        state = stage(*args, return_state=True)
        res = state.result(raise_on_failure=False) if state.is_completed() else None
        if res is not None and state.name == "Cached":
            csv = res.get("summary_csv")
            gone = not mlflow_run_exists(res.get("parent_run_id"), uri) or not (csv and Path(csv).is_file())
            if gone or res.get("n_failed"):
                logger.warning("the cached %s ablation is %s: running it again", name,
                               "gone" if gone else "incomplete")  # fmt: skip
                state = stage.with_options(refresh_cache=True)(*args, return_state=True)
                res = state.result(raise_on_failure=False) if state.is_completed() else None
        if res is None:
            message = state.message or str(state.result(raise_on_failure=False))
            failures.append(f"ablation `{name}` failed: {message}"
                            + ("" if "min_class_records" in message else f". {CELL_FAILURE_HINT}."))  # fmt: skip
            ablations[name] = {"error": message}
        else:
            ablations[name] = res
            line = cell_failures(name, res)
            if line:
                failures.append(line)
        seconds[f"ablation-{name}"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 3b. deployable models: the final classifier per task, the encoder's champion gate (docs/use.md "Registry")
    finals = final_models(cfg, ablations, arms or {"ssl": encoder}, split_overrides, store_hash, uri,
                          pretrained.get("encoder_uri"), failures)  # fmt: skip
    seconds["final-models"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 4. report: Prefect artifacts + one MLflow pipeline run linking everything
    n_windows = _store_windows(cfg.ingest.store)
    parents = [r.get("parent_run_id") for r in ablations.values()]
    exp_ids = experiment_ids(uri, [pretrained.get("run_id"), *parents])
    summary = render_summary(cfg, uri, ingested, pretrained, ablations, n_windows, run_id, exp_ids, seconds,
                             failures=failures)  # fmt: skip
    summary += final_models_line(finals)
    pipeline_run_id = log_pipeline_run(cfg, uri, summary, ingested, pretrained, ablations, run_id, encoder_hash,
                                       failed=bool(failures))  # fmt: skip
    pipeline_link = mlflow_run_link(uri, pipeline_run_id, experiment_ids(uri, [pipeline_run_id])[pipeline_run_id])
    summary += f"\nPipeline summary run in MLflow: {pipeline_link}\n"
    create_markdown_artifact(summary, key="pipeline-summary", description="ecgssl pipeline headline numbers")
    for name, res in ablations.items():
        metric = res.get("metric")
        rows = table_records(res.get("summary_csv"), metric=metric)
        if rows:
            create_table_artifact(rows, key=f"ablation-{name}",
                                  description=f"{name} label-fraction ablation: {metric} over seeds "
                                  "(mean, std, 95% CI) per mode, init and label fraction")  # fmt: skip

    result = {
        "config_hash": config_hash(cfg),
        "tracking_uri": uri,
        "store": cfg.ingest.store,
        "store_hash": store_hash,
        "n_windows": n_windows,
        "encoder_path": encoder,
        "encoder_hash": encoder_hash,
        "pretrain_run_id": pretrained.get("run_id"),
        "ablations": ablations,
        "final_models": finals,
        "pipeline_run_id": pipeline_run_id,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "summary_markdown": summary,
        "failures": failures,
    }
    if failures:
        message = f"{len(failures)} problem(s): " + " | ".join(failures)
        logger.error("pipeline failed: %s", message)
        return Failed(message=message, data=PipelineFailed(message, result))
    return result


def pretrain_config_seed(overrides: dict[str, Any]) -> int:
    """The ``run.seed`` of the first pretraining run (the preset's unless overridden)."""
    return int(overrides.get("run.seed", 0))


def _main_mode(cfg: PipelineConfig, pretrain_cfg: dict[str, Any]) -> str:
    from ecgmodel.train.pretrain import build_config as pretrain_config

    return pretrain_config(cfg.pretrain.preset, pretrain_cfg["overrides"]).ssl.mode


def final_models(cfg: PipelineConfig, ablations: dict[str, dict[str, Any]], arms: dict[str, str],
                 split_overrides: dict[str, Any], store_hash: str, uri: str, encoder_uri: str | None,
                 failures: list[str]) -> dict[str, Any]:
    """Train and register each task's deployable classifier; gate the encoder on the first task's ablation."""
    out: dict[str, Any] = {}
    if not cfg.ablation.final_models:
        return out
    logger = get_run_logger()
    overrides = {**cfg.ablation.overrides, **{f"split.{k}": v for k, v in split_overrides.items()}}
    for name, res in ablations.items():
        if res.get("error") or not res.get("summary_csv"):
            continue
        state = final_model_stage.with_options(name=f"final-{name}")(
            name, res, arms, overrides, cfg.ingest.store, store_hash, uri, return_state=True)  # fmt: skip
        if state.is_completed():
            out[name] = state.result()
        else:
            failures.append(f"final model `{name}` failed: {state.message or state.result(raise_on_failure=False)}")
            out[name] = {"error": state.message}
    first = next(iter(ablations.values()), {})
    if encoder_uri and str(encoder_uri).startswith("models:/") and first and not first.get("error"):
        from ecgmodel.serving.register import promote_encoder

        out["encoder"] = promote_encoder(encoder_uri, first)
        logger.info("encoder gate: %s", out["encoder"]["detail"])
    return out


def final_models_line(finals: dict[str, Any]) -> str:
    """The summary's lines on the registered models."""
    lines = []
    for name, r in finals.items():
        if r.get("error") or "name" not in r:
            continue
        alias = "@champion" if r.get("champion") or (name == "encoder" and r.get("passed")) else " (gate not passed)"
        lines.append(f"- `models:/{r['name']}/{r['version']}`{alias}: {r.get('detail') or r['gate']['detail']}")
    return ("\nDeployable models (docs/use.md):\n" + "\n".join(lines) + "\n") if lines else ""


def split_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """Split settings shared by pretraining and the ablations: PTB-XL's metadata (the patients of the
    Challenge's PTB-XL copies) from the mirror, when a Challenge source is ingested and the file is there."""
    if not {"challenge-2020", "challenge-2021"} & set(cfg.ingest.sources):
        return {}
    from ecgmodel.data.sources import get_source

    rel = f"ptb-xl/{get_source('ptb-xl').version}/ptbxl_database.csv"
    mirror = cfg.ingest.mirror.removeprefix("file://")
    if mirror.startswith(("http://", "https://")):
        return {"ptbxl_metadata": f"{mirror.rstrip('/')}/{rel}"}
    path = Path(mirror) / rel
    return {"ptbxl_metadata": str(path)} if path.is_file() else {}


def _store_windows(store: str) -> int | None:
    from ecgmodel.data.store import StoreError, open_store

    try:
        return int(open_store(store).n)
    except (FileNotFoundError, StoreError, OSError):
        return None
