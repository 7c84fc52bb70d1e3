"""``FinetuneConfig``: one fine-tuning run (one cell of a label-efficiency ablation), documented key by key.

Definitions used throughout:

* **full** fine-tuning trains the encoder and the head together (the encoder at ``optim.encoder_lr_scale`` x lr),
  with early stopping on the cell's own validation primary metric (``optim.patience``) under an epoch ceiling
  (``optim.epochs``);
* **linear** probe freezes the encoder and fits a convex logistic-regression probe on its cached, standardised
  mean+max-pooled embeddings, C chosen on the cell's own validation labels (:mod:`ecgmodel.downstream.probe`,
  settings in ``probe``; the ``optim`` keys other than ``class_weighted``, ``max_pos_weight`` and ``batch_size``
  do not apply);
* **init** ``random`` starts from a randomly initialised encoder (architecture from ``arch_from`` when given, so
  it matches the pretrained one, else from ``encoder``); ``supervised`` trains the PTB-XL benchmark's 1-D CNN
  (xresnet1d, ``supervised`` keys) from scratch, full mode only, on crops of the same length (``input_samples`` of
  ``arch_from`` when given, else of ``encoder``); any other value is a pretrained encoder reference
  (checkpoint path, MLflow run id, ``runs:/...`` or ``models:/ecgssl-encoder/N``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ecgmodel.data.split_assignment import SplitConfig
from ecgmodel.models.encoder import EncoderConfig
from ecgmodel.models.xresnet1d import XResNet1dConfig

__all__ = ["FinetuneConfig", "OptimConfig", "ProbeConfig", "Schedule", "SplitConfig", "TASKS", "XResNet1dConfig"]

#: ``init`` values that are not an encoder reference
RANDOM_INIT = "random"
SUPERVISED_INIT = "supervised"

TASKS = ("arrhythmia27", "localization", "ptbxl-superclass")
EXPERIMENTS = {"arrhythmia27": "ecgssl-arrhythmia27", "localization": "ecgssl-localization",
               "ptbxl-superclass": "ecgssl-ptbxl-superclass"}  # fmt: skip
#: the metric the ablation figures use, per task
PRIMARY_METRIC = {"arrhythmia27": "challenge_score", "localization": "accuracy", "ptbxl-superclass": "macro_auroc"}
MULTILABEL_TASKS = ("arrhythmia27", "ptbxl-superclass")
Task = Literal["arrhythmia27", "localization", "ptbxl-superclass"]


class Schedule(BaseModel):
    """One point of the per-init schedule grid: the optimiser keys an init may choose."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(gt=0, description="Peak learning rate of the head.")
    encoder_lr_scale: float = Field(ge=0, description="Encoder lr = lr x this (full fine-tuning).")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the steps used for linear warm-up.")


#: The documented grid every init chooses from (same grid, same budget for SSL and random init): the
#: usual fine-tuning schedule (encoder at 0.1 x lr, no warm-up) and from-scratch schedules (encoder at the
#: full lr with warm-up), each at two learning rates.
DEFAULT_SCHEDULE_GRID = [
    Schedule(lr=1e-3, encoder_lr_scale=0.1, warmup_fraction=0.0),
    Schedule(lr=1e-3, encoder_lr_scale=1.0, warmup_fraction=0.1),
    Schedule(lr=3e-4, encoder_lr_scale=1.0, warmup_fraction=0.1),
    Schedule(lr=3e-3, encoder_lr_scale=0.3, warmup_fraction=0.1),
]


