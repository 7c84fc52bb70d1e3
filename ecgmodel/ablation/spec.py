"""``AblationSpec``: every setting of one label-efficiency ablation, validated once, documented key by key.

This model is the single source of the ablation's defaults: the ``ecgssl ablate`` command line, the Prefect flow
(``flows/ablation.py``) and the pipeline's ``ablation`` section (``ecgmodel.pipeline_config.AblationSection``, which
inherits :class:`AblationSettings`) all resolve to it. Arguments are checked here, before any Prefect or MLflow
run exists: a bad value raises :class:`ecgmodel.errors.UserError` naming the argument and the command that fixes it
(:func:`build_spec`).

Arms: ``random`` (random-init encoder of the pretrained architecture), one or more SSL arms (``ssl`` or the pretext
arms ``ssl-mask`` / ``ssl-shuffle`` / ``ssl-joint``), each with a LIST of pretraining runs (K runs of the same
recipe with different pretraining seeds: the bootstrap resamples them), and ``supervised`` (a from-scratch 1-D CNN,
xresnet1d, full fine-tuning only) as the reference a user would otherwise train.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ecgmodel.errors import UserError

TASK_CHOICES = ("arrhythmia27", "localization", "ptbxl-superclass")
MODE_ALIASES = {"finetune": "full", "fine-tune": "full", "full": "full", "linear": "linear", "probe": "linear"}
RANDOM = "random"
SUPERVISED = "supervised"
SSL_PREFIX = "ssl"
FIX = "ecgssl ablate --help"


def is_ssl_arm(name: str) -> bool:
    return name == SSL_PREFIX or name.startswith(f"{SSL_PREFIX}-")


class AblationSettings(BaseModel):
    """The settings an ablation shares with the pipeline's ``ablation`` section (defaults defined only here)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    fractions: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
        description="Fractions of the labelled training set (nested subsets), each in (0, 1].",
    )
    seeds: int = Field(5, ge=1, description="Fine-tuning seeds per (arm, pretraining run, mode, fraction).")
    modes: list[str] = Field(
        default_factory=lambda: ["full", "linear"],
        description="How the encoder is trained downstream: 'full' fine-tuning and/or 'linear' (convex probe on "
        "frozen embeddings). Aliases: finetune, fine-tune, probe.",
    )
    inits: list[str] = Field(
        default_factory=lambda: [RANDOM, SSL_PREFIX],
        description="Encoder initialisations compared: 'ssl' (the pretrained arms) and 'random'.",
    )
    supervised: bool = Field(
        True, description="Add the supervised reference arm (a from-scratch xresnet1d, full mode only, same "
        "fractions, seeds and convergence rules)."
    )
    margin: float = Field(
        0.01, ge=0, description="Non-inferiority margin of labels_to_match, in units of the task's metric "
        "(smallest fraction whose lower 95% CI bound of SSL(f) - random(100%) is >= -margin from there on).",
    )
    bootstrap_samples: int = Field(1000, ge=10, description="Hierarchical paired-bootstrap replicates behind every CI.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap (fixed: `ecgssl report` re-derives the CIs).")
    schedule_grid: list[dict[str, float]] | None = Field(
        None, description="Per-arm schedule grid (lr, encoder_lr_scale, warmup_fraction) chosen on validation; "
        "None: the documented default (ecgmodel.downstream.config.DEFAULT_SCHEDULE_GRID); one point: no tuning.",
    )
    allow_pretrain_overlap: bool = Field(
        False, description="Run even when an encoder was pretrained on the task's val/test recordings (reported)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted-key overrides of the fine-tuning config (epochs, batch size, ...)."
    )
    max_concurrent: int = Field(1, ge=1, description="Fine-tuning cells trained at the same time (each cell seeds "
                                "its own generators, so the results do not depend on it).")

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0.0 < float(f) <= 1.0]
        if bad or not value:
            raise ValueError(f"fractions must be a non-empty list of values in (0, 1]; got {value}")
        return sorted({float(f) for f in value})

    @field_validator("modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if m not in MODE_ALIASES]
        if bad or not value:
            raise ValueError(f"unknown mode(s) {bad}: use 'full' (alias 'finetune') and/or 'linear' (alias 'probe')")
        return list(dict.fromkeys(MODE_ALIASES[m] for m in value))

    @field_validator("inits")
    @classmethod
    def _inits(cls, value: list[str]) -> list[str]:
        bad = [i for i in value if i not in (RANDOM, SSL_PREFIX)]
        if bad or not value:
            raise ValueError(f"unknown init(s) {bad}: use 'random' and/or 'ssl' (the supervised arm is "
                             "--supervised / --no-supervised)")  # fmt: skip
        return sorted(set(value))


class AblationSpec(AblationSettings):
    """One ablation: the shared settings plus the task, the store and the pretrained encoders of each SSL arm."""

    task: Literal["arrhythmia27", "localization", "ptbxl-superclass"] = Field(
        "arrhythmia27", description="Downstream task (its metric is the ablation's metric)."
    )
    store: str = Field("data/store", description="Path of the ecgssl store.")
    encoders: dict[str, list[str]] = Field(
        default_factory=dict,
        description="SSL arm -> its pretraining runs (encoder references: checkpoint path, run id, runs:/, "
        "models:/), e.g. {'ssl': ['runs/a/encoder.pt', 'runs/b/encoder.pt']}. K runs per arm put the pretraining "
        "variance inside the CIs (at least 3 for a reported run).",
    )
    out_dir: str | None = Field(
        None, description="Base folder of the report folders: each run writes <out_dir>/<task>-<hash>-<parent run "
        "id> (None: runs/ablation)."
    )
    resume: bool = Field(True, description="Continue an unfinished parent run with the same settings.")

    @field_validator("encoders", mode="before")
    @classmethod
    def _encoder_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ([v] if isinstance(v, str) else list(v)) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _arms(self) -> AblationSpec:
        for arm, refs in self.encoders.items():
            if not is_ssl_arm(arm):
                raise ValueError(f"SSL arm {arm!r}: arm names are 'ssl' or 'ssl-<name>' (random and supervised "
                                 "are not pretrained)")  # fmt: skip
            if not refs:
                raise ValueError(f"SSL arm {arm!r} has no pretraining run")
            if len(set(refs)) != len(refs):
                raise ValueError(f"SSL arm {arm!r} lists one pretraining run twice: {refs}")
        if SSL_PREFIX in self.inits and not self.encoders and "inits" not in self.model_fields_set:
            self.inits = [RANDOM]  # the default inits without an encoder: random only
        if SSL_PREFIX in self.inits and not self.encoders:
            raise ValueError("init 'ssl' needs an encoder (--encoder or --pretext-encoder NAME=REF[,REF...])")
        if SSL_PREFIX not in self.inits and self.encoders:
            self.encoders = {}
        return self

    # -------------------------------------------------------------------------------------------- derived
    @property
    def ssl_arms(self) -> list[str]:
        return list(self.encoders)

    @property
    def arms(self) -> list[str]:
        """Every arm, the reference arms first: random, supervised (when on), then the SSL arms."""
        out = [RANDOM] if RANDOM in self.inits else []
        if self.supervised and "full" in self.modes:
            out.append(SUPERVISED)
        return out + self.ssl_arms

    def arm_modes(self, arm: str) -> list[str]:
        return ["full"] if arm == SUPERVISED else list(self.modes)

    def architecture_ref(self) -> str | None:
        """The encoder whose architecture the random arm copies (the first pretraining run)."""
        return next((refs[0] for refs in self.encoders.values()), None)


def encoder_digest(ref: str) -> str:
    """Content identity of a pretraining run's encoder: sha256 (first 16 hex digits) of the file ``ref`` resolves
    to (an MLflow reference is downloaded first). Raises UserError when ``ref`` is missing or not an encoder."""
    from ecgmodel.train.checkpoint import resolve_encoder_ref

    try:
        path = resolve_encoder_ref(ref)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"encoder {ref!r}: {e}", "ecgssl pretrain ... (or give the path of an encoder.pt)") from e
    except Exception as e:  # an MLflow reference that cannot be resolved
        raise UserError(f"encoder {ref!r} cannot be resolved: {e}", "ecgssl ui (check the run id / URI)") from e
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_encoder(ref: str) -> str:
    """Validate that ``ref`` is an encoder or pretraining checkpoint of this project; returns its digest."""
    import torch

    from ecgmodel.train.checkpoint import CHECKPOINT_FORMAT, ENCODER_FORMAT, resolve_encoder_ref

    digest = encoder_digest(ref)
    path = resolve_encoder_ref(ref)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file at all
        raise UserError(f"encoder {ref!r} ({path}) is not an ecgssl checkpoint: {type(e).__name__}",
                        "ecgssl pretrain ... (its encoder.pt is what --encoder takes)") from e  # fmt: skip
    if not (isinstance(obj, dict) and obj.get("format") in (CHECKPOINT_FORMAT, ENCODER_FORMAT)):
        raise UserError(f"encoder {ref!r} ({path}) is not an ecgssl encoder or pretraining checkpoint",
                        "ecgssl pretrain ... (its encoder.pt is what --encoder takes)")  # fmt: skip
    return digest


def build_spec(check_files: bool = True, **values: Any) -> AblationSpec:
    """Validate ``values`` (None values take the spec's defaults) into an AblationSpec, raising UserError naming
    the argument; with ``check_files`` the store must exist and every encoder must be a checkpoint of this
    project."""
    data = {k: v for k, v in values.items() if v is not None}
    try:
        spec = AblationSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "settings"
        raise UserError(f"ablation argument {where}: {err['msg'].removeprefix('Value error, ')}", FIX) from e
    if check_files:
        if not Path(spec.store).exists():
            raise UserError(f"store {spec.store!r} does not exist", "ecgssl ingest --store ... (or fix --store)")
        for refs in spec.encoders.values():
            for ref in refs:
                check_encoder(ref)
    return spec


def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The settings a call resolves to (None -> the spec's default): what the test of one source of defaults
    compares across the CLI, the flow and the pipeline section."""
    spec = build_spec(check_files=False, **values)
    return spec.model_dump(include=set(AblationSettings.model_fields))
