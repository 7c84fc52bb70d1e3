"""Label-efficiency ablation flow: fraction x init x mode x seed fine-tuning cells, summarised in MLflow.

MLflow layout: experiment ``ecgssl-arrhythmia27`` / ``ecgssl-localization``; one parent run per ablation (params:
task, store, encoder, fractions, seeds, modes, inits, ablation_metric); one child run per cell (``parent_run_id``
set explicitly; params fraction, seed, init, mode, n_labelled, the whole FinetuneConfig; per-epoch metrics and
``best_*`` / ``test_*``). The parent carries the summary table, the label-efficiency plot, ``labels_to_match`` and
``gain_at_<fraction>``.

Concurrency: at most ``max_concurrent`` cells run at once (a bounded submit loop), so GPU runs queue instead of
competing for memory; the Prefect tag ``ecgssl-finetune`` on the task also allows a server-side limit across flows
(``prefect concurrency-limit create ecgssl-finetune 1``).

Re-runs: an ablation with the same settings whose parent run did not finish is resumed: its finished child runs
are reused and only the missing cells are trained.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from tasks.finetune import cell_name, end_run, finetune_task, start_run
from tasks.report import ablation_report

MODE_ALIASES = {"finetune": "full", "fine-tune": "full", "full": "full", "linear": "linear", "probe": "linear"}
INITS = ("random", "ssl")


def _cell_key(init: str, mode: str, fraction: float, seed: int) -> tuple[str, str, float, int]:
    return (init, mode, round(float(fraction), 6), int(seed))


def _finished_children(experiment: str, parent_run_id: str, metric: str) -> dict[tuple, dict[str, Any]]:
    """Finished child runs of ``parent_run_id``: cell key -> result row (for resuming)."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import setup_mlflow

    client = MlflowClient()
    exp_id = setup_mlflow(experiment)
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )  # fmt: skip
    out = {}
    for run in runs:
        p, tags = run.data.params, run.data.tags
        try:
            key = _cell_key(tags["ecgssl.cell_init"], p["mode"], float(p["fraction"]), int(p["seed"]))
        except (KeyError, ValueError):
            continue
        out[key] = {"init": key[0], "mode": key[1], "fraction": key[2], "seed": key[3],
                    "n_labelled": int(p.get("n_labelled", 0)), "run_id": run.info.run_id,
                    **{k: v for k, v in run.data.metrics.items() if k.startswith(("best_", "test_"))}}  # fmt: skip
    return out


