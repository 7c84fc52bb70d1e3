"""``ecgssl export --model URI --out FILE.pt``: a trained classifier or encoder as a TorchScript file.

The file computes the network on standardised crops (``forward(x, lead_present)``, see
:mod:`ecgmodel.serving.export`) and carries the preprocessing contract (``contract.json`` inside the file), for
runtimes without Python packages of this project (C++ ``torch::jit::load``, a mobile or server runtime). For whole
records, ``ecgssl predict`` and the MLflow model (docs/use.md) do windowing, crops and aggregation for you.
"""

from __future__ import annotations

import argparse
import json


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel.errors import UserError
    from ecgmodel.predict import load_model
    from ecgmodel.serving.export import export_torchscript

    if not str(args.out).endswith(".pt"):
        raise UserError(f"--out {args.out}: a TorchScript file ends in .pt", "ecgssl export --model URI --out model.pt")
    m = load_model(args.model)
    path = export_torchscript(m.model, m.contract, m.kind, args.out)
    print(json.dumps({"out": str(path), "kind": m.kind, "input_samples": m.contract.input_samples,
                      "classes": m.contract.class_names() or None}, indent=2))  # fmt: skip
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a trained classifier or encoder as a TorchScript file (network on crops)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/<name>/<version>, models:/<name>@champion, runs:/..., a model folder or model.pt")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="TorchScript file to write")
    p.set_defaults(func=_handler)
