"""Label-efficiency ablation flow: arm x pretraining run x mode x fraction x seed fine-tuning cells, in MLflow.

A thin Prefect adapter over ``ecgmodel.ablation`` (the spec, the runner, the report; see docs/protocol.md): the
settings are validated once (``AblationSpec``, whose defaults the CLI, this flow and the pipeline's ``ablation``
section share), cells run as Prefect tasks (tag ``ecgssl-finetune``: ``prefect concurrency-limit create
ecgssl-finetune 1`` queues GPU runs across flows), at most ``max_concurrent`` at once.

Arms: ``random``, the SSL arms (``ssl`` from ``--encoder``, repeatable for K pretraining runs; or
``--pretext-encoder NAME=REF[,REF...]``) and ``supervised`` (a from-scratch xresnet1d, full mode). Every arm
chooses its schedule on validation from the same grid; every cell trains to convergence (early stopping); the
report gives hierarchical paired-bootstrap CIs (pretraining runs, seeds, records), withholds verdicts involving a
budget-limited arm, and is written to its own folder, ``<out>/<task>-<hash>-<parent run id>``, which ``ecgssl
report`` re-derives.

MLflow layout: experiment ``ecgssl-<task>``; one parent run per ablation (params, metrics ``labels_to_match`` +
``labels_to_match_reached``, ``gain_*``, ``budget_limited_<arm>_<mode>``; the headline table as the run
description); one child run per cell (tags ``ecgssl.cell_init``, ``ecgssl.pretrain_id``, ``ecgssl.cell_role``).

Re-runs: an ablation with the same settings and the same encoder CONTENT whose parent run did not finish is resumed
(finished cells reused, cells left RUNNING by a killed process marked KILLED).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.states import Completed

from ecgmodel.ablation.spec import TASK_CHOICES, build_spec
from ecgmodel.errors import UserError
from tasks.finetune import finetune_task


class PrefectExecutor:
    """Cells as Prefect task runs (``tasks.finetune.finetune_task``)."""

    def submit(self, config, out_dir, parent_run_id, name, tags):
        return finetune_task.with_options(name=f"finetune-{name}").submit(config, out_dir, parent_run_id, name, tags)

    def as_completed(self, futures):
        from prefect.futures import as_completed

        return as_completed(futures)


def _progress(task: str):
    artifacts: dict[str, Any] = {}

    def update(label: str, finished: int, total: int) -> None:
        from prefect.artifacts import update_progress_artifact

        value = 100.0 * finished / max(total, 1)
        if label not in artifacts:
            artifacts[label] = create_progress_artifact(value, key=f"ablation-{task}-{label}",
                                                        description=f"{task}: {label} runs finished of {total}")  # fmt: skip
        else:
            update_progress_artifact(artifacts[label], value)

    return update


@flow(name="ablation", log_prints=True)
def ablation_flow(
    task: str | None = None,
    store: str | None = None,
    encoder: str | list[str] | None = None,
    fractions: list[float] | None = None,
    seeds: int | None = None,
    modes: list[str] | None = None,
    inits: list[str] | None = None,
    overrides: dict | None = None,
    max_concurrent: int | None = None,
    out_dir: str | None = None,
    resume: bool | None = None,
    encoders: dict[str, str | list[str]] | None = None,
    schedule_grid: list[dict] | None = None,
    margin: float | None = None,
    bootstrap_samples: int | None = None,
    allow_pretrain_overlap: bool | None = None,
    supervised: bool | None = None,
    bootstrap_seed: int | None = None,
) -> dict:
    """Run every cell and report label efficiency on the parent MLflow run. None: the spec's default
    (``ecgmodel.ablation.spec.AblationSpec``). ``encoder``: the pretraining run(s) of arm ``ssl``; ``encoders``:
    SSL arm -> pretraining run(s) (pretext ablation)."""
    values = spec_values(dict(locals()))  # the arguments only: taken before anything else is bound here
    from ecgmodel.ablation.runner import run_ablation
    from ecgmodel.downstream.report import table_rows

    logger = get_run_logger()
    spec = build_spec(**values)
    from prefect.runtime import flow_run

    result = run_ablation(spec, PrefectExecutor(), logger, flow_run.get_id(), _progress(spec.task))
    create_markdown_artifact(result["markdown"], key=f"ablation-{spec.task}-report",
                             description=f"{spec.task} label-efficiency ablation: headline with CIs")  # fmt: skip
    import pandas as pd

    rows = table_rows(pd.read_csv(result["summary_csv"]), result["metric"])
    if rows:
        create_table_artifact(rows, key=f"ablation-{spec.task}-summary",
                              description=f"{spec.task}: {result['metric']} per mode x arm x fraction")  # fmt: skip
    if result["n_failed"]:
        msg = f"{result['n_failed']} of {result['n_cells']} fine-tuning cells failed; first: {result['errors'][0]}"
        if result["n_failed"] == result["n_cells"]:
            raise RuntimeError(msg)
        logger.error(msg)
        return Completed(message=f"Partial: {msg}", name="Partial", data=result)
    return result


def spec_values(args: dict[str, Any]) -> dict[str, Any]:
    """The flow's / CLI's arguments as AblationSpec values (``encoder`` folded into ``encoders['ssl']``)."""
    values = {k: v for k, v in args.items() if k not in ("encoder", "logger") and v is not None}
    encoder = args.get("encoder")
    if encoder and not args.get("encoders"):
        values["encoders"] = {"ssl": [encoder] if isinstance(encoder, str) else list(encoder)}
    return values


# ---------------------------------------------------------------------------------------------------- CLI
def _parse_set(items: list[str] | None) -> dict[str, Any] | None:
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value", "ecgssl ablate ... --set optim.epochs=5")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides or None


def _parse_pretext(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    encoders: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--pretext-encoder {item!r}: expected NAME=REF[,REF...]",
                            "ecgssl ablate ... --pretext-encoder mask=runs/mask/encoder.pt")  # fmt: skip
        name, refs = item.split("=", 1)
        encoders.setdefault(f"ssl-{name.strip()}", []).extend(r.strip() for r in refs.split(",") if r.strip())
    return encoders


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The AblationSpec values of a parsed ``ecgssl ablate`` command line (None: the spec's default)."""
    try:
        grid = json.loads(args.schedule_grid) if args.schedule_grid else None
    except json.JSONDecodeError as e:
        raise UserError(f"--schedule-grid is not JSON: {e}", "ecgssl ablate --help") from e
    return spec_values({
        "task": args.task, "store": args.store, "encoder": args.encoder, "encoders": _parse_pretext(args.pretext_encoder),
        "fractions": args.fractions, "seeds": args.seeds, "modes": args.modes, "inits": args.inits,
        "overrides": _parse_set(args.set), "max_concurrent": args.max_concurrent, "out_dir": args.out,
        "resume": False if args.no_resume else None, "schedule_grid": grid, "margin": args.margin,
        "bootstrap_samples": args.bootstrap_samples, "bootstrap_seed": args.bootstrap_seed,
        "allow_pretrain_overlap": True if args.allow_pretrain_overlap else None, "supervised": args.supervised,
    })  # fmt: skip


