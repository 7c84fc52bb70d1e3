"""``ecgssl report DIR``: re-derive every number of an ablation report folder from its files alone.

The folder (``<out>/<task>-<hash>-<parent run id>``, written by ``ecgssl ablate``) holds ``spec.json`` (the settings
and the bootstrap seed), ``cells.csv``, ``tuning.csv`` and every cell's ``test_predictions.npz``; this command runs
the report of ``ecgmodel.ablation.report`` on them again, compares the recomputed metrics with the ones the run
logged (``metrics.json``, the parent MLflow run's metrics), and can write the headline as a results page.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from prefect import flow

from tasks.report import rederive_task


@flow(name="ablation-report")
def report_flow(report_dir: str, out_dir: str | None = None) -> dict:
    """Re-derive the report in ``report_dir`` (recomputed files under ``out_dir``, default <dir>/rederived)."""
    res = rederive_task(report_dir, out_dir)
    return {k: v for k, v in res.items() if k != "markdown"} | {"markdown": res["markdown"]}


def compare(logged: dict[str, float | None], derived: dict[str, float], tol: float = 1e-9) -> list[str]:
    """Metrics whose recomputed value differs from the logged one (NaN/None equal each other)."""
    bad = []
    for key in sorted(set(logged) | set(derived)):
        a, b = logged.get(key), derived.get(key)
        a = math.nan if a is None else float(a)
        b = math.nan if b is None else float(b)
        if not (math.isnan(a) and math.isnan(b)) and not abs(a - b) <= tol:
            bad.append(f"{key}: logged {a} re-derived {b}")
    return bad


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel.ablation.report import METRICS_FILE, rederive

    res = rederive(args.dir, args.out, plot=not args.no_plot)
    markdown = res["markdown"]
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown + "\n")
    print(markdown)
    logged_file = Path(args.dir) / METRICS_FILE
    if logged_file.is_file():
        bad = compare(json.loads(logged_file.read_text()), res["metrics"])
        print(f"\nre-derived {len(res['metrics'])} metrics: "
              + ("all equal to the logged ones" if not bad else f"{len(bad)} differ: " + "; ".join(bad[:5])))
        return 1 if bad else 0
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="re-derive an ablation report folder's numbers from its files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("dir", help="the ablation's report folder (printed by ecgssl ablate as report_dir)")
    p.add_argument("--markdown", default=None, metavar="OUT", help="also write the headline markdown there "
                   "(e.g. docs/results/<name>.md)")  # fmt: skip
    p.add_argument("--out", default=None, help="folder for the recomputed files (default <dir>/rederived)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    p.set_defaults(func=_handler)
