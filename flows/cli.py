"""The ``ecgssl`` command line. Each subcommand mirrors a Prefect flow (or a read-only view of its output).

Subcommands are registered by the module that owns them (``register_cli(subparsers)``), so the flags of a
command live next to the flow they drive. Imports are lazy: ``ecgssl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (module, description) - every module here defines register_cli(subparsers).
COMMAND_MODULES = [
    "flows.ingest",     # ingest, inspect
    "flows.pretrain",   # pretrain
    "flows.finetune",   # finetune
    "flows.ablation",   # ablate
    "flows.report",     # report
    "flows.embed",      # embed
    "flows.labels",     # labels
    "flows.predict",    # predict
    "flows.export",     # export
    "flows.sweep",      # sweep
    "flows.cli_pipeline",  # pipeline
    "flows.ui",         # ui
]


# The project's defaults for the environment (the Makefile exports the same): no usage telemetry from Prefect,
# MLflow or the libraries that honour DO_NOT_TRACK, and a start-up timeout for Prefect's ephemeral API server that
# two loaded cores meet (Prefect's own is 20 s). A value the user set is kept.
ENV_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_env_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set every :data:`ENV_DEFAULTS` variable the environment does not set; returns the ones it set."""
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in ENV_DEFAULTS.items() if k not in env}
    env.update(applied)
    return applied


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
    apply_env_defaults()  # before prefect / mlflow are imported: they read these at import or first use
    from flows.ephemeral import tie_ephemeral_server_to_process

    tie_ephemeral_server_to_process()  # a kill -9 of this command also ends Prefect's temporary server
    parser = build_parser()
    args = parser.parse_args(argv)
    from ecgmodel.errors import UserError

    try:
        code = args.func(args)
    except UserError as exc:  # expected: one line naming the problem and the command that fixes it
        print(f"ecgssl {args.command}: error: {exc.line()}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
