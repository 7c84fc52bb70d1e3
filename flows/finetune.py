"""Fine-tuning flow: one downstream run (``ecgssl finetune``) as a standalone MLflow run.

``ecgssl finetune --task arrhythmia27|localization|ptbxl-superclass --store PATH --init random|URI --fraction F
--seed S [--mode full|linear] [--arch-from URI] [--set key=value]``. A random init needs ``--arch-from`` (the
pretrained encoder it is compared with, so both have one architecture) or explicit ``--set encoder.*`` keys. ``--init`` takes ``random`` or a pretrained encoder reference
(checkpoint path, MLflow run id, ``runs:/...``, ``models:/ecgssl-encoder/N``). Every key of
:class:`ecgmodel.downstream.config.FinetuneConfig` can be set with ``--set`` (e.g. ``--set optim.epochs=5``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow

from tasks.finetune import cell_name, finetune_task


@flow(name="finetune", log_prints=True)
def finetune_flow(
    task: str = "arrhythmia27",
    store: str = "data/store",
    init: str = "random",
    fraction: float = 1.0,
    seed: int = 0,
    mode: str = "full",
    overrides: dict | None = None,
    out_dir: str | None = None,
    arch_from: str | None = None,
) -> dict:
    """Fine-tune once; returns the run's metrics, its MLflow run id and the artifact folder."""
    from ecgmodel.config import apply_overrides, config_hash
    from ecgmodel.downstream.config import FinetuneConfig

    cfg = apply_overrides(
        FinetuneConfig(task=task, store=str(store), init=init, fraction=fraction, seed=seed, mode=mode,
                       arch_from=arch_from), overrides  # fmt: skip
    )
    if cfg.init == "random" and not cfg.arch_from and not any(k.startswith("encoder") for k in (overrides or {})):
        raise ValueError(
            "a random init needs the architecture it is compared with: pass --arch-from ENCODER (the pretrained "
            "encoder's reference) or set the architecture explicitly (--set encoder.d_model=... encoder.n_layers=...)"
        )
    name = cell_name("random" if cfg.init == "random" else "ssl", cfg.mode, cfg.fraction, cfg.seed)
    out = out_dir or str(Path("runs") / "finetune" / f"{task}-{name}-{config_hash(cfg)}")
    return finetune_task(cfg.model_dump(mode="json"), out, None, name)


def _parse_set(items: list[str] | None) -> dict | None:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out or None


def _config(args: argparse.Namespace):
    from ecgmodel.config import apply_overrides
    from ecgmodel.downstream.config import FinetuneConfig

    return apply_overrides(FinetuneConfig(task=args.task, store=str(args.store), init=args.init, fraction=args.fraction,
                                          seed=args.seed, mode=args.mode, arch_from=args.arch_from),
                           _parse_set(args.set))  # fmt: skip


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel import cli_checks

    cli_checks.check_fraction(args.fraction)  # before Prefect / MLflow: one line naming the fix
    cli_checks.check_store_readable(args.store, "fine-tune")
    cli_checks.check_encoder_file(args.init, "--init")
    if args.arch_from:
        cli_checks.check_encoder_file(args.arch_from, "--arch-from")
    cli_checks.check_overrides(lambda: _config(args), "--set",
                               "keys are those of FinetuneConfig, e.g. ecgssl finetune ... --set optim.epochs=5")
    result = finetune_flow(
        task=args.task, store=args.store, init=args.init, fraction=args.fraction, seed=args.seed, mode=args.mode,
        overrides=_parse_set(args.set), out_dir=args.out, arch_from=args.arch_from,
    )  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune on arrhythmia27, localization or ptbxl-superclass (one MLflow run)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", choices=["arrhythmia27", "localization", "ptbxl-superclass"], default="arrhythmia27")
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--init", default="random", help="random, or a pretrained encoder reference")
    p.add_argument("--arch-from", default=None, help="random init: the encoder whose architecture it copies")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the training labels used, (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the label subset and the training")
    p.add_argument("--mode", choices=["full", "linear"], default="full", help="full fine-tune or linear probe")
    p.add_argument("--out", default=None, help="artifact folder (default runs/finetune/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="FinetuneConfig override, e.g. --set optim.epochs=5 (repeatable)")  # fmt: skip
    p.set_defaults(func=_handler)
