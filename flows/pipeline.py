"""The whole pipeline as one Prefect flow: ingest -> pretrain -> label-fraction ablations of both tasks.

    ecgssl pipeline --demo                       # bundled real sample, ephemeral Prefect, ./mlflow.db
    ecgssl pipeline --config my.yaml --set pretrain.preset=base
    ecgssl ui                                    # browse the results in MLflow (127.0.0.1:5000)

The stages are cached Prefect tasks (``tasks/pipeline.py``) whose cache keys carry the state of what the
previous stage produced (mirror listings -> store content hash -> encoder sha256), so a re-run after a crash
continues where it stopped, and a changed store or encoder re-runs exactly the stages downstream of it.

Each run leaves, in Prefect, a markdown summary artifact (headline numbers + links to the MLflow runs) and one
table artifact per ablation; in MLflow, a ``pipeline`` run (experiment ``ecgssl-pipeline``) tagged with the git
commit, config hash, store content hash and Prefect flow-run id, linking the pretraining and ablation runs.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecgmodel.config import apply_overrides, config_hash, flatten
from tasks.pipeline import (
    ablation_stage,
    file_fingerprint,
    ingest_stage,
    mirror_fingerprint,
    mlflow_run_exists,
    pretrain_stage,
    store_fingerprint,
    torchrun_pretrain,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MIRROR = REPO_ROOT / "sample" / "physionet"
PHYSIONET_MIRROR = "https://physionet.org/files/"
ALL_SOURCES = ["challenge-2020", "challenge-2021", "ptb-xl", "ludb"]
DownstreamTask = Literal["arrhythmia27", "localization", "ptbxl-superclass"]
PRETEXT_ARMS = ("mask", "shuffle", "joint")


# --------------------------------------------------------------------------------------------- config
class IngestSection(BaseModel):
    """Parameters of ``flows.ingest.ingest_flow`` (download, convert, window, write the Zarr store)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=lambda: list(ALL_SOURCES),
        description="Catalog slugs to ingest (challenge-2020, challenge-2021, ptb-xl, ludb).",
    )
    mirror: str = Field(
        PHYSIONET_MIRROR,
        description="PhysioNet-shaped base holding <slug>/<version>/: https://physionet.org/files/, another "
        "http(s) mirror, or a local folder (the demo uses the bundled sample/physionet).",
    )
    store: str = Field("data/store.zarr", description="Zarr v3 store to create or extend (see docs/store.md).")
    raw_dir: str = Field("data/raw", description="Where downloaded, checksum-verified files are kept.")
    fs: int = Field(500, gt=0, description="Sampling rate of the store, Hz; every record is resampled to it.")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds (5000 samples at 500 Hz).")
    workers: int = Field(
        2, ge=0, description="Local Dask worker processes (0: convert in-process; ignored with dask_address)."
    )
    max_windows_per_record: int | None = Field(
        6, ge=1, description="Cap on windows cut from one long record (None: every window)."
    )
    dask_address: str | None = Field(
        None, description="Address of a running Dask scheduler (tcp://host:8786); None starts a local cluster."
    )