class OptimConfig(BaseModel):
    """Optimiser and schedule."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(
        60, ge=1,
        description="Epoch ceiling (max_epochs): training stops here at the latest. Early stopping on the cell's "
        "own (nested) validation primary metric usually ends it sooner (see patience); a cell whose best epoch lies "
        "in the last `patience` epochs of the ceiling is flagged budget-limited. 60 lets a from-scratch model "
        "converge on PTB-XL-sized data (the PTB-XL benchmark trains its CNNs for ~50 epochs).",
    )
    patience: int = Field(
        10, ge=1,
        description="Early stopping: stop after this many epochs without a better validation primary metric "
        "(counted from the end of the warm-up). The best epoch's weights are kept.",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="After the warm-up: constant lr (default), or cosine decay to 0 at the epoch ceiling. Constant "
        "is the default because early stopping decides the length: a run's lr path up to any epoch then does not "
        "depend on the ceiling (raising it only extends a run), whereas a cosine over the ceiling is still near "
        "its peak when early stopping ends most runs, so its decay phase would be reached only by budget-limited "
        "cells.",
    )
    batch_size: int = Field(32, ge=1, description="Windows per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the head (AdamW, cosine decay).")
    encoder_lr_scale: float = Field(0.1, ge=0, description="Encoder lr = lr x this in full fine-tuning.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (from lr/steps to lr).")
    warmup_fraction: float = Field(
        0.0, ge=0, lt=1,
        description="Warm-up as a share of the epoch ceiling's steps (the larger of this and warmup_steps).",
    )
    max_pos_weight: float = Field(
        20.0, ge=1, description="arrhythmia27: cap of the per-class BCE positive weight (n_negative / n_positive)."
    )
    class_weighted: bool = Field(True, description="Class-weighted loss (BCE pos_weight / balanced CE weights).")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the linear head (full mode).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")


class ProbeConfig(BaseModel):
    """The linear probe (``mode="linear"``): L2 logistic regression on standardised frozen embeddings."""

    model_config = ConfigDict(extra="forbid")

    C_grid: list[float] = Field(
        [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0],
        min_length=1,
        description="Inverse regularisation strengths tried (log-spaced, 6 decades around the usual optimum of "
        "standardised features); the cell's validation primary metric picks one. A choice at either end of the "
        "grid is flagged (tag ecgssl.grid_edge).",
    )
    max_iter: int = Field(
        2000, ge=1, description="L-BFGS iteration cap per problem; a fit that reaches it is flagged budget-limited."
    )
    tol: float = Field(1e-6, gt=0, description="L-BFGS stopping tolerance (projected gradient), tight: solved to "
                       "convergence, not stopped early.")  # fmt: skip

    @field_validator("C_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if any(not c > 0 for c in v):
            raise ValueError(f"probe.C_grid values must be > 0, got {v}")
        return sorted(set(float(c) for c in v))


class FinetuneConfig(BaseModel):
    """One fine-tuning run on a store."""

    model_config = ConfigDict(extra="forbid")

    task: Task = Field(
        "arrhythmia27",
        description="arrhythmia27: the Challenge 2020 scored SNOMED codes, equivalent pairs merged (24 outputs, "
        "multi-label); localization: one site per record; ptbxl-superclass: PTB-XL NORM/MI/STTC/CD/HYP "
        "(multi-label, macro AUROC, records without a diagnostic superclass left out).",
    )
    store: str = Field("", description="Path of the ecgssl store holding the labelled records.")
    init: str = Field(
        "random",
        description="'random' (random-init encoder), 'supervised' (xresnet1d from scratch, full mode only) or a "
        "pretrained encoder reference (path, run id, runs:/, models:/).",
    )
    arch_from: str | None = Field(
        None, description="Encoder reference whose ARCHITECTURE a random init copies (weights stay random); the "
        "supervised arm takes its crop length (input_samples) from it.",
    )
    mode: Literal["full", "linear"] = Field("full", description="full fine-tune, or linear probe on a frozen encoder.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of the training records whose labels are used.")
    seed: int = Field(0, description="Seed of the label subset, the head init and the batch order.")
    fractions: list[float] = Field(
        [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
        description="The nested subset ladder that `fraction` is drawn from (subsets of one seed are nested).",
    )
    encoder: EncoderConfig = Field(
        default_factory=lambda: EncoderConfig(d_model=64, n_layers=2, n_heads=4),
        description="Architecture of a random-init encoder when arch_from is not given.",
    )
    localization_target: Literal["auto", "mi_location", "va_site", "va_side", "site"] = Field(
        "auto", description="Localization labels: auto picks from the store's dx_systems (Zheng > site > PTB-XL MI)."
    )
    min_class_records: int = Field(
        10, ge=1, description="Localization classes with fewer labelled records are merged into 'other'."
    )
    max_windows_per_record: int | None = Field(
        None, ge=1, description="Use at most this many windows of a record (None: all). Eval averages them."
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig,
        description="Patient-aware split settings: the store's persisted assignment for them is used "
        "(ecgmodel.data.split_assignment), the same one pretraining reads.",
    )
    validation: Literal["nested", "full"] = Field(
        "nested",
        description="nested: the validation records shrink with the label fraction (nested subsets like the "
        "training ones), so a fraction's label count includes its validation labels honestly; full: the whole "
        "validation split at every fraction (its labels are then counted in n_labels_used).",
    )
    min_val_records: int = Field(
        5, ge=1, description="nested validation: at least this many validation records at any fraction."
    )
    eval_aggregate: Literal["mean", "max"] = Field(
        "mean",
        description="How a record's prediction aggregates the crops that tile all its windows (whole-record "
        "evaluation): mean of the probabilities, or max (favours intermittent findings).",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser, schedule and early stopping.")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="Linear probe settings (mode='linear').")
    supervised: XResNet1dConfig = Field(
        default_factory=XResNet1dConfig,
        description="Architecture of the supervised reference arm (init='supervised'); default xresnet1d50.",
    )
    tune_thresholds: bool = Field(True, description="arrhythmia27: tune per-class thresholds on val (coordinate ascent).")
    threshold_grid: int = Field(41, ge=3, description="Candidate thresholds per class for the coordinate ascent.")
    threshold_passes: int = Field(2, ge=1, description="Coordinate-ascent sweeps over the classes.")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu' or 'cuda[:i]'.")
    num_threads: int | None = Field(
        None, ge=1,
        description="torch intra-op CPU threads, set for the process when given (None: torch's default, fixed per "
        "machine). Bitwise-equal results need the same value; the count used is logged (param num_threads).",
    )
    log_model: bool = Field(False, description="Log the fine-tuned weights (state_dict + thresholds) to MLflow.")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions must lie in (0, 1], got {v}")
        return sorted(set(float(f) for f in v))

    @model_validator(mode="after")
    def _supervised_full_only(self) -> FinetuneConfig:
        if self.init == SUPERVISED_INIT and self.mode != "full":
            raise ValueError(
                f"init='supervised' with mode={self.mode!r}: the supervised reference arm trains an xresnet1d from "
                "scratch, so it runs in mode='full' only (rule: a linear probe needs a pretrained or random encoder)"
            )
        return self

    @property
    def multilabel(self) -> bool:
        return self.task in MULTILABEL_TASKS

    @property
    def experiment(self) -> str:
        return EXPERIMENTS[self.task]

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.task]
