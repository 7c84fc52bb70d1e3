"""``ecgssl sweep``: pretraining length chosen on validation (``ecgmodel.train.sweep``; no Prefect flow).

``ecgssl sweep --store STORE [--preset cpu] [--seeds 0 1] [--steps 100 200 400 800 1200 1600]
[--schedule constant|cosine] [--set key=value ...] --out DIR [--markdown PAGE.md]``: pretrains once per seed to
the longest point, scores the checkpoint at every point (ptbxl-superclass probe on the validation split at 100 %
and 10 % of the labels, pretext losses on held-out windows), writes ``DIR/sweep.csv`` and ``DIR/sweep.png``,
logs an MLflow parent run with one child per seed, and prints the length the rule chooses. ``--markdown`` writes
the results page generated from the table, with the plot copied beside it (``--compare LABEL=DIR`` lists the rows
of other finished sweeps beside it). Re-running resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path


def _handler(args: argparse.Namespace) -> int:
    import pandas as pd

    from ecgmodel.errors import UserError
    from ecgmodel.train.sweep import PLOT_FILE, TABLE_FILE, SweepConfig, markdown_report, run_sweep

    if not Path(args.store).exists():
        raise UserError(f"--store {args.store}: no such store", f"ecgssl ingest --source ptb-xl --store {args.store}")
    try:
        cfg = SweepConfig(preset=args.preset, overrides=args.set or [], seeds=args.seeds, steps=args.steps,
                          schedule=args.schedule, threads=args.threads, mlflow=not args.no_mlflow)  # fmt: skip
    except ValueError as exc:
        raise UserError(f"ecgssl sweep: {str(exc).splitlines()[0]} ({exc})", "ecgssl sweep --help") from None
    compare = {}
    for spec in args.compare or []:
        label, _, folder = spec.rpartition("=")
        table = Path(folder) / TABLE_FILE
        if not folder or not table.is_file():
            raise UserError(f"--compare {spec}: no {TABLE_FILE} in {folder!r} (rule: LABEL=DIR of a finished "
                            "sweep)", f"ecgssl sweep --out {folder or 'DIR'} ...")  # fmt: skip
        compare[label] = pd.read_csv(table)
    res = run_sweep(cfg, args.store, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.markdown:
        md = Path(args.markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        png = md.with_suffix(".png")
        shutil.copyfile(Path(args.out) / PLOT_FILE, png)
        command = "ecgssl sweep " + shlex.join(args.argv)
        md.write_text(markdown_report(res["table"], cfg, png.name, command, compare))
    print(json.dumps({"chosen_steps": res["chosen"], "rule": res["rule"], "table": res["table_path"],
                      "plot": res["plot"], "parent_run_id": res.get("parent_run_id")}, indent=2))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="pretraining length chosen on validation (probe + pretext losses per checkpoint)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--preset", choices=["smoke", "cpu", "base"], default="cpu", help="pretraining preset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pretraining seeds (one run each)")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 100, 200, 400, 800, 1200, 1600],
                   help="sweep points (0 = the initialisation)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="constant: warm-up then the peak rate (each checkpoint a complete run); cosine: the "
                   "preset's cosine over the longest point (earlier checkpoints truncated)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="pretraining config override (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", required=True, help="output folder (resumed when it holds a sweep)")
    p.add_argument("--markdown", default=None, metavar="PAGE.md", help="write the results page (+ PAGE.png)")
    p.add_argument("--compare", action="append", metavar="LABEL=DIR",
                   help="with --markdown: list the rows of another finished sweep (e.g. a complete cosine run at one "
                   "length) beside this sweep's checkpoints (repeatable)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=lambda a: _handler(_with_argv(a)))


def _with_argv(args: argparse.Namespace) -> argparse.Namespace:
    args.argv = sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "sweep" else []
    return args
