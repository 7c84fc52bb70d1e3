"""The ``ecgssl`` command line. Each subcommand mirrors a Prefect flow (or a read-only view of its output).

Subcommands are registered by the module that owns them (``register_cli(subparsers)``), so the flags of a
command live next to the flow they drive. Imports are lazy: ``ecgssl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) - every module here defines register_cli(subparsers).
COMMAND_MODULES = [
    "flows.ingest",     # ingest, inspect
    "flows.pretrain",   # pretrain
    "flows.finetune",   # finetune
    "flows.ablation",   # ablate
    "flows.embed",      # embed
    "flows.pipeline",   # pipeline, ui
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecgssl",
        description="Self-supervised 12-lead ECG pipeline: ingest -> pretrain -> fine-tune / ablate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
