"""The ablation algorithm: schedule tuning -> cells -> report, resuming an unfinished parent run.

Training is delegated to an injected :class:`Executor` (``submit`` one cell, ``as_completed`` over the pending
ones): the Prefect flow passes one that submits Prefect tasks, tests and library callers pass
:class:`ThreadExecutor`. Each cell seeds its own generators, so the cells' results do not depend on how many run
at once. Every cell is a child MLflow run of one parent run; the report folder (``<base>/<task>-<hash>-<parent run
id>``: one folder per run, never shared) keeps everything ``ecgssl report`` needs to re-derive the numbers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import as_completed as futures_completed
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ecgmodel.ablation import tracking as T
from ecgmodel.ablation.cell import CELL, TUNING, Cell
from ecgmodel.ablation.report import CELLS_FILE, SPEC_FILE, TUNING_FILE, build_report
from ecgmodel.ablation.spec import RANDOM, SUPERVISED, AblationSpec, encoder_digest
from ecgmodel.errors import UserError

DEFAULT_BASE = Path("runs") / "ablation"
CELL_COLUMNS = ["role", "init", "pretrain_id", "mode", "fraction", "seed", "grid", "name", "n_labelled", "n_val",
                "n_labels_used", "best_epoch", "epochs_trained", "budget_limited", "grid_edge", "lr",
                "encoder_lr_scale", "warmup_fraction", "run_id", "out_dir", "error"]  # fmt: skip


class Executor(Protocol):
    def submit(self, config: dict[str, Any], out_dir: str, parent_run_id: str, name: str,
               tags: dict[str, str]) -> Any: ...  # fmt: skip

    def as_completed(self, futures: list[Any]) -> Iterator[Any]: ...


def train_cell(config: dict[str, Any], out_dir: str, parent_run_id: str | None = None, run_name: str | None = None,
               extra_tags: dict[str, str] | None = None, flow_run_id: str | None = None,
               finetune: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fine-tune one cell (a FinetuneConfig dict) into ``out_dir`` as a complete MLflow run (a child of
    ``parent_run_id``); a failure marks the run FAILED and re-raises. Returns finetune's result + run id/name.
    ``finetune``: the training function (default ``ecgmodel.downstream.finetune.finetune``)."""
    from ecgmodel.config import config_hash
    from ecgmodel.data.store import content_hash
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.tracking import run_tags

    if finetune is None:
        from ecgmodel.downstream.finetune import finetune

    cfg = FinetuneConfig.model_validate(config)
    name = run_name or f"{cfg.init if cfg.init in (RANDOM, SUPERVISED) else 'ssl'}-{cfg.mode}-f{cfg.fraction:g}-s{cfg.seed}"
    tags = run_tags(config_hash=config_hash(cfg), store_hash=content_hash(cfg.store), store_path=cfg.store,
                    flow_run_id=flow_run_id,
                    extra={T.TASK: cfg.task, "ecgssl.metric": cfg.primary_metric, **(extra_tags or {})})  # fmt: skip
    run_id = T.start_run(cfg.experiment, name, tags, parent_run_id)
    try:
        result = finetune(cfg, out_dir, run_id=run_id, progress=False)
    except BaseException:
        T.end_run(run_id, "FAILED")
        raise
    T.end_run(run_id, "FINISHED")
    return {**result, "run_id": run_id, "run_name": name}


class ThreadExecutor:
    """Cells in a thread pool (tests, library use): ``train(config, out_dir, parent, name, tags)`` per cell."""

    def __init__(self, max_workers: int = 1, train: Callable[..., dict[str, Any]] = train_cell):
        self.pool = ThreadPoolExecutor(max_workers=max_workers)
        self.train = train

    def submit(self, config, out_dir, parent_run_id, name, tags) -> Future:
        return self.pool.submit(self.train, config, out_dir, parent_run_id, name, tags)

    def as_completed(self, futures: list[Future]) -> Iterator[Future]:
        return futures_completed(futures)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------- preparation
