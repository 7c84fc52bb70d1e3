"""``ecgssl labels``: a task's labels, one row per canonical record of a store, as Parquet or CSV.

``ecgssl labels --task arrhythmia27|ptbxl-superclass|localization --store STORE --out FILE.parquet|FILE.csv
[--set key=value]``. Rows and label columns are what fine-tuning uses (same rules, copies once, the split from
the store's persisted assignment); ``key`` (``source/record``) joins them to ``ecgssl embed``'s output. The class
definitions (SNOMED code, abbreviation, name, PTB-XL statements) go to ``FILE.classes.csv`` beside it. ``--set``
takes fine-tuning keys, e.g. ``--set split.ptbxl_metadata=PATH`` (PTB-XL's ptbxl_database.csv, for the heart axis
of PTB-XL records when the store's ingest location is gone) or the split settings of a fine-tuning run. Columns:
see ``ecgmodel/downstream/labels_table.py``.
"""

from __future__ import annotations

import argparse
import json


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel.downstream.labels_table import check_out, labels_table, write_labels_table

    check_out(args.out, args.task)
    table, definitions = labels_table(args.task, args.store, args.set)
    print(json.dumps(write_labels_table(table, definitions, args.out, args.task), indent=2))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="a task's labels per canonical record of a store, with its split (Parquet/CSV)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", required=True, metavar="TASK", help="arrhythmia27, ptbxl-superclass or localization")
    p.add_argument("--store", required=True, help="path of the ecgssl store")
    p.add_argument("--out", required=True, metavar="FILE.parquet|FILE.csv", help="output table")
    p.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE",
                   help="fine-tuning config keys (split.*, localization_target, min_class_records)")
    p.set_defaults(func=_handler)