def _resumable_parent(experiment: str, ablation_hash: str) -> str | None:
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import setup_mlflow

    exp_id = setup_mlflow(experiment)
    runs = MlflowClient().search_runs(
        [exp_id],
        filter_string=f"tags.`ecgssl.ablation_hash` = '{ablation_hash}' and tags.`ecgssl.role` = 'ablation-parent'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    if runs and runs[0].info.status != "FINISHED":
        return runs[0].info.run_id
    return None


@flow(name="ablation", log_prints=True)
def ablation_flow(
    task: str = "arrhythmia27",
    store: str = "data/store",
    encoder: str | None = None,
    fractions: list[float] = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],  # noqa: B006 - Prefect parameter default
    seeds: int = 3,
    modes: list[str] = ["full"],  # noqa: B006
    inits: list[str] = ["random", "ssl"],  # noqa: B006
    overrides: dict | None = None,
    max_concurrent: int = 1,
    out_dir: str | None = None,
    resume: bool = True,
) -> dict:
    """Run every (fraction, init, mode, seed) cell and report label efficiency on the parent MLflow run."""
    from ecgmodel.config import apply_overrides, config_hash
    from ecgmodel.data.store import content_hash
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.tracking import MLFLOW_WRITE_LOCK, run_tags

    logger = get_run_logger()
    modes = list(dict.fromkeys(MODE_ALIASES.get(m, m) for m in modes))
    bad = [m for m in modes if m not in ("full", "linear")]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}: use 'full' (alias 'finetune') or 'linear'")
    bad = [i for i in inits if i not in INITS]
    if bad:
        raise ValueError(f"unknown init(s) {bad}: use 'random' and/or 'ssl'")
    if "ssl" in inits and not encoder:
        raise ValueError("init 'ssl' needs --encoder (a checkpoint path, run id, runs:/ or models:/ URI)")
    if seeds < 1 or max_concurrent < 1:
        raise ValueError("seeds and max_concurrent must be >= 1")
    fractions = sorted({float(f) for f in fractions})
    base = apply_overrides(
        FinetuneConfig(task=task, store=str(store), fractions=fractions, arch_from=encoder), overrides
    )
    metric = f"test_{base.primary_metric}"
    store_hash = content_hash(store)
    spec = {"config": base.model_dump(mode="json"), "encoder": encoder, "seeds": seeds, "modes": modes,
            "inits": sorted(inits), "store_hash": store_hash}  # fmt: skip
    ablation_hash = config_hash(spec)
    out = Path(out_dir or Path("runs") / "ablation" / f"{task}-{ablation_hash}")
    out.mkdir(parents=True, exist_ok=True)

    experiment = base.experiment
    parent = _resumable_parent(experiment, ablation_hash) if resume else None
    done: dict[tuple, dict[str, Any]] = {}
    if parent:
        done = _finished_children(experiment, parent, metric)
        logger.info("resuming ablation %s: %d finished cells reused", parent, len(done))
    else:
        from prefect.runtime import flow_run

        tags = run_tags(config_hash=config_hash(base), store_hash=store_hash, store_path=store,
                        flow_run_id=flow_run.get_id(),
                        extra={"ecgssl.ablation_hash": ablation_hash, "ecgssl.role": "ablation-parent", "ecgssl.task": task,
                               "ecgssl.ablation_metric": metric})  # fmt: skip
        parent = start_run(experiment, f"ablation-{task}", tags)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        params = {"task": task, "store": store, "encoder": encoder or "", "fractions": json.dumps(fractions),
                  "seeds": seeds, "modes": json.dumps(modes), "inits": json.dumps(sorted(inits)),
                  "ablation_metric": metric, "overrides": json.dumps(overrides or {}),
                  "max_concurrent": max_concurrent}  # fmt: skip
        with MLFLOW_WRITE_LOCK:
            MlflowClient().log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    cells = [(init, mode, f, s) for mode in modes for init in inits for f in fractions for s in range(seeds)]
    results: list[dict[str, Any]] = [done[_cell_key(*c)] for c in cells if _cell_key(*c) in done]
    todo = [c for c in cells if _cell_key(*c) not in done]
    logger.info("%s ablation: %d cells (%d to run), parent run %s", task, len(cells), len(todo), parent)

    def collect(future, cell) -> None:
        init, mode, f, s = cell
        try:
            res = future.result()
        except Exception as e:  # one failed cell must not lose the others: it is reported, metric NaN
            logger.warning("cell %s failed: %r", cell_name(init, mode, f, s), e)
            results.append({"init": init, "mode": mode, "fraction": f, "seed": s, metric: math.nan,
                            "error": repr(e)[:500]})  # fmt: skip
            return
        results.append({**res, "init": init, "mode": mode})

    running: dict[Any, tuple] = {}
    try:
        for cell in todo:
            init, mode, f, s = cell
            while len(running) >= max_concurrent:  # bounded submit loop: wait for one to finish
                finished = next(as_completed(list(running)))
                collect(finished, running.pop(finished))
            cfg = base.model_copy(update={"init": "random" if init == "random" else encoder, "mode": mode,
                                          "fraction": f, "seed": s})  # fmt: skip
            cfg = FinetuneConfig.model_validate(cfg.model_dump())
            name = cell_name(init, mode, f, s)
            fut = finetune_task.with_options(name=f"finetune-{name}").submit(
                cfg.model_dump(mode="json"), str(out / "cells" / name), parent, name,
                {"ecgssl.cell_init": init, "ecgssl.ablation_hash": ablation_hash},
            )  # fmt: skip
            running[fut] = cell
        for finished in as_completed(list(running)):
            collect(finished, running.pop(finished))
        report = ablation_report(results, metric, modes, str(out), parent,
                                 title=f"{task}: label efficiency ({metric})")  # fmt: skip
    except BaseException:
        end_run(parent, "FAILED")  # resumable: the next run with the same settings continues it
        raise
    failed = sum(1 for r in results if r.get("error"))
    end_run(parent, "FINISHED" if not failed else "FAILED")
    return {
        "parent_run_id": parent,
        "experiment": experiment,
        "labels_to_match": report["labels_to_match"],
        "gains": report["gains"],
        "summary_csv": report["summary_csv"],
        "plot": report["plot"],
        "best": report["best"],
        "metric": metric,
        "labels_to_match_by_mode": report["labels_to_match_by_mode"],
        "n_cells": len(cells),
        "n_failed": failed,
    }


# ---------------------------------------------------------------------------------------------------- CLI
def _handler(args: argparse.Namespace) -> int:
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    result = ablation_flow(
        task=args.task, store=args.store, encoder=args.encoder, fractions=args.fractions, seeds=args.seeds,
        modes=args.modes, inits=args.inits, overrides=overrides or None, max_concurrent=args.max_concurrent,
        out_dir=args.out, resume=not args.no_resume,
    )  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    return 0 if not result["n_failed"] else 1


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="label-fraction ablation (SSL vs random init) logged to MLflow",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", choices=["arrhythmia27", "localization"], default="arrhythmia27")
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--encoder", default=None, help="pretrained encoder: checkpoint path, run id, runs:/, models:/")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    p.add_argument("--modes", nargs="+", default=["full"], help="full and/or linear")
    p.add_argument("--inits", nargs="+", default=None, help="random and/or ssl (default: both, random only "
                   "without --encoder)")  # fmt: skip
    p.add_argument("--max-concurrent", type=int, default=1, help="cells trained at the same time")
    p.add_argument("--out", default=None, help="folder for the cells' artifacts and the report")
    p.add_argument("--no-resume", action="store_true", help="start a new parent run even if one can be resumed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="FinetuneConfig override, e.g. --set optim.epochs=5 (repeatable)")  # fmt: skip
    p.set_defaults(func=_cli_entry)


def _cli_entry(args: argparse.Namespace) -> int:
    if args.inits is None:
        args.inits = ["random", "ssl"] if args.encoder else ["random"]
    return _handler(args)
