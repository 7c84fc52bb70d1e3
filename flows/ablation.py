"""Label-efficiency ablation flow: fraction x init x mode x seed fine-tuning cells, summarised in MLflow.

Protocol (docs/evidence.md): before the cells, every init (random and each SSL arm) picks its own schedule
(lr, encoder lr scale, warm-up) on the validation split from the same documented grid with the same budget
(``ecgmodel.downstream.config.DEFAULT_SCHEDULE_GRID``; tuning runs are children tagged ``ecgssl.cell_role=tuning``);
an encoder that was pretrained on the task's validation or test recordings is refused unless
``allow_pretrain_overlap``; the report gives paired-bootstrap CIs and the non-inferiority ``labels_to_match``.
Pretext ablation: ``encoders={"ssl-mask": ..., "ssl-shuffle": ..., "ssl-joint": ...}`` compares several pretrained
encoders (same budget) against the same random-init cells under one parent run.

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
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.futures import as_completed
from prefect.states import Completed

from tasks.finetune import cell_name, end_run, finetune_task, start_run
from tasks.report import ablation_report

MODE_ALIASES = {"finetune": "full", "fine-tune": "full", "full": "full", "linear": "linear", "probe": "linear"}
INITS = ("random", "ssl")
TASK_CHOICES = ["arrhythmia27", "localization", "ptbxl-superclass"]
DEFAULT_FRACTIONS = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
DEFAULT_SEEDS = 5
DEFAULT_MARGIN = 0.01
TUNING = "tuning"


def _cell_key(init: str, mode: str, fraction: float, seed: int, role: str = "cell", grid: int = -1) -> tuple:
    return (role, init, mode, round(float(fraction), 6), int(seed), int(grid))


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
            key = _cell_key(tags["ecgssl.cell_init"], p["mode"], float(p["fraction"]), int(p["seed"]),
                            tags.get("ecgssl.cell_role", "cell"), int(tags.get("ecgssl.grid_index", -1)))  # fmt: skip
        except (KeyError, ValueError):
            continue
        out[key] = {"init": key[1], "mode": key[2], "fraction": key[3], "seed": key[4], "grid": key[5],
                    "n_labelled": int(p.get("n_labelled", 0)), "run_id": run.info.run_id,
                    "out_dir": tags.get("ecgssl.out_dir", ""),
                    **{k: float(p[k]) for k in ("optim.lr", "optim.encoder_lr_scale", "optim.warmup_fraction")
                       if k in p},
                    **{k: v for k, v in run.data.metrics.items() if k.startswith(("best_", "test_"))}}  # fmt: skip
        for k in ("lr", "encoder_lr_scale", "warmup_fraction"):
            if f"optim.{k}" in out[key]:
                out[key][k] = out[key].pop(f"optim.{k}")
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
    fractions: list[float] = DEFAULT_FRACTIONS,  # noqa: B006 - Prefect parameter default
    seeds: int = DEFAULT_SEEDS,
    modes: list[str] = ["full", "linear"],  # noqa: B006
    inits: list[str] = ["random", "ssl"],  # noqa: B006
    overrides: dict | None = None,
    max_concurrent: int = 1,
    out_dir: str | None = None,
    resume: bool = True,
    encoders: dict[str, str] | None = None,
    schedule_grid: list[dict] | None = None,
    margin: float = DEFAULT_MARGIN,
    bootstrap_samples: int = 1000,
    allow_pretrain_overlap: bool = False,
) -> dict:
    """Run every (fraction, init, mode, seed) cell and report label efficiency on the parent MLflow run.

    ``encoders`` (pretext ablation): SSL arm name -> encoder reference, replacing ``encoder``/``ssl``.
    ``schedule_grid``: the per-init schedule grid (None: the documented default; one point: no tuning).
    ``margin``: non-inferiority margin of ``labels_to_match`` in units of the metric.
    """
    from ecgmodel.config import apply_overrides, config_hash
    from ecgmodel.data.store import content_hash
    from ecgmodel.downstream.ablation import cell_config, choose_schedule, pretraining_overlap
    from ecgmodel.downstream.config import DEFAULT_SCHEDULE_GRID, FinetuneConfig, Schedule
    from ecgmodel.downstream.report import fmt_fraction, table_rows
    from ecgmodel.tracking import MLFLOW_WRITE_LOCK, run_tags

    logger = get_run_logger()
    modes = list(dict.fromkeys(MODE_ALIASES.get(m, m) for m in modes))
    bad = [m for m in modes if m not in ("full", "linear")]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}: use 'full' (alias 'finetune') or 'linear'")
    if encoders:
        arms = dict(encoders)
        inits = ["random", *arms] if "random" in inits else list(arms)
    else:
        bad = [i for i in inits if i not in INITS]
        if bad:
            raise ValueError(f"unknown init(s) {bad}: use 'random' and/or 'ssl'")
        if "ssl" in inits and not encoder:
            raise ValueError("init 'ssl' needs --encoder (a checkpoint path, run id, runs:/ or models:/ URI)")
        arms = {"ssl": encoder} if "ssl" in inits else {}
    if seeds < 1 or max_concurrent < 1:
        raise ValueError("seeds and max_concurrent must be >= 1")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (non-inferiority margin in units of the metric), got {margin}")
    fractions = sorted({float(f) for f in fractions})
    grid = [Schedule.model_validate(g) for g in (schedule_grid if schedule_grid is not None else
                                                  [g.model_dump() for g in DEFAULT_SCHEDULE_GRID])]  # fmt: skip
    arch = next(iter(arms.values()), None)
    base = apply_overrides(FinetuneConfig(task=task, store=str(store), fractions=fractions, arch_from=arch), overrides)
    metric = f"test_{base.primary_metric}"
    store_hash = content_hash(store)

    # no leaks: refuse an encoder that saw this task's validation or test recordings unless told to allow it
    overlap_notes = []
    for arm, ref in arms.items():
        ov = pretraining_overlap(base, ref)
        if not ov["known"]:
            overlap_notes.append(f"encoder {arm} ({ref}) does not record what it was pretrained on: its test "
                                 "records may have been seen.")  # fmt: skip
            logger.warning(overlap_notes[-1])
        elif ov["n_overlap"]:
            msg = (f"encoder {arm} ({ref}) was pretrained on {ov['n_overlap']} of this task's validation/test "
                   f"recordings ({ov['by_split']}, e.g. {', '.join(ov['examples'])}): its downstream figures would "
                   "be inflated against the random init, which never saw them")  # fmt: skip
            if not allow_pretrain_overlap:
                raise ValueError(msg + ". Pretrain on the train split (the default: data.splits=['train']), or pass "
                                 "--allow-pretrain-overlap to run anyway (the report then says so).")  # fmt: skip
            overlap_notes.append("WARNING (allowed explicitly): " + msg + ".")
            logger.warning(overlap_notes[-1])
    overlap_note = " ".join(overlap_notes)

    spec = {"config": base.model_dump(mode="json"), "arms": arms, "seeds": seeds, "modes": modes,
            "inits": sorted(inits), "store_hash": store_hash, "grid": [g.model_dump() for g in grid]}  # fmt: skip
    ablation_hash = config_hash(spec)
    out = Path(out_dir or Path("runs") / "ablation" / f"{task}-{ablation_hash}")
    out.mkdir(parents=True, exist_ok=True)

    experiment = base.experiment
    parent = _resumable_parent(experiment, ablation_hash) if resume else None
    done: dict[tuple, dict[str, Any]] = {}
    if parent:
        done = _finished_children(experiment, parent, metric)
        logger.info("resuming ablation %s: %d finished runs reused", parent, len(done))
    else:
        from prefect.runtime import flow_run

        tags = run_tags(config_hash=config_hash(base), store_hash=store_hash, store_path=store,
                        flow_run_id=flow_run.get_id(),
                        extra={"ecgssl.ablation_hash": ablation_hash, "ecgssl.role": "ablation-parent", "ecgssl.task": task,
                               "ecgssl.ablation_metric": metric})  # fmt: skip
        parent = start_run(experiment, f"ablation-{task}", tags)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        params = {"task": task, "store": store, "encoder": encoder or "", "encoders": json.dumps(arms),
                  "fractions": json.dumps(fractions), "seeds": seeds, "modes": json.dumps(modes),
                  "inits": json.dumps(sorted(inits)), "ablation_metric": metric,
                  "overrides": json.dumps(overrides or {}), "max_concurrent": max_concurrent,
                  "schedule_grid": json.dumps([g.model_dump() for g in grid]), "margin": margin,
                  "bootstrap_samples": bootstrap_samples, "validation": base.validation,
                  "allow_pretrain_overlap": allow_pretrain_overlap}  # fmt: skip
        with MLFLOW_WRITE_LOCK:
            MlflowClient().log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    if overlap_note:
        with MLFLOW_WRITE_LOCK:
            from mlflow.tracking import MlflowClient

            MlflowClient().set_tag(parent, "ecgssl.pretrain_overlap", overlap_note[:5000])

    def config_for(init: str, mode: str, fraction: float, seed: int, schedule: Schedule) -> dict:
        return cell_config(base, "random" if init == "random" else arms[init], mode, fraction, seed, schedule)

    def run_cells(cells: list[tuple], label: str) -> list[dict[str, Any]]:
        """Train ``cells`` ((role, init, mode, fraction, seed, grid, schedule)), at most max_concurrent at once."""
        results: list[dict[str, Any]] = []
        todo = []
        for c in cells:
            key = _cell_key(c[1], c[2], c[3], c[4], c[0], c[5])
            if key in done:
                results.append(done[key])
            else:
                todo.append(c)
        total = len(cells)
        progress = create_progress_artifact(100.0 * len(results) / max(total, 1), key=f"ablation-{task}-{label}",
                                            description=f"{task}: {label} runs finished of {total}")  # fmt: skip
        logger.info("%s %s: %d runs (%d to train), parent run %s", task, label, total, len(todo), parent)
        running: dict[Any, tuple] = {}

        def collect(future, cell) -> None:
            role, init, mode, f, s, g, _ = cell
            name = _name(cell)
            try:
                res = future.result()
            except Exception as e:  # one failed cell must not lose the others: it is reported, metric NaN
                logger.warning("%s %s failed: %r", label, name, e)
                results.append({"init": init, "mode": mode, "fraction": f, "seed": s, "grid": g, metric: math.nan,
                                "error": repr(e)[:500]})  # fmt: skip
            else:
                results.append({**res, "init": init, "mode": mode, "grid": g})
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(progress, 100.0 * len(results) / max(total, 1))

        for cell in todo:
            while len(running) >= max_concurrent:  # bounded submit loop: wait for one to finish
                finished = next(as_completed(list(running)))
                collect(finished, running.pop(finished))
            role, init, mode, f, s, g, schedule = cell
            name = _name(cell)
            cell_out = str(out / ("tuning" if role == TUNING else "cells") / name)
            fut = finetune_task.with_options(name=f"finetune-{name}").submit(
                config_for(init, mode, f, s, schedule), cell_out, parent, name,
                {"ecgssl.cell_init": init, "ecgssl.ablation_hash": ablation_hash, "ecgssl.cell_role": role,
                 "ecgssl.grid_index": str(g), "ecgssl.out_dir": cell_out},
            )  # fmt: skip
            running[fut] = cell
        for finished in as_completed(list(running)):
            collect(finished, running.pop(finished))
        return results

    try:
        # 1. per-init schedule on the validation split: same grid, same budget (fraction 1, seed 0) for every init
        chosen: dict[tuple[str, str], Schedule] = {(i, m): grid[0] for i in inits for m in modes}
        if len(grid) > 1:
            top = max(fractions)
            tuning = [(TUNING, i, m, top, 0, gi, g) for i in inits for m in modes for gi, g in enumerate(grid)]
            tuned = run_cells(tuning, "tuning")
            errors = [r for r in tuned if r.get("error")]
            if len(errors) == len(tuned):
                raise RuntimeError(f"all {len(tuned)} schedule-tuning runs failed (no cell was trained); first: "
                                   f"grid point {errors[0]['grid']} of {errors[0]['init']}/{errors[0]['mode']}: {errors[0]['error']}")  # fmt: skip
            import pandas as pd

            frame = pd.DataFrame(tuned)
            for k in ("lr", "encoder_lr_scale", "warmup_fraction"):
                frame[k] = [getattr(grid[int(g)], k) for g in frame["grid"]]
            score = f"best_val_{base.primary_metric}"
            chosen = {k: Schedule(**v) for k, v in choose_schedule(frame, score).items()}
        schedules = {f"{i}/{m}": s.model_dump() for (i, m), s in chosen.items()}
        logger.info("schedules chosen on validation: %s", schedules)
        if len(grid) > 1:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            with MLFLOW_WRITE_LOCK:
                try:
                    MlflowClient().log_batch(parent, params=[Param("chosen_schedules", json.dumps(schedules))])
                except Exception:  # already logged by the run being resumed (params are immutable)
                    pass

        # 2. the cells
        cells = [("cell", init, mode, f, s, -1, chosen[(init, mode)]) for mode in modes for init in inits
                 for f in fractions for s in range(seeds)]  # fmt: skip
        results = run_cells(cells, "cells")
        report = ablation_report(results, metric, modes, str(out), parent,
                                 title=f"{task}: label efficiency ({metric})", task_name=task,
                                 arms=list(arms) or ["ssl"], margin=margin, bootstrap_samples=bootstrap_samples,
                                 validation=base.validation, overlap_note=overlap_note,
                                 schedules=schedules)  # fmt: skip
    except BaseException:
        end_run(parent, "FAILED")  # resumable: the next run with the same settings continues it
        raise
    failed = [r for r in results if r.get("error")]
    end_run(parent, "FINISHED" if not failed else "FAILED")

    # Prefect artifacts: the headline (markdown) and the summary table, the metric named in the columns
    import pandas as pd

    create_markdown_artifact(report["markdown"], key=f"ablation-{task}-report",
                             description=f"{task} label-efficiency ablation: headline with CIs")  # fmt: skip
    rows = table_rows(pd.read_csv(report["summary_csv"]), metric)
    if rows:
        create_table_artifact(rows, key=f"ablation-{task}-summary",
                              description=f"{task}: {metric} per mode x init x fraction over {seeds} seeds")  # fmt: skip
    result = {
        "parent_run_id": parent,
        "experiment": experiment,
        "labels_to_match": report["labels_to_match"],
        "labels_to_match_text": fmt_fraction(report["labels_to_match"]),
        "gains": report["gains"],
        "gain_ci": report["gain_ci"],
        "significant": report["significant"],
        "statements": report["statements"],
        "summary_csv": report["summary_csv"],
        "evidence_csv": report["evidence_csv"],
        "plot": report["plot"],
        "best": report["best"],
        "metric": metric,
        "labels_to_match_by_mode": report["labels_to_match_by_mode"],
        "labels_to_match_by_arm": report["labels_to_match_by_arm"],
        "schedules": schedules,
        "pretrain_overlap": overlap_note,
        "n_cells": len(cells),
        "n_failed": len(failed),
    }
    if failed:
        first = failed[0]
        msg = (f"{len(failed)} of {len(cells)} fine-tuning cells failed; first: "
               f"{cell_name(first['init'], first['mode'], first['fraction'], first['seed'])}: {first['error']}")  # fmt: skip
        if len(failed) == len(cells):
            raise RuntimeError(msg)
        logger.error(msg)
        return Completed(message=f"Partial: {msg}", name="Partial", data=result)
    return result


def _name(cell: tuple) -> str:
    role, init, mode, f, s, g, _ = cell
    base = cell_name(init, mode, f, s)
    return f"tune-{base}-g{g}" if role == TUNING else base


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
    encoders = None
    if args.pretext_encoder:
        encoders = {}
        for item in args.pretext_encoder:
            if "=" not in item:
                raise SystemExit(f"--pretext-encoder {item!r}: expected NAME=REF (e.g. mask=runs/mask/encoder.pt)")
            name, ref = item.split("=", 1)
            encoders[f"ssl-{name.strip()}"] = ref.strip()
    grid = json.loads(args.schedule_grid) if args.schedule_grid else None
    result = ablation_flow(
        task=args.task, store=args.store, encoder=args.encoder, fractions=args.fractions, seeds=args.seeds,
        modes=args.modes, inits=args.inits, overrides=overrides or None, max_concurrent=args.max_concurrent,
        out_dir=args.out, resume=not args.no_resume, encoders=encoders, schedule_grid=grid, margin=args.margin,
        bootstrap_samples=args.bootstrap_samples, allow_pretrain_overlap=args.allow_pretrain_overlap,
    )  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    print(f"labels to match: {result['labels_to_match_text']}")
    for line in result.get("statements", []):
        print(f"- {line}")
    return 0 if not result["n_failed"] else 1


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="label-fraction ablation (SSL vs random init) logged to MLflow",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", choices=TASK_CHOICES, default="arrhythmia27")
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--encoder", default=None, help="pretrained encoder: checkpoint path, run id, runs:/, models:/")
    p.add_argument("--pretext-encoder", action="append", metavar="NAME=REF",
                   help="pretext ablation: one pretrained encoder per pretext arm, e.g. mask=... shuffle=... "
                   "joint=... (repeatable; compared with the same random-init cells under one parent run)")
    p.add_argument("--fractions", type=float, nargs="+", default=DEFAULT_FRACTIONS)
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds per cell")
    p.add_argument("--modes", nargs="+", default=["full", "linear"], help="full and/or linear")
    p.add_argument("--inits", nargs="+", default=None, help="random and/or ssl (default: both, random only "
                   "without --encoder)")  # fmt: skip
    p.add_argument("--max-concurrent", type=int, default=1, help="cells trained at the same time")
    p.add_argument("--out", default=None, help="folder for the cells' artifacts and the report")
    p.add_argument("--no-resume", action="store_true", help="start a new parent run even if one can be resumed")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help="non-inferiority margin of labels_to_match, in units of the metric (default 0.01)")
    p.add_argument("--bootstrap-samples", type=int, default=1000, help="paired-bootstrap replicates")
    p.add_argument("--schedule-grid", default=None, metavar="JSON",
                   help='per-init schedule grid, e.g. \'[{"lr": 1e-3, "encoder_lr_scale": 1.0, "warmup_fraction": 0.1}]\' '
                   "(default: the documented 4-point grid; one point = no tuning)")
    p.add_argument("--allow-pretrain-overlap", action="store_true",
                   help="run even if the encoder was pretrained on this task's val/test recordings (reported)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="FinetuneConfig override, e.g. --set optim.epochs=5 (repeatable)")  # fmt: skip
    p.set_defaults(func=_cli_entry)


def _cli_entry(args: argparse.Namespace) -> int:
    if args.inits is None:
        args.inits = ["random", "ssl"] if (args.encoder or args.pretext_encoder) else ["random"]
    return _handler(args)