class PretrainSection(BaseModel):
    """Parameters of ``flows.pretrain.pretrain_flow`` (masked reconstruction + lead-order prediction)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        "base", description="Pretraining preset: `smoke` (CPU-sized, minutes) or `base` (GPU-sized, ~38M params)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='Dotted-key overrides of the preset, e.g. {"optim.lr": 0.0003}; validated by its config.',
    )
    resume: bool = Field(True, description="Continue from the newest checkpoint in `out` when there is one.")
    out: str = Field(
        "runs/pretrain",
        description="Base folder for checkpoints and the exported encoder. The pipeline trains into "
        "<out>/<store hash>-<config hash>: a new store or config starts fresh, an interrupted run resumes.",
    )
    launcher: Literal["inline", "torchrun"] = Field(
        "inline",
        description="inline: train in the flow's process (CPU or one GPU); torchrun: DDP over every GPU of the "
        "host through infra/torchrun/pretrain.sh.",
    )
    nproc_per_node: int | None = Field(
        None, ge=1, description="torchrun processes per host (None: one per visible GPU)."
    )


class AblationSection(BaseModel):
    """Parameters of ``flows.ablation.ablation_flow``, run once per downstream task."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[DownstreamTask] = Field(
        default_factory=lambda: ["arrhythmia27", "localization", "ptbxl-superclass"],
        description="Downstream tasks: arrhythmia (Challenge 2020 metric), origin localization, and the PTB-XL "
        "diagnostic-superclass benchmark (macro AUROC).",
    )
    fractions: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
        description="Fractions of the labelled training set (nested subsets), each in (0, 1].",
    )
    seeds: int = Field(5, ge=1, description="Repeats per (fraction, mode, init) with different subsets/seeds.")
    margin: float = Field(
        0.01, ge=0, description="Non-inferiority margin of labels_to_match, in units of the task's metric "
        "(smallest fraction whose lower 95% CI bound of SSL(f) - random(100%) is >= -margin from there on).",
    )
    bootstrap_samples: int = Field(1000, ge=10, description="Paired-bootstrap replicates behind every CI.")
    schedule_grid: list[dict[str, float]] | None = Field(
        None, description="Per-init schedule grid (lr, encoder_lr_scale, warmup_fraction) chosen on validation; "
        "None: the documented default (ecgmodel.downstream.config.DEFAULT_SCHEDULE_GRID); one point: no tuning.",
    )
    allow_pretrain_overlap: bool = Field(
        False, description="Run even when the encoder was pretrained on a task's val/test recordings (reported)."
    )
    pretext_ablation: bool = Field(
        False, description="Pretrain one encoder per pretext arm (mask only, shuffle only, joint; same budget) "
        "and compare them downstream under one MLflow parent run per task.",
    )
    modes: list[str] = Field(
        default_factory=lambda: ["linear", "full"],
        description="How the encoder is trained downstream: 'linear' (frozen probe) and/or 'full' fine-tuning.",
    )
    inits: list[str] = Field(
        default_factory=lambda: ["ssl", "random"],
        description="Encoder initialisations compared: 'ssl' (pretrained) and 'random'.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted-key overrides of the fine-tuning config (epochs, lr, ...)."
    )
    max_concurrent: int = Field(2, ge=1, description="Fine-tuning runs trained at the same time.")
    out_dir: str | None = Field(
        None, description="Folder for the reports, one sub-folder per task (None: runs/ablation/<task>-<hash>)."
    )

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0.0 < f <= 1.0]
        if bad or not value:
            raise ValueError(f"fractions must be a non-empty list of values in (0, 1]; got {value}")
        return sorted(set(value))


class PipelineConfig(BaseModel):
    """Everything one pipeline run needs; the same model validates CLI files, --set and Prefect parameters."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestSection = Field(default_factory=IngestSection, description="Ingest stage.")
    pretrain: PretrainSection = Field(default_factory=PretrainSection, description="Pretraining stage.")
    ablation: AblationSection = Field(default_factory=AblationSection, description="Ablation stage.")
    experiment: str = Field(
        "ecgssl-pipeline", description="MLflow experiment of the pipeline's own summary run."
    )

    @classmethod
    def demo(cls) -> PipelineConfig:
        """Small settings for the bundled sample: finishes in minutes on 2 CPU cores, no server needed."""
        return cls(
            ingest=IngestSection(
                mirror=str(SAMPLE_MIRROR),
                store=".demo/store.zarr",
                raw_dir=".demo/raw",
                workers=2,
                max_windows_per_record=3,
            ),
            # the CPU `smoke` preset as it is (200 steps, ~0.15 s per step on 2 idle cores: under a minute)
            pretrain=PretrainSection(
                preset="smoke", out=".demo/pretrain", overrides={"run.ckpt_every": 50},
            ),
            # 3 fractions x 2 inits x 2 seeds per task: two seeds give the plot an interval (still noisy: the
            # sample has a few dozen records, and the output says so)
            ablation=AblationSection(
                tasks=["arrhythmia27", "localization"],
                fractions=[0.25, 0.5, 1.0], seeds=2, modes=["full"], inits=["ssl", "random"], max_concurrent=2,
                # the sample has 3-6 PTB-XL records per MI location: keep those classes instead of merging
                overrides={"optim.epochs": 5, "min_class_records": 3},
                bootstrap_samples=200, margin=0.02,
                schedule_grid=[{"lr": 1e-3, "encoder_lr_scale": 0.1, "warmup_fraction": 0.0},
                               {"lr": 1e-3, "encoder_lr_scale": 1.0, "warmup_fraction": 0.1}],
            ),
        )


def load_config(path: str | Path, base: PipelineConfig | None = None) -> PipelineConfig:
    """Read a YAML/JSON config file; keys it leaves out keep the values of ``base`` (default settings)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a pipeline config must be a mapping, got {type(data).__name__}")
    merged = _deep_merge((base or PipelineConfig()).model_dump(), data)
    return PipelineConfig.model_validate(merged)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------- reporting
