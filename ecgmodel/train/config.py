"""``PretrainConfig``: every key of a pretraining run, documented; presets ``smoke`` (tests, demo), ``cpu``
(2 cores; its length chosen on validation: docs/results/pretraining-length.md) and ``base`` (GPU)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecgmodel.data.split_assignment import SplitConfig
from ecgmodel.models.encoder import EncoderConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SSLConfig(_Strict):
    """Pretext tasks."""

    mode: Literal["joint", "mask", "shuffle"] = Field(
        "joint", description="joint = masking + reconstruction AND lead shuffling + lead-number prediction; "
        "mask or shuffle = one task only."
    )
    mask_ratio_min: float = Field(0.3, ge=0, le=1, description="Lowest masked fraction of a sample's patches.")
    mask_ratio_max: float = Field(0.7, ge=0, le=1, description="Highest masked fraction (drawn per sample).")
    mask_span: int = Field(5, ge=1, description="Length of one contiguous masked span, in patches.")
    mask_mode: Literal["lead", "time", "mixed"] = Field(
        "lead", description="Where spans go: lead = own arrangement per lead (hidden instants usually visible in "
        "other leads, so largely solvable by lead algebra); time = the same spans in every lead (predict from "
        "temporal context); mixed = a share mask_time_share of the spans common to all leads, the rest per lead."
    )
    mask_time_share: float = Field(
        0.5, ge=0, le=1, description="mask_mode=mixed: share of the masked fraction hidden in every lead at once."
    )
    mask_fill: Literal["token", "zero"] = Field(
        "token", description="token = learned mask token after embedding; zero = zero the masked input samples."
    )
    shuffle_prob: float = Field(0.8, ge=0, le=1, description="Probability that a sample's leads are permuted.")
    shuffle_mode: Literal["all", "subset"] = Field(
        "all", description="all = permute all 12 leads; subset = permute a random subset among themselves."
    )
    shuffle_subset_min: int = Field(2, ge=1, le=12, description="Smallest subset size (shuffle_mode=subset).")
    shuffle_subset_max: int = Field(12, ge=1, le=12, description="Largest subset size (shuffle_mode=subset).")
    lead_loss_weight: float = Field(1.0, ge=0, description="lambda in loss = reconstruction + lambda * lead CE.")

    @model_validator(mode="after")
    def _check(self) -> SSLConfig:
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError("ssl.mask_ratio_min must be <= ssl.mask_ratio_max")
        if self.shuffle_subset_min > self.shuffle_subset_max:
            raise ValueError("ssl.shuffle_subset_min must be <= ssl.shuffle_subset_max")
        return self


class DataConfig(_Strict):
    """Input pipeline."""

    loader: Literal["memory", "stream"] = Field(
        "memory", description="memory = whole store shard in RAM/GPU; stream = whole chunks through a shuffle buffer."
    )
    batch_size: int = Field(32, ge=1, description="GLOBAL batch size (split evenly across DDP ranks).")
    device_resident: bool | None = Field(
        None, description="Keep the in-memory signal on the GPU (None = when it fits in half the free memory)."
    )
    buffer_chunks: int = Field(4, ge=1, description="Chunks shuffled together by the streaming loader.")
    prefetch: int = Field(4, ge=1, description="Batches read ahead by the streaming loader's thread.")
    min_std_uv: float = Field(10.0, gt=0, description="Floor of the per-lead std in standardisation (uV).")
    splits: list[Literal["train", "val", "test", "unused"]] = Field(
        ["train"],
        description="Splits of the store's persisted split assignment (ecgmodel.data.split_assignment) whose "
        "recordings pretraining reads (one canonical copy each). The default keeps every validation and test "
        "recording unseen; an ablation refuses an encoder that saw its test records unless told to allow it.",
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig,
        description="Settings of that assignment (seed, fractions, folds, ptbxl_split, ptbxl_metadata); keep them "
        "equal to the fine-tuning's `split` so both read the same assignment.",
    )
    extra_stores: list[str] = Field(
        default_factory=list,
        description="Further ecgssl stores pretraining reads whole (unlabelled external data; in-memory loader). "
        "Their recordings are listed in pretrain_records.csv too, so the ablation's leak check sees copies of a "
        "task's val/test recordings in them.",
    )
    eval_windows: int = Field(
        256, ge=1, description="Held-out (validation-split) windows scored for the eval_* metrics at the end."
    )


class OptimConfig(_Strict):
    """AdamW with linear warmup and cosine decay."""

    max_steps: int = Field(300, ge=1, description="Optimizer steps in total (resumed runs continue to this).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-4, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (matrices only, not norms/biases/embeddings).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")


class RunConfig(_Strict):
    """Execution, logging and checkpointing."""

    seed: int = Field(0, description="Seed of model init, data order and pretext randomness.")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Autocast dtype: auto = bfloat16 on CUDA, float32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the model.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU (None = torch default).")
    log_every: int = Field(10, ge=1, description="Steps between metric logs.")
    ckpt_every: int = Field(100, ge=1, description="Steps between checkpoints (one at the end too).")
    mlflow: bool = Field(True, description="Log params/metrics/artifacts to MLflow.")
    experiment: str = Field("ecgssl-pretrain", description="MLflow experiment.")
    register_model: bool = Field(True, description="Register the encoder as MLflow model `registered_model`.")
    registered_model: str = Field("ecgssl-encoder", description="Name of the registered encoder model.")
    progress: bool = Field(True, description="Show a tqdm progress bar.")


class PretrainConfig(_Strict):
    """A pretraining run. ``config_hash(cfg)`` identifies it; flattened keys are the MLflow params."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Encoder architecture.")
    ssl: SSLConfig = Field(default_factory=SSLConfig, description="Pretext tasks.")
    data: DataConfig = Field(default_factory=DataConfig, description="Input pipeline.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimisation.")
    run: RunConfig = Field(default_factory=RunConfig, description="Execution and logging.")