class Plan:
    """What a validated spec resolves to before anything runs: base config, pretraining-run identities, hash."""

    def __init__(self, spec: AblationSpec, logger: logging.Logger | Any = None):
        from ecgmodel.config import apply_overrides, config_hash
        from ecgmodel.data.store import content_hash
        from ecgmodel.downstream.config import DEFAULT_SCHEDULE_GRID, FinetuneConfig, Schedule

        self.spec = spec
        self.log = logger or logging.getLogger("ecgssl.ablation")
        # pretraining runs by content: arm -> [(ref, digest)]
        self.pretrain: dict[str, list[tuple[str, str]]] = {}
        for arm, refs in spec.encoders.items():
            pairs = [(ref, encoder_digest(ref)) for ref in refs]
            digests = [d for _, d in pairs]
            if len(set(digests)) != len(digests):
                raise UserError(f"SSL arm {arm!r}: two of its pretraining runs are the same file content ({refs}); "
                                "K pretraining runs must differ", "ecgssl pretrain --set run.seed=<n> ...")  # fmt: skip
            self.pretrain[arm] = pairs
        grid = spec.schedule_grid if spec.schedule_grid is not None else [g.model_dump() for g in DEFAULT_SCHEDULE_GRID]
        try:
            self.grid = [Schedule.model_validate(g) for g in grid]
            self.base = apply_overrides(FinetuneConfig(task=spec.task, store=str(spec.store),
                                                       fractions=spec.fractions, arch_from=spec.architecture_ref()),
                                        spec.overrides)  # fmt: skip
        except (ValueError, KeyError) as e:
            raise UserError(f"ablation overrides / schedule grid: {e}", "ecgssl ablate --help (see --set)") from e
        self.metric = f"test_{self.base.primary_metric}"
        self.store_hash = content_hash(spec.store)
        identity = {
            "config": self.base.model_dump(mode="json", exclude={"store", "arch_from"}),
            "pretraining_runs": {a: [d for _, d in p] for a, p in self.pretrain.items()},
            "seeds": spec.seeds, "modes": spec.modes, "inits": spec.inits, "supervised": spec.supervised,
            "store_hash": self.store_hash, "grid": [g.model_dump() for g in self.grid],
        }  # fmt: skip
        self.hash = config_hash(identity)

    def arm_runs(self, arm: str) -> list[tuple[str, str]]:
        """(reference, digest) of the arm's pretraining runs; one pseudo run ("", "") for random / supervised."""
        return self.pretrain.get(arm, [("", "")])

    def init_ref(self, arm: str, ref: str) -> str:
        return arm if arm in (RANDOM, SUPERVISED) else ref

    def cell_config(self, cell: Cell, schedule) -> dict[str, Any]:
        from ecgmodel.downstream.ablation import cell_config

        return cell_config(self.base, self.init_ref(cell.arm, cell.pretrain_ref), cell.mode, cell.fraction,
                           cell.seed, schedule)  # fmt: skip

    def cells(self, role: str = CELL) -> list[Cell]:
        spec, out = self.spec, []
        for arm in spec.arms:
            runs = self.arm_runs(arm)
            for mode in spec.arm_modes(arm):
                if role == TUNING:  # same grid, same budget: the arm's first pretraining run, all labels, seed 0
                    if mode != "full":  # the linear probe is convex: its regularisation is chosen inside the cell
                        continue
                    ref, digest = runs[0]
                    out += [Cell(TUNING, arm, digest, mode, max(spec.fractions), 0, gi, ref, 0)
                            for gi in range(len(self.grid))]  # fmt: skip
                    continue
                for k, (ref, digest) in enumerate(runs):
                    out += [Cell(CELL, arm, digest, mode, f, s, -1, ref, k) for f in spec.fractions
                            for s in range(spec.seeds)]  # fmt: skip
        return out

    def overlap_note(self) -> str:
        """Refuse (UserError) an encoder that saw the task's val/test recordings unless allowed; else a note."""
        from ecgmodel.downstream.ablation import pretraining_overlap

        notes = []
        for arm, runs in self.pretrain.items():
            for ref, _ in runs:
                ov = pretraining_overlap(self.base, ref)
                if not ov["known"]:
                    notes.append(f"encoder {arm} ({ref}) does not record what it was pretrained on: its test records "
                                 "may have been seen.")  # fmt: skip
                elif ov["n_overlap"]:
                    msg = (f"encoder {arm} ({ref}) was pretrained on {ov['n_overlap']} of this task's validation/test "
                           f"recordings ({ov['by_split']}, e.g. {', '.join(ov['examples'])}): its downstream figures "
                           "would be inflated against the random init, which never saw them")  # fmt: skip
                    if not self.spec.allow_pretrain_overlap:
                        raise UserError(msg + "; pretrain on the train split (the default: data.splits=['train'])",
                                        "ecgssl ablate ... --allow-pretrain-overlap (the report then says so)")
                    notes.append("WARNING (allowed explicitly): " + msg + ".")
        for n in notes:
            self.log.warning(n)
        return " ".join(notes)