def numeric_items(obj: Any, prefix: str = "") -> dict[str, float]:
    """Flatten the numbers of a nested result (dicts / lists / scalars) into ``{"a.b": 1.0}``."""
    out: dict[str, float] = {}
    if isinstance(obj, bool) or obj is None:
        return out
    if isinstance(obj, int | float):
        if math.isfinite(float(obj)):
            out[prefix or "value"] = float(obj)
        return out
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):  # numpy scalar
        try:
            return numeric_items(obj.item(), prefix)
        except (TypeError, ValueError):
            return out
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else []
    for key, value in items:
        out.update(numeric_items(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    return "-" if value is None else str(value)


def mlflow_run_link(uri: str, run_id: str | None, experiment_id: str | None = None) -> str:
    """Markdown link to an MLflow run: a URL for a tracking server, the ``ecgssl ui`` URL for a local store."""
    if not run_id:
        return "-"
    anchor = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"#/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"[{run_id}]({uri.rstrip('/')}/{anchor})"
    return f"[{run_id}](http://127.0.0.1:5000/{anchor}) (start `ecgssl ui` first)"


def render_summary(
    cfg: PipelineConfig,
    uri: str,
    ingested: dict[str, Any],
    pretrained: dict[str, Any],
    ablations: dict[str, dict[str, Any]],
    n_windows: int | None,
    flow_run_id: str | None,
    experiment_ids: dict[str, str | None] | None = None,
    seconds: dict[str, float] | None = None,
) -> str:
    """The markdown summary of one pipeline run (Prefect artifact, MLflow artifact, CLI output)."""
    exp = experiment_ids or {}
    lines = [
        "# ecgssl pipeline",
        "",
        f"- config hash `{config_hash(cfg)}`; Prefect flow run `{flow_run_id or '-'}`",
        f"- store `{cfg.ingest.store}`: content hash `{ingested.get('store_hash', '-')}`, "
        f"{n_windows if n_windows is not None else '?'} windows from {', '.join(cfg.ingest.sources)}",
        f"- encoder `{pretrained.get('encoder_path', '-')}`; pretraining run "
        f"{mlflow_run_link(uri, pretrained.get('run_id'), exp.get(str(pretrained.get('run_id'))))}",
        f"- MLflow tracking URI `{uri}`",
    ]
    if seconds:
        lines.append("- stage wall time (cached stages take seconds): "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    lines.append("")
    if ingested.get("failed_sources"):
        lines += [f"> Sources that could not be fetched: {_fmt(ingested['failed_sources'])}", ""]
    if n_windows is not None and n_windows < 2000:
        lines += [
            f"> These numbers come from only {n_windows} windows: they are noisy and show that the pipeline",
            "> runs end to end; they are not evidence about label efficiency. Run on full databases for that.",
            "",
        ]
    for name, res in ablations.items():
        parent = res.get("parent_run_id")
        ci = res.get("gain_ci") or {}
        sig = res.get("significant") or {}
        gains = ", ".join(
            f"{f}: {g:+.3f} [{ci[f][0]:+.3f}, {ci[f][1]:+.3f}]{'' if sig.get(f) else ' (not significant)'}"
            if f in ci and all(isinstance(v, float) and math.isfinite(v) for v in [g, *ci[f]]) else f"{f}: {_fmt(g)}"
            for f, g in (res.get("gains") or {}).items()
        ) or "-"
        ltm = res.get("labels_to_match_text") or _fmt(res.get("labels_to_match"))
        lines += [
            f"## {name}",
            "",
            "| headline | value |",
            "|---|---|",
            f"| labels to match (smallest label fraction at which SSL is non-inferior to random init on all "
            f"labels, 95% CI, margin {_fmt(cfg.ablation.margin)}) | {ltm} |",
            f"| gains (SSL - random per fraction, paired-bootstrap 95% CI) | {gains} |",
            f"| best | {_fmt(res.get('best'))} |",
            f"| failed cells | {res.get('n_failed', 0)} of {res.get('n_cells', '?')} |",
            f"| MLflow parent run | {mlflow_run_link(uri, parent, exp.get(str(parent)))} |",
            f"| experiment | {_fmt(res.get('experiment'))} |",
            f"| summary table | `{_fmt(res.get('summary_csv'))}` |",
            f"| label-efficiency plot | `{_fmt(res.get('plot'))}` |",
            "",
        ]
        if res.get("pretrain_overlap"):
            lines += [f"> {res['pretrain_overlap']}", ""]
        lines += [f"- {line}" for line in res.get("statements") or []] + [""]
    return "\n".join(lines)


def table_records(summary_csv: str | None, max_rows: int = 500) -> list[dict[str, Any]]:
    """The ablation summary CSV as JSON-safe row dicts (NaN -> None) for a Prefect table artifact."""
    if not summary_csv or not Path(summary_csv).is_file():
        return []
    import pandas as pd

    frame = pd.read_csv(summary_csv).head(max_rows)
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict(orient="records")


def _experiment_ids(uri: str, run_ids: list[str | None]) -> dict[str, str | None]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out: dict[str, str | None] = {}
    for run_id in filter(None, run_ids):
        try:
            out[run_id] = client.get_run(run_id).info.experiment_id
        except MlflowException:
            out[run_id] = None
    return out


def log_pipeline_run(
    cfg: PipelineConfig,
    uri: str,
    summary_md: str,
    ingested: dict[str, Any],
    pretrained: dict[str, Any],
    ablations: dict[str, dict[str, Any]],
    flow_run_id: str | None,
    encoder_hash: str | None,
) -> str:
    """One MLflow run per pipeline run: params, tags linking every stage's runs, headline metrics, summary."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import run_tags, setup_mlflow

    exp_id = setup_mlflow(cfg.experiment, uri)
    extra: dict[str, Any] = {
        "ecgssl.stage": "pipeline",
        "ecgssl.pretrain_run_id": pretrained.get("run_id") or "",
        "ecgssl.encoder_path": pretrained.get("encoder_path") or "",
        "ecgssl.encoder_sha256": encoder_hash or "",
    }
    for name, res in ablations.items():
        extra[f"ecgssl.ablation.{name}.parent_run_id"] = res.get("parent_run_id") or ""
    tags = run_tags(
        config_hash=config_hash(cfg),
        store_hash=ingested.get("store_hash"),
        store_path=cfg.ingest.store,
        flow_run_id=flow_run_id,
        extra=extra,
    )
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(exp_id, run_name=f"pipeline-{config_hash(cfg)}", tags=tags)
    run_id = run.info.run_id
    params = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flatten(cfg).items()}
    metrics = []
    now = int(time.time() * 1000)
    for name, res in ablations.items():
        for key in ("labels_to_match", "gains", "best"):
            for sub, value in numeric_items(res.get(key), f"{name}.{key}").items():
                metrics.append(Metric(key=sub, value=value, timestamp=now, step=0))
    client.log_batch(
        run_id, metrics=metrics, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
    )
    client.log_text(run_id, summary_md, "summary.md")
    client.set_terminated(run_id)
    return run_id


# --------------------------------------------------------------------------------------------- flow
@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:  # noqa: B008
    """Ingest -> pretrain -> ablations of both downstream tasks; every stage cached on the state it consumes."""
    from ecgmodel.tracking import tracking_uri

    cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(config)
    logger = get_run_logger()
    uri = tracking_uri()
    run_id = flow_run.id
    logger.info("pipeline config %s (hash %s); MLflow at %s", cfg.model_dump_json(), config_hash(cfg), uri)

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. ingest: keyed on the config and the mirror's checksum listings
    ingest_cfg = cfg.ingest.model_dump()
    mirror_state = mirror_fingerprint(cfg.ingest.mirror, cfg.ingest.sources)
    ingested = ingest_stage(ingest_cfg, mirror_state)
    if store_fingerprint(cfg.ingest.store) != ingested.get("store_hash"):
        logger.warning("store %s does not match the cached ingest result: ingesting again", cfg.ingest.store)
        ingested = ingest_stage.with_options(refresh_cache=True)(ingest_cfg, mirror_state)
    store_hash = ingested["store_hash"]
    seconds["ingest"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 2. pretrain: keyed on the config and the store's content hash; reads the train split of the store's split
    # assignment (linked to PTB-XL's patients when its metadata is at hand), as the ablations do
    split_overrides = _split_overrides(cfg)
    pretrain_cfg = cfg.pretrain.model_dump()
    pretrain_cfg["overrides"] = {**pretrain_cfg["overrides"], **{f"data.split.{k}": v for k, v in split_overrides.items()}}
    pretrain_cfg["out"] = str(Path(cfg.pretrain.out) / f"{store_hash}-{config_hash(cfg.pretrain, 8)}")
    pretrained = pretrain_stage(pretrain_cfg, cfg.ingest.store, store_hash)
    encoder = pretrained.get("encoder_path")
    encoder_hash = file_fingerprint(encoder)
    if encoder_hash is None:
        logger.warning("encoder %s from the cached pretraining result is gone: pretraining again", encoder)
        pretrained = pretrain_stage.with_options(refresh_cache=True)(
            pretrain_cfg, cfg.ingest.store, store_hash, rebuild=True
        )
        encoder = pretrained.get("encoder_path")
        encoder_hash = file_fingerprint(encoder)
        if encoder_hash is None:
            raise FileNotFoundError(f"pretraining finished but its encoder file {encoder!r} does not exist")
    arms: dict[str, str] = {}
    if cfg.ablation.pretext_ablation:  # one encoder per pretext task, same budget as the main one
        from ecgmodel.train.pretrain import build_config as pretrain_config

        main_mode = pretrain_config(cfg.pretrain.preset, pretrain_cfg["overrides"]).ssl.mode
        for arm in PRETEXT_ARMS:
            if arm == main_mode:
                arms[f"ssl-{arm}"] = encoder
                continue
            arm_cfg = dict(pretrain_cfg, overrides={**pretrain_cfg["overrides"], "ssl.mode": arm})
            arm_cfg["out"] = f"{pretrain_cfg['out']}-{arm}"
            arms[f"ssl-{arm}"] = pretrain_stage.with_options(name=f"pretrain-{arm}")(
                arm_cfg, cfg.ingest.store, store_hash)["encoder_path"]  # fmt: skip
    seconds["pretrain"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 3. ablations: keyed on the config, the store hash, the encoder's sha256 and the tracking URI
    ablations: dict[str, dict[str, Any]] = {}
    for name in cfg.ablation.tasks:
        ablation_cfg = cfg.ablation.model_dump(exclude={"tasks", "out_dir", "pretext_ablation"})
        ablation_cfg["overrides"] = {**ablation_cfg["overrides"], **{f"split.{k}": v for k, v in split_overrides.items()}}
        if arms:
            ablation_cfg["encoders"] = arms
        if cfg.ablation.out_dir:
            ablation_cfg["out_dir"] = str(Path(cfg.ablation.out_dir) / name)
        args = (name, ablation_cfg, cfg.ingest.store, store_hash, encoder, encoder_hash, uri)
        res = ablation_stage.with_options(name=f"ablation-{name}")(*args)
        csv = res.get("summary_csv")
        if not mlflow_run_exists(res.get("parent_run_id"), uri) or not (csv and Path(csv).is_file()):
            logger.warning("results of the cached %s ablation are gone: running it again", name)
            res = ablation_stage.with_options(name=f"ablation-{name}", refresh_cache=True)(*args)
        ablations[name] = res
        seconds[f"ablation-{name}"], t0 = time.perf_counter() - t0, time.perf_counter()

    # 4. report: Prefect artifacts + one MLflow pipeline run linking everything
    n_windows = _store_windows(cfg.ingest.store)
    exp_ids = _experiment_ids(uri, [pretrained.get("run_id")] + [r.get("parent_run_id") for r in ablations.values()])
    summary = render_summary(cfg, uri, ingested, pretrained, ablations, n_windows, run_id, exp_ids, seconds)
    pipeline_run_id = log_pipeline_run(cfg, uri, summary, ingested, pretrained, ablations, run_id, encoder_hash)
    pipeline_link = mlflow_run_link(uri, pipeline_run_id, _experiment_ids(uri, [pipeline_run_id])[pipeline_run_id])
    summary += f"\nPipeline summary run in MLflow: {pipeline_link}\n"
    create_markdown_artifact(summary, key="pipeline-summary", description="ecgssl pipeline headline numbers")
    for name, res in ablations.items():
        rows = table_records(res.get("summary_csv"))
        if rows:
            create_table_artifact(rows, key=f"ablation-{name}", description=f"{name} label-fraction ablation")

    return {
        "config_hash": config_hash(cfg),
        "tracking_uri": uri,
        "store": cfg.ingest.store,
        "store_hash": store_hash,
        "n_windows": n_windows,
        "encoder_path": encoder,
        "encoder_hash": encoder_hash,
        "pretrain_run_id": pretrained.get("run_id"),
        "ablations": ablations,
        "pipeline_run_id": pipeline_run_id,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "summary_markdown": summary,
    }


@flow(name="pretrain-ddp", log_prints=True)
def pretrain_ddp_flow(
    store: str,
    preset: str = "base",
    overrides: dict[str, Any] | None = None,
    resume: bool = True,
    out: str = "runs/pretrain",
    nproc_per_node: int | None = None,
) -> dict[str, Any]:
    """Pretraining on every GPU of the host: ``torchrun`` via infra/torchrun/pretrain.sh (gpu work pool)."""
    from ecgmodel.train.pretrain import build_config

    build_config(preset, overrides)  # bad keys / values fail here, before any process starts
    result = torchrun_pretrain(store, preset, overrides, resume, out, nproc_per_node, flow_run.id)
    print(f"encoder: {result['encoder_path']} (MLflow run {result.get('run_id')})")
    return result


def _split_overrides(cfg: PipelineConfig) -> dict[str, Any]:
    """Split settings shared by pretraining and the ablations: PTB-XL's metadata (patients of the Challenge's
    PTB-XL copies) from the mirror when a Challenge source is ingested and the file is there."""
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


# --------------------------------------------------------------------------------------------- CLI
def build_config(demo: bool = False, config_file: str | None = None, overrides: list[str] | None = None):
    """The config of a CLI invocation: defaults or the demo preset, then a file, then ``--set`` pairs."""
    cfg = PipelineConfig.demo() if demo else PipelineConfig()
    if config_file:
        cfg = load_config(config_file, base=cfg)
    return apply_overrides(cfg, overrides or [])


def _cmd_pipeline(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args.demo, args.config, args.overrides)
    except (KeyError, ValueError, OSError) as e:
        print(f"ecgssl pipeline: invalid configuration: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = pipeline_flow(cfg)
    elapsed = time.perf_counter() - start
    print()
    print(result["summary_markdown"])
    print(f"Finished in {elapsed / 60:.1f} min.")
    uri = result["tracking_uri"]
    if uri.startswith(("http://", "https://")):
        print(f"Browse the runs: {uri}")
    else:
        print(f"Browse the runs: ecgssl ui   (MLflow UI on http://127.0.0.1:5000 over {uri})")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from ecgmodel.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"The tracking URI is a server already; open {uri}")
        return 0
    url = f"http://{args.host}:{args.port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port),
           "--backend-store-uri", uri]
    print(f"MLflow UI on {url} (tracking URI {uri}); Ctrl-C to stop", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run ingest -> pretrain -> ablations (both tasks) as one Prefect flow",
        description="Run the whole pipeline. Settings: defaults (or --demo), then --config, then --set.",
    )
    p.add_argument("--demo", action="store_true", help="small settings on the bundled sample/physionet")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file with a (partial) PipelineConfig")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted-key override, e.g. --set ablation.seeds=2 (repeatable)")
    p.set_defaults(func=_cmd_pipeline)

    u = sub.add_parser("ui", help="browse the MLflow runs (mlflow ui on 127.0.0.1 over the tracking URI)")
    u.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    u.set_defaults(func=_cmd_ui)
