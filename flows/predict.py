"""Prediction flow (``ecgssl predict``): a trained classifier on your own ECG files, one row per record.

``ecgssl predict --model URI --input PATH [PATH ...] [--out FILE.csv|FILE.parquet]``. ``--model``: a registered
classifier (``models:/ecgssl-arrhythmia27@champion``, ``models:/ecgssl-<task>/N``), ``runs:/<id>/classifier``, a
downloaded MLflow model folder or a fine-tuned ``model.pt``. ``--input``: WFDB headers (``.hea``), folders of
WFDB/EDF files (searched recursively), EDF files, ecgssl stores. Records are harmonised as ingest does (leads by
name, units, resampling to the model's rate, 10 s windows, missing leads marked) and scored with evaluation's crop
aggregation. Columns: record, input, n_windows, prob_<class>, label_<class>, labels, warnings, error (a record
that cannot be used gets its one-line reason there; the others are still predicted). Without ``--out`` the table
is printed as CSV. docs/use.md shows the same model loaded in Python and served over HTTP.
"""

from __future__ import annotations

import argparse
import json
import sys

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


@task(name="predict", cache_policy=NO_CACHE)
def predict_task(model: str, inputs: list[str], out: str | None, batch_size: int, device: str) -> dict:
    from ecgmodel.predict import predict_to_file

    table, info = predict_to_file(model, inputs, out, batch_size, device)
    if not out:
        info["table_csv"] = table.to_csv(index=False)
    return info


@flow(name="predict", log_prints=True)
def predict_flow(model: str, inputs: list[str], out: str | None = None, batch_size: int = 64,
                 device: str = "cpu") -> dict:
    """Predict every record of ``inputs`` with ``model``; returns a summary (records, unusable, seconds)."""
    info = predict_task(model, inputs, out, batch_size, device)
    print(f"{info['predicted']} of {info['records']} records predicted ({info['unusable']} unusable) "
          f"-> {info['out'] or 'stdout'} ({info['seconds']} s)")
    return info


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel.errors import UserError
    from ecgmodel.predict import check_out, load_model
    from ecgmodel.serving.inputs import expand_inputs

    # expected failures first, before Prefect starts: a missing input, an unknown --out format, a foreign model
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1 (crops per forward pass)",
                        "ecgssl predict ... --batch-size 64")  # fmt: skip
    expand_inputs(args.input)
    if args.out:
        check_out(args.out)
    if load_model(args.model).kind != "classifier":
        raise UserError(f"--model {args.model} is an encoder: it gives embeddings, not predictions",
                        f"ecgssl embed --encoder {args.model} --input ... --out FILE.parquet")  # fmt: skip
    info = predict_flow(model=args.model, inputs=list(args.input), out=args.out, batch_size=args.batch_size,
                        device=args.device)  # fmt: skip
    table = info.pop("table_csv", None)
    if table is not None:
        sys.stdout.write(table)
    print(json.dumps(info, indent=2), file=sys.stderr if table is not None else sys.stdout)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict your own ECG files (WFDB, EDF, folders, stores) with a trained model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/ecgssl-<task>@champion, models:/ecgssl-<task>/N, runs:/..., a model folder or model.pt")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="WFDB .hea files, folders of WFDB/EDF files, .edf files, ecgssl stores")
    p.add_argument("--out", default=None, metavar="FILE.csv|FILE.parquet", help="output table (default: stdout)")
    p.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.set_defaults(func=_handler)
