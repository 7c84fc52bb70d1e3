"""Pretraining flow (``ecgssl pretrain``): self-supervised pretraining of the ECG encoder on a store.

``ecgssl pretrain --store PATH [--preset smoke|cpu|base] [--set key=value ...] [--out DIR] [--no-resume]``

Keys for ``--set`` are those of :class:`ecgmodel.train.config.PretrainConfig` (e.g. ``optim.max_steps=500``,
``data.loader=stream``, ``ssl.mode=mask``). The run resumes from ``DIR/ckpt_last.pt`` when it exists. For
multi-GPU training use the same code under torchrun: ``torchrun --nproc_per_node N -m ecgmodel.train.pretrain``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.pretrain import pretrain_task, torchrun_pretrain


@flow(name="pretrain", log_prints=True)
def pretrain_flow(
    store: str,
    preset: str = "smoke",
    overrides: dict[str, Any] | list[str] | None = None,
    resume: bool = True,
    out: str = "runs/pretrain",
) -> dict[str, Any]:
    """Pretrain (or resume pretraining) and return {checkpoint, encoder_path, run_id, encoder_uri, metrics}."""
    from ecgmodel.train.pretrain import build_config

    build_config(preset, overrides)  # validate before any work (bad keys/values fail here, naming the key)
    result = pretrain_task(store, preset, overrides, resume, out)
    print(f"checkpoint: {result['checkpoint']}")
    if result.get("encoder_uri"):
        print(f"encoder: {result['encoder_uri']} (MLflow run {result['run_id']})")
    return result



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


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel import cli_checks
    from ecgmodel.tracking import tracking_uri
    from ecgmodel.train.out_lock import check_not_training
    from ecgmodel.train.pretrain import build_config

    # before Prefect starts or an MLflow run is created: each failure is one line naming the fix
    cli_checks.check_overrides(lambda: build_config(args.preset, args.set or None), "--set",
                               "keys are those of PretrainConfig, e.g. ecgssl pretrain --set optim.max_steps=500")
    cli_checks.check_store_readable(args.store, "pretrain")
    cli_checks.check_writable_dir(args.out, "--out", "pretrain")
    check_not_training(args.out)

    result = pretrain_flow(store=args.store, preset=args.preset, overrides=args.set or None,
                           resume=not args.no_resume, out=args.out)  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    print(f"checkpoint: {result['checkpoint']}")
    print(f"encoder:    {result.get('encoder_path', '-')}  ({result.get('encoder_uri', '-')})")
    print(f"MLflow run: {result.get('run_id')} at {tracking_uri()}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining of the encoder on a store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--preset", choices=["smoke", "cpu", "base"], default="smoke",
                   help="smoke (tests, demo), cpu (~15 min on 2 cores) or base (GPU)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="PretrainConfig override, e.g. --set optim.max_steps=500 (repeatable)")  # fmt: skip
    p.add_argument("--out", default="runs/pretrain", help="checkpoint directory (resumed when it has one)")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    p.set_defaults(func=_handler)