PRESETS: dict[str, dict] = {
    # CPU-sized: ~0.15M params, 2.5 s crops, 12 x 25 tokens, divided attention; 200 steps take ~30-60 s on 2
    # idle cores and bring the masked MSE to ~0.6 of its start and lead accuracy to ~0.45 on real records
    "smoke": {
        "encoder": {"input_samples": 1250, "patch_size": 50, "d_model": 64, "n_layers": 2, "n_heads": 4,
                    "attention": "divided"},
        "data": {"batch_size": 32},
        "optim": {"max_steps": 200, "lr": 2e-3, "warmup_steps": 10},
        "run": {"log_every": 10, "ckpt_every": 100},
    },
    # CPU, over the shared mirror: 5 s crops (context for same-time spans), 12 x 50 tokens, divided attention
    # (choice and measurements: docs/evidence.md; 0.78 s/step on 2 idle cores). Length: the validation-best
    # point of the pretraining-length sweep (ecgssl sweep, docs/results/pretraining-length.md): 200 steps; longer
    # runs lower the validation probe.
    "cpu": {
        "encoder": {"input_samples": 2500, "patch_size": 50, "d_model": 64, "n_layers": 3, "n_heads": 4,
                    "attention": "divided"},
        "ssl": {"mask_mode": "mixed", "mask_time_share": 0.5},
        "data": {"batch_size": 32},
        "optim": {"max_steps": 200, "lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 40},
        "run": {"log_every": 25, "ckpt_every": 100},
    },
    # GPU-sized: ~50M params, 5 s crops, 1200 tokens (patch 25), bf16. Divided attention (time within a lead,
    # then across the 12 leads at each instant) for the same reason as smoke: joint attention over all tokens
    # must first learn to align instants across leads, and on real records it barely reconstructed at all.
    "base": {
        "encoder": {"input_samples": 2500, "patch_size": 25, "d_model": 512, "n_layers": 12, "n_heads": 8,
                    "dropout": 0.0, "attention": "divided"},
        "data": {"batch_size": 256},
        "optim": {"max_steps": 50_000, "lr": 5e-4, "min_lr": 5e-5, "warmup_steps": 2000},
        "run": {"log_every": 50, "ckpt_every": 1000},
    },
}


def preset(name: str) -> PretrainConfig:
    """The named preset (``smoke``, ``cpu`` or ``base``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PretrainConfig.model_validate(PRESETS[name])