def _handler(args: argparse.Namespace) -> int:
    values = cli_values(args)
    build_spec(**values)  # every argument checked before Prefect starts or an MLflow run exists
    state = ablation_flow(**values, return_state=True)
    result = state.result(raise_on_failure=True)
    print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2, default=str))
    print(f"labels to match: {result['labels_to_match_text']}")
    for line in result.get("statements", []):
        print(f"- {line}")
    print(f"report folder: {result['report_dir']} (re-derive: ecgssl report {result['report_dir']})")
    return 0 if not result["n_failed"] else 1


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="label-fraction ablation (SSL arms vs random init and a supervised CNN)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", choices=TASK_CHOICES, default=None, help="downstream task (default arrhythmia27)")
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--encoder", action="append", default=None, metavar="REF",
                   help="a pretraining run of arm 'ssl': checkpoint path, run id, runs:/, models:/ (repeatable: K "
                   "pretraining runs of one recipe, resampled by the bootstrap)")  # fmt: skip
    p.add_argument("--pretext-encoder", action="append", metavar="NAME=REF[,REF...]",
                   help="pretext ablation: the pretraining run(s) of arm ssl-NAME, e.g. joint=a.pt,b.pt (repeatable)")
    p.add_argument("--fractions", type=float, nargs="+", default=None, help="label fractions in (0, 1]")
    p.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds per cell")
    p.add_argument("--modes", nargs="+", default=None, help="full and/or linear")
    p.add_argument("--inits", nargs="+", default=None, help="random and/or ssl (default: both, random only without "
                   "an encoder)")  # fmt: skip
    p.add_argument("--supervised", action=argparse.BooleanOptionalAction, default=None,
                   help="the supervised reference arm (from-scratch xresnet1d, full mode; default on)")
    p.add_argument("--max-concurrent", type=int, default=None, help="cells trained at the same time")
    p.add_argument("--out", default=None, help="base folder of the report folders (default runs/ablation)")
    p.add_argument("--no-resume", action="store_true", help="start a new parent run even if one can be resumed")
    p.add_argument("--margin", type=float, default=None, help="non-inferiority margin of labels_to_match")
    p.add_argument("--bootstrap-samples", type=int, default=None, help="bootstrap replicates")
    p.add_argument("--bootstrap-seed", type=int, default=None, help="bootstrap seed (fixed for re-derivation)")
    p.add_argument("--schedule-grid", default=None, metavar="JSON",
                   help='per-arm schedule grid, e.g. \'[{"lr": 1e-3, "encoder_lr_scale": 1.0, "warmup_fraction": 0.1}]\' '
                   "(default: the documented grid; one point = no tuning)")
    p.add_argument("--allow-pretrain-overlap", action="store_true",
                   help="run even if an encoder was pretrained on this task's val/test recordings (reported)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="FinetuneConfig override, e.g. --set optim.batch_size=16 (repeatable)")  # fmt: skip
    p.set_defaults(func=_handler)
