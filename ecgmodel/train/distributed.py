"""DDP helpers: the same entry point runs alone or under ``torchrun`` (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False  # started by torchrun (a process group exists, even for a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """DDP in use: several processes, or one process launched by torchrun (DDP and NCCL/gloo then run as
        they would with more, which is how one GPU checks the multi-process path)."""
        return self.world_size > 1 or self.launched


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (its rendezvous variables are set, any number of
    processes), else run as a single plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    launched = world > 1 or all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"))
    if launched and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev, launched)


def wrap_model(
    model: torch.nn.Module,
    info: DistInfo,
    compile: bool = False,
    find_unused_parameters: bool = False,
    backend: str | Any = "inductor",
) -> torch.nn.Module:
    """The module the training step calls: ``model`` compiled and/or wrapped in DDP.

    Order: ``DDP(torch.compile(model))``. The first forward then runs inside DDP's forward, so TorchDynamo's
    DDPOptimizer splits the compiled graph at DDP's gradient-bucket boundaries: each bucket's all-reduce starts
    as soon as its part of the backward has run, overlapping communication with the rest of the backward.
    ``torch.compile(DDP(model))`` graph-breaks on DDP's own forward (whose context manager Dynamo skips) and,
    measured with torch 2.13, leaves the model uncompiled. ``tests/unit/test_distributed.py`` checks the split.
    Parameters, state dict and gradients stay those of ``model`` (save ``model``, not the wrapper).
    """
    wrapped = torch.compile(model, backend=backend) if compile else model
    if info.enabled:
        # gradient_as_bucket_view: .grad are views into the all-reduce buckets (one copy less, less memory)
        wrapped = DDP(wrapped, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                      find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True)
    return wrapped


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (identity when single process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
