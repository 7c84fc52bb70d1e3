"""The typed settings of one pipeline run (``ecgssl pipeline``, the ``pipeline`` deployment).

:class:`PipelineConfig` has one section per stage (ingest, pretrain, ablation), every key documented; the same
model validates CLI files, ``--set`` pairs and Prefect parameters. :meth:`PipelineConfig.demo` is the small preset
on the bundled real sample (minutes on 2 CPU cores); :func:`build_config` assembles a CLI invocation's settings
(defaults or demo, then a YAML/JSON file, then ``--set`` pairs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecgmodel.ablation.spec import AblationSettings
from ecgmodel.config import apply_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MIRROR = REPO_ROOT / "sample" / "physionet"
PHYSIONET_MIRROR = "https://physionet.org/files/"
ALL_SOURCES = ["challenge-2020", "challenge-2021", "ptb-xl", "ludb"]
DownstreamTask = Literal["arrhythmia27", "localization", "ptbxl-superclass"]


class FolderSource(BaseModel):
    """A folder of your own WFDB (.hea) / EDF records, ingested into the same store as the catalog sources (the
    rules of ``ecgssl ingest --folder``: ``ecgmodel.data.folder``). In ``--set`` a bare path stands for
    ``{"path": ...}``: ``--set 'ingest.folders=["my_ecgs"]'``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., min_length=1, description="Folder holding the records (searched recursively).")
    labels: str | None = Field(
        None, description="CSV with a `record` column and label column(s) (see ecgmodel.data.folder); None: unlabelled."
    )
    source: str | None = Field(None, description="Source slug written to the store (None: `folder-<folder name>`).")
    label_system: str = Field(
        "user-label", description="Code system of the labels (a store dx system, e.g. snomed-ct for SNOMED codes)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    def slug(self) -> str:
        """The store's source slug of this folder."""
        return self.source or f"folder-{Path(self.path).resolve().name}"


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
    folders: list[FolderSource] = Field(
        default_factory=list,
        description="Folders of your own WFDB/EDF records (with optional labels) ingested after the catalog "
        "sources, same store and quarantine rules; a file added, removed or changed in one ingests again. "
        "Leave `sources` empty ([]) for your folders alone.",
    )

    @model_validator(mode="after")
    def _distinct_slugs(self) -> IngestSection:
        slugs = [f.slug() for f in self.folders]
        clash = sorted({s for s in slugs if slugs.count(s) > 1} | (set(slugs) & set(self.sources)))
        if clash:
            raise ValueError(f"ingest.folders: source slug(s) {clash} given twice (rule: one slug per folder and "
                             "none equal to a catalog source); set a `source` for each folder")  # fmt: skip
        return self


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
    runs: int = Field(
        1, ge=1, le=20,
        description="Pretraining runs per SSL arm (K). Run k > 0 uses `run.seed` + k, trains into <out>-seed<k> and "
        "is not registered (the first run is the registered encoder). The ablations resample the K runs in their "
        "hierarchical bootstrap, so pretraining variance is inside the CIs: 1 for the demo, at least 3 for any "
        "reported run (docs/protocol.md).",
    )
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


class AblationSection(AblationSettings):
    """Parameters of ``flows.ablation.ablation_flow``, run once per downstream task. The shared keys and their
    defaults are those of ``ecgmodel.ablation.spec.AblationSettings`` (one source for the CLI, the flow and this
    section); the keys below are the pipeline's own."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[DownstreamTask] = Field(
        default_factory=lambda: ["arrhythmia27", "localization", "ptbxl-superclass"],
        description="Downstream tasks: arrhythmia (Challenge 2020 metric), origin localization, and the PTB-XL "
        "diagnostic-superclass benchmark (macro AUROC).",
    )
    pretext_ablation: bool = Field(
        False, description="Pretrain one encoder per pretext arm (mask only, shuffle only, joint; same budget) "
        "and compare them downstream under one MLflow parent run per task.",
    )
    out_dir: str | None = Field(
        None, description="Base folder of the report folders, one sub-folder per task (None: runs/ablation); "
        "each ablation run writes its own <task>-<hash>-<parent run id> folder inside.",
    )
    final_models: bool = Field(
        True, description="After each ablation, train the task's deployable classifier (all training labels, the "
        "init and schedule the ablation chose on validation), register it as ecgssl-<task> and move its "
        "`champion` alias when it passes the gate (docs/use.md); the encoder's alias follows the first task's gate.",
    )


class PipelineConfig(BaseModel):
    """Everything one pipeline run needs; the same model validates CLI files, --set and Prefect parameters."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestSection = Field(default_factory=IngestSection, description="Ingest stage.")
    pretrain: PretrainSection = Field(default_factory=PretrainSection, description="Pretraining stage.")
    ablation: AblationSection = Field(default_factory=AblationSection, description="Ablation stage.")
    experiment: str = Field(
        "ecgssl-pipeline", description="MLflow experiment of the pipeline's own summary run."
    )
    preset: Literal["default", "demo"] = Field(
        "default",
        description="Settings the other keys start from: `default` (all of PhysioNet, the GPU-sized `base` "
        "pretraining) or `demo` (the bundled real sample, CPU-sized: minutes on 2 cores, as `ecgssl pipeline "
        "--demo`). Keys given next to it override the preset's values, e.g. {\"preset\": \"demo\", "
        "\"ablation\": {\"seeds\": 1}}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _start_from_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "demo":
            base = {name: section.model_dump() for name, section in cls._demo_sections().items()}
            return _deep_merge(base, data)
        return data

    @classmethod
    def demo(cls) -> PipelineConfig:
        """Small settings for the bundled sample: finishes in minutes on 2 CPU cores, no server needed."""
        return cls(preset="demo")

    @staticmethod
    def _demo_sections() -> dict[str, BaseModel]:
        """The sections of the `demo` preset."""
        return dict(
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
            # 3 fractions x 2 arms x 2 seeds per task: two seeds give the plot an interval (still noisy: the
            # sample has a few dozen records, and the output says so)
            ablation=AblationSection(
                tasks=["arrhythmia27", "localization"],
                fractions=[0.25, 0.5, 1.0], seeds=2, modes=["full"], inits=["ssl", "random"], max_concurrent=2,
                supervised=False,  # the from-scratch CNN reference: off in the CPU demo (its cost; see docs)
                # the sample has 3-6 PTB-XL records per MI location: keep those classes instead of merging.
                # Early stopping with a short patience under a ceiling that leaves room for it, so a cell is
                # flagged budget-limited only when it was still improving at the ceiling (patience >= ceiling
                # would flag every cell)
                overrides={"optim.epochs": 12, "optim.patience": 3, "min_class_records": 3},
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
    if "preset" in data:  # the file's preset is where its other keys start from
        base = PipelineConfig.model_validate({"preset": data["preset"]})
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


def build_config(demo: bool = False, config_file: str | None = None, overrides: list[str] | None = None):
    """The config of a CLI invocation: defaults or the demo preset, then a file, then ``--set`` pairs
    (``--set preset=demo`` is the same as ``demo=True``)."""
    overrides = list(overrides or [])
    presets = [o.split("=", 1)[1].strip().strip("\"") for o in overrides if o.replace(" ", "").startswith("preset=")]
    overrides = [o for o in overrides if not o.replace(" ", "").startswith("preset=")]
    preset = presets[-1] if presets else "demo" if demo else "default"
    cfg = PipelineConfig.model_validate({"preset": preset})
    if config_file:
        cfg = load_config(config_file, base=cfg)
    return apply_overrides(cfg, overrides or [])