# ---------------------------------------------------------------------------------------------- the run
def run_ablation(
    spec: AblationSpec,
    executor: Executor,
    logger: Any = None,
    flow_run_id: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the ablation ``spec`` (validated) with ``executor``; returns the result dict of the flow.

    ``progress(label, finished, total)`` is called as cells finish (the flow updates a Prefect artifact)."""
    from ecgmodel.config import config_hash
    from ecgmodel.downstream.ablation import choose_schedule, schedule_edges
    from ecgmodel.downstream.config import Schedule
    from ecgmodel.tracking import run_tags

    log = logger or logging.getLogger("ecgssl.ablation")
    plan = Plan(spec, log)
    overlap = plan.overlap_note()
    experiment, metric, task = plan.base.experiment, plan.metric, spec.task

    parent = T.resumable_parent(experiment, plan.hash) if spec.resume else None
    done: dict[tuple, dict[str, Any]] = {}
    if parent:
        stale = T.kill_stale_children(experiment, parent)
        done = T.finished_cells(experiment, parent)
        log.info("resuming ablation %s: %d finished runs reused, %d left RUNNING marked KILLED", parent, len(done),
                 len(stale))  # fmt: skip
    else:
        tags = run_tags(config_hash=config_hash(plan.base), store_hash=plan.store_hash, store_path=spec.store,
                        flow_run_id=flow_run_id,
                        extra={T.ABLATION_HASH: plan.hash, T.ROLE: T.PARENT_ROLE, T.TASK: task,
                               T.ABLATION_METRIC: metric})  # fmt: skip
        parent = T.start_run(experiment, f"ablation-{task}", tags)
        T.log_params(parent, {
            "task": task, "store": spec.store, "encoders": json.dumps(spec.encoders),
            "pretraining_runs": json.dumps({a: [d for _, d in p] for a, p in plan.pretrain.items()}),
            "fractions": json.dumps(spec.fractions), "seeds": spec.seeds, "modes": json.dumps(spec.modes),
            "inits": json.dumps(spec.inits), "arms": json.dumps(spec.arms), "supervised": spec.supervised,
            "ablation_metric": metric, "overrides": json.dumps(spec.overrides), "max_concurrent": spec.max_concurrent,
            "schedule_grid": json.dumps([g.model_dump() for g in plan.grid]), "margin": spec.margin,
            "bootstrap_samples": spec.bootstrap_samples, "bootstrap_seed": spec.bootstrap_seed,
            "validation": plan.base.validation, "allow_pretrain_overlap": spec.allow_pretrain_overlap,
        })  # fmt: skip
    folder = Path(spec.out_dir or DEFAULT_BASE) / f"{task}-{plan.hash}-{parent[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    T.set_tags(parent, {T.REPORT_DIR: str(folder.resolve())} | ({T.PRETRAIN_OVERLAP: overlap} if overlap else {}))

    def run_cells(cells: list[Cell], label: str, schedules: dict[tuple[str, str], Schedule]) -> list[dict[str, Any]]:
        results = [done[c.key] for c in cells if c.key in done]
        todo = [c for c in cells if c.key not in done]
        log.info("%s %s: %d runs (%d to train), parent run %s", task, label, len(cells), len(todo), parent)
        if progress:
            progress(label, len(results), len(cells))
        running: dict[Any, Cell] = {}

        def schedule_of(cell: Cell) -> Schedule:
            return plan.grid[cell.grid] if cell.role == TUNING else schedules[(cell.arm, cell.mode)]

        def collect(future: Any, cell: Cell) -> None:
            try:
                res = future.result()
            except Exception as e:  # one failed cell must not lose the others: it is reported, metric NaN
                log.warning("%s %s failed: %r", label, cell.name, e)
                results.append({**cell.row(), metric: math.nan, "error": repr(e)[:500]})
            else:
                results.append({**res, **cell.row(), **schedule_of(cell).model_dump(),
                                "out_dir": str(Path(label) / cell.name)})  # fmt: skip
            if progress:
                progress(label, len(results), len(cells))

        for cell in todo:
            while len(running) >= spec.max_concurrent:  # bounded submit loop: wait for one to finish
                finished = next(iter(executor.as_completed(list(running))))
                collect(finished, running.pop(finished))
            cell_out = (folder / label / cell.name).resolve()
            fut = executor.submit(plan.cell_config(cell, schedule_of(cell)), str(cell_out), parent,
                                  cell.name, T.cell_tags(cell, plan.hash, str(cell_out)))  # fmt: skip
            running[fut] = cell
        for finished in executor.as_completed(list(running)):
            collect(finished, running.pop(finished))
        for r in results:  # resumed rows carry absolute out_dirs: keep them relative to the report folder
            p = Path(str(r.get("out_dir", "")))
            if p.is_absolute() and folder.resolve() in p.parents:
                r["out_dir"] = str(p.relative_to(folder.resolve()))
        return results

    try:
        keys = [(a, m) for a in spec.arms for m in spec.arm_modes(a)]
        chosen = {k: plan.grid[0] for k in keys}
        edges = {f"{a}/{m}": False for a, m in keys}
        tuned: list[dict[str, Any]] = []
        tuning = plan.cells(TUNING) if len(plan.grid) > 1 else []
        if tuning:
            tuned = run_cells(tuning, TUNING, chosen)
            errors = [r for r in tuned if r.get("error")]
            frame = pd.DataFrame(tuned)
            for k in ("lr", "encoder_lr_scale", "warmup_fraction"):
                frame[k] = [getattr(plan.grid[int(g)], k) for g in frame["grid"]]
            frame.drop(columns=[c for c in frame.columns if c.startswith("test_")]).to_csv(folder / TUNING_FILE,
                                                                                          index=False)  # fmt: skip
            if len(errors) == len(tuned):
                raise RuntimeError(f"all {len(tuned)} schedule-tuning runs failed (no cell was trained); first: "
                                   f"{errors[0]['name']}: {errors[0]['error']}")  # fmt: skip
            score = f"best_val_{plan.base.primary_metric}"
            picked = choose_schedule(frame, score)
            chosen.update({k: Schedule(**v) for k, v in picked.items()})
            edges.update({f"{a}/{m}": e for (a, m), e in
                          schedule_edges([g.model_dump() for g in plan.grid], picked).items()})  # fmt: skip
        schedules = {f"{a}/{m}": s.model_dump() for (a, m), s in chosen.items() if m == "full"}
        log.info("schedules chosen on validation: %s", schedules)
        if tuning:
            T.log_params(parent, {"chosen_schedules": json.dumps(schedules)})

        cells = plan.cells(CELL)
        results = run_cells(cells, "cells", chosen)
        frame = pd.DataFrame(results)
        for col in [*CELL_COLUMNS, metric]:
            if col not in frame.columns:
                frame[col] = math.nan if col == metric else ""
        frame = frame[[*CELL_COLUMNS, metric]].sort_values(["mode", "init", "pretrain_id", "fraction", "seed"])
        frame.to_csv(folder / CELLS_FILE, index=False)
        info = {
            "task": task, "metric": metric, "modes": spec.modes, "ssl_arms": spec.ssl_arms, "arms": spec.arms,
            "margin": spec.margin, "bootstrap_samples": spec.bootstrap_samples, "bootstrap_seed": spec.bootstrap_seed,
            "validation": plan.base.validation, "overlap_note": overlap, "schedules": schedules,
            "schedule_edges": edges, "ablation_hash": plan.hash, "parent_run_id": parent, "experiment": experiment,
            "pretraining_runs": {a: [{"ref": r, "id": d} for r, d in p] for a, p in plan.pretrain.items()},
            "spec": spec.model_dump(mode="json"), "store_hash": plan.store_hash,
            "budget": {f"optim.{k}": v for k, v in plan.base.optim.model_dump().items()
                       if k in ("epochs", "patience", "batch_size")},
        }  # fmt: skip
        (folder / SPEC_FILE).write_text(json.dumps(info, indent=1, default=str))
        report = build_report(frame, info, folder)
        T.log_parent_metrics(parent, report["metrics"])
        T.set_tags(parent, {
            T.ABLATION_METRIC: metric, T.HEADLINE_MODE: "full" if "full" in spec.modes else spec.modes[0],
            T.LABELS_TO_MATCH: report["labels_to_match_text"], T.NOTE: report["markdown"],
            T.WITHHELD: "; ".join(sorted({v for v in report["withheld"].values() if v})) or "none",
        })  # fmt: skip
        T.log_artifacts(parent, [str(folder / n) for n in (CELLS_FILE, SPEC_FILE)] + report["files"]
                        + ([str(folder / TUNING_FILE)] if (folder / TUNING_FILE).is_file() else []))  # fmt: skip
    except BaseException:
        T.end_run(parent, "FAILED")  # resumable: the next run with the same settings continues it
        raise
    failed = [r for r in results if r.get("error")]
    T.end_run(parent, "FINISHED" if not failed else "FAILED")
    return {
        **{k: v for k, v in report.items() if k not in ("metrics", "files")},
        "parent_run_id": parent,
        "experiment": experiment,
        "report_dir": str(folder),
        "cells_csv": str(folder / CELLS_FILE),
        "schedules": schedules,
        "schedule_edges": edges,
        "pretrain_overlap": overlap,
        "ablation_hash": plan.hash,
        "n_cells": len(cells),
        "n_failed": len(failed),
        "errors": [f"{r['name']}: {r['error']}" for r in failed],
    }


def first_failure(result: dict[str, Any]) -> str:
    return (result.get("errors") or [""])[0]


