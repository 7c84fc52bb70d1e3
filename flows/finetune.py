"""Fine-tuning flow: one downstream run (``ecgssl finetune``) as a standalone MLflow run.

``ecgssl finetune --task arrhythmia27|localization|ptbxl-superclass --store PATH --init random|URI --fraction F
--seed S [--mode full|linear] [--arch-from URI] [--set key=value]``. A random init needs ``--arch-from`` (the
pretrained encoder it is compared with, so both have one architecture) or explicit ``--set encoder.*`` keys. ``--init`` takes ``random``, ``supervised`` (the xresnet1d reference arm, full mode only) or a pretrained encoder reference
(checkpoint path, MLflow run id, ``runs:/...``, ``models:/ecgssl-encoder/N``). Every key of
:class:`ecgmodel.downstream.config.FinetuneConfig` can be set with ``--set`` (e.g. ``--set optim.epochs=5``).

Deployable model: ``ecgssl finetune --from-ablation RUN_ID`` trains on all the training labels (fraction 1.0)
with the init, mode and schedule that ablation (its MLflow parent run) chose on validation, with its settings
(task, store, overrides), and registers it. ``--register`` (on any run) logs the run as an MLflow pyfunc model with
a model card and registers it as ``ecgssl-<task>`` (tags: test metrics with the bootstrap CI, the gate's outcome,
the ablation run). Only the pipeline moves the ``champion`` alias (docs/use.md "Registry").
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
    register_model: bool = False,
) -> dict:
    """Fine-tune once; returns the run's metrics, its MLflow run id and the artifact folder (and, with
    ``register_model``, the registered model: ``registered``)."""
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
    name = cell_name(cfg.init if cfg.init in ("random", "supervised") else "ssl", cfg.mode, cfg.fraction, cfg.seed)
    out = out_dir or str(Path("runs") / "finetune" / f"{task}-{name}-{config_hash(cfg)}")
    result = finetune_task(cfg.model_dump(mode="json"), out, None, name)
    if register_model:
        from ecgmodel.serving.register import register_classifier

        result["registered"] = register_classifier(result)
        print(f"registered {result['registered']['model_uri']}: {result['registered']['gate']['detail']}")
    return result


@flow(name="final-classifier", log_prints=True)
def final_classifier_flow(
    task: str,
    store: str,
    ablation: dict,
    arms: dict[str, str],
    overrides: dict | None = None,
    champion: bool = True,
    out_dir: str | None = None,
) -> dict:
    """The deployable classifier of ``task``: fraction 1.0 with the init, mode and schedule the ablation (its
    flow result, or :func:`ecgmodel.serving.register.ablation_from_run`) chose on validation; registered as
    ``ecgssl-<task>``, the ``champion`` alias moved when ``champion`` and the gate passed."""
    from ecgmodel.config import config_hash
    from ecgmodel.serving.register import choose_final, final_config, register_classifier

    choice = choose_final(ablation, arms)
    arch = next(iter(arms.values()), None)
    config = final_config(task, store, choice, arch, overrides)
    print(f"final {task} model: init {choice['init']}, mode {choice['mode']}, schedule {choice['schedule']} "
          f"(validation {choice['val_metric']} {choice['val_score']:.4g}; candidates {choice['candidates']})")
    out = out_dir or str(Path("runs") / "final" / f"{task}-{config_hash(config)}")
    parent = ablation.get("parent_run_id")
    result = finetune_task(config, out, None, f"final-{choice['init']}-{choice['mode']}",
                           {"ecgssl.role": "final-model", **({"ecgssl.ablation_run_id": parent} if parent else {})})
    reg = register_classifier(result, ablation_run_id=parent, choice=choice, champion=champion)
    print(f"registered {reg['model_uri']} ({'champion' if reg['champion'] else 'no alias'}): {reg['gate']['detail']}")
    return {**{k: v for k, v in result.items() if k.startswith(("test_", "best_val_"))}, "run_id": result["run_id"],
            "out_dir": result["out_dir"], "choice": choice, **reg}


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
    if args.from_ablation:
        from ecgmodel.errors import UserError
        from ecgmodel.serving.register import ablation_from_run

        try:
            ablation = ablation_from_run(args.from_ablation)
        except Exception as e:  # noqa: BLE001 - an unknown run id or a run that is not an ablation parent
            raise UserError(f"--from-ablation {args.from_ablation}: not an ablation parent run in the MLflow "
                            f"tracking store ({str(e).splitlines()[0][:200]})",
                            "ecgssl ui  # the ablation-<task> runs of the ecgssl-<task> experiment") from None  # fmt: skip
        overrides = {**ablation["overrides"], **(_parse_set(args.set) or {})}
        result = final_classifier_flow(task=ablation["task"], store=args.store or ablation["store"],
                                       ablation=ablation, arms=ablation["arms"], overrides=overrides,
                                       champion=False, out_dir=args.out)  # fmt: skip
        print(json.dumps(result, indent=2, default=str))
        return 0
    if not args.store:
        from ecgmodel.errors import UserError

        raise UserError("--store is required (or --from-ablation RUN_ID)",
                        "ecgssl finetune --task TASK --store STORE --init random|URI ...")
    if args.init == "supervised" and args.mode != "full":
        from ecgmodel.errors import UserError

        raise UserError(f"--init supervised --mode {args.mode}: the supervised xresnet1d arm trains from scratch, "
                        "full mode only", fix=f"ecgssl finetune --store {args.store} --init supervised --mode full")
    from ecgmodel import cli_checks

    cli_checks.check_fraction(args.fraction)  # before Prefect / MLflow: one line naming the fix
    cli_checks.check_store_readable(args.store, "fine-tune")
    cli_checks.check_encoder_file(args.init, "--init")
    if args.arch_from:
        cli_checks.check_encoder_file(args.arch_from, "--arch-from")
    cli_checks.check_overrides(lambda: _config(args), "--set",
                               "keys are those of FinetuneConfig, e.g. ecgssl finetune ... --set optim.epochs=5")
    from ecgmodel.downstream.dataset import TooFewClasses, check_classes
    from ecgmodel.errors import UserError

    try:  # too few classes to learn: one line with the counts and the fix, before Prefect and MLflow start
        check_classes(_config(args))
    except TooFewClasses as e:
        raise UserError(e.problem, e.fix()) from None
    result = finetune_flow(
        task=args.task, store=args.store, init=args.init, fraction=args.fraction, seed=args.seed, mode=args.mode,
        overrides=_parse_set(args.set), out_dir=args.out, arch_from=args.arch_from, register_model=args.register,
    )  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune on arrhythmia27, localization or ptbxl-superclass (one MLflow run)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", choices=["arrhythmia27", "localization", "ptbxl-superclass"], default="arrhythmia27")
    p.add_argument("--store", default=None, help="path of the ecgssl store (required unless --from-ablation)")
    p.add_argument("--init", default="random",
                   help="random, supervised (xresnet1d from scratch, full mode), or a pretrained encoder reference")
    p.add_argument("--arch-from", default=None, help="random init: the encoder whose architecture it copies")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the training labels used, (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the label subset and the training")
    p.add_argument("--mode", choices=["full", "linear"], default="full", help="full fine-tune or linear probe")
    p.add_argument("--out", default=None, help="artifact folder (default runs/finetune/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="FinetuneConfig override, e.g. --set optim.epochs=5 (repeatable)")  # fmt: skip
    p.add_argument("--register", action="store_true",
                   help="log the run as an MLflow pyfunc model with a model card and register it as ecgssl-<task>")
    p.add_argument("--from-ablation", default=None, metavar="RUN_ID",
                   help="train the deployable model (fraction 1.0) with the init, mode and schedule this ablation "
                   "parent run chose on validation (its task, store and overrides)")
    p.set_defaults(func=_handler)
