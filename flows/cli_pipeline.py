"""``ecgssl pipeline``: the pipeline flow from the command line (settings: defaults or --demo, --config, --set)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ecgmodel.pipeline_config import build_config


def ui_command() -> str:
    """``ecgssl ui`` as the user can type it now: bare when ``ecgssl`` is on PATH (venv active), else the path of
    this environment's executable (``.venv/bin/ecgssl ui`` after ``make demo``)."""
    import shutil
    import sys

    exe = Path(sys.executable).parent / "ecgssl"
    on_path = shutil.which("ecgssl")
    if on_path and Path(on_path).resolve() == exe.resolve():
        return "ecgssl ui"
    try:
        return f"{exe.relative_to(Path.cwd())} ui"
    except ValueError:
        return f"{exe} ui"


def check_pipeline_args(args: argparse.Namespace):
    """The config of ``args``, checked before Prefect starts (raises a UserError naming the fix)."""
    from ecgmodel import cli_checks
    from ecgmodel.config import config_hash
    from ecgmodel.data.store import MANIFEST, StoreError, content_hash
    from ecgmodel.errors import UserError
    from ecgmodel.train.out_lock import check_not_training
    from ecgmodel.train.pretrain import build_config as pretrain_config

    if args.config and not Path(args.config).is_file():
        raise UserError(f"--config {args.config}: no such file", "ecgssl pipeline --config FILE.yaml (or --demo)")
    cfg = cli_checks.check_overrides(lambda: build_config(args.demo, args.config, args.overrides),
                                     "invalid configuration", "keys are those of PipelineConfig (docs/deployments.md)"
                                     ", e.g. ecgssl pipeline --demo --set ablation.seeds=1")  # fmt: skip
    cli_checks.check_sources(cfg.ingest.sources, "ingest.sources:")
    cli_checks.check_store_writable(cfg.ingest.store)
    if cfg.ingest.sources and not (Path(cfg.ingest.store) / MANIFEST).is_file():  # with a store, an unreachable
        cli_checks.check_mirror(cfg.ingest.mirror, cfg.ingest.sources)  # mirror is reported by the run
    check_folders(cfg)
    cli_checks.check_writable_dir(cfg.pretrain.out, "pretrain.out", "pipeline")
    cli_checks.check_overrides(lambda: pretrain_config(cfg.pretrain.preset, cfg.pretrain.overrides),
                               "pretrain.overrides", "keys are those of PretrainConfig, e.g. ecgssl pipeline "
                               "--set 'pretrain.overrides={\"optim.max_steps\": 100}'")  # fmt: skip
    try:  # the pipeline trains into <out>/<store hash>-<config hash>: refuse now if another run trains there
        check_not_training(Path(cfg.pretrain.out) / f"{content_hash(cfg.ingest.store)}-{config_hash(cfg.pretrain, 8)}")
    except StoreError:
        pass  # no store yet: the pretraining task takes the lock (and refuses) once the ingest has run
    return cfg


def check_folders(cfg) -> None:
    """Each of ``ingest.folders`` holds records and its labels CSV reads (a UserError naming the fix)."""
    from ecgmodel.data.folder import read_labels, scan
    from ecgmodel.errors import UserError

    fix = "ecgssl pipeline --set 'ingest.folders=[{\"path\": \"DIR_WITH_HEA_OR_EDF_FILES\", \"labels\": \"FILE.csv\"}]'"
    for folder in cfg.ingest.folders:
        root = Path(folder.path)
        if not root.is_dir():
            raise UserError(f"ingest.folders: {root}: no such folder", fix)
        if not scan(root):
            raise UserError(f"ingest.folders: {root}: no .hea or .edf file below it", fix)
        if folder.labels:
            if not Path(folder.labels).is_file():
                raise UserError(f"ingest.folders: labels {folder.labels} of {root}: no such file", fix)
            try:
                read_labels(folder.labels)
            except UserError as e:
                raise UserError(f"ingest.folders: {e.problem}", fix) from None


def _cmd_pipeline(args: argparse.Namespace) -> int:
    cfg = check_pipeline_args(args)
    start = time.perf_counter()
    from ecgmodel.errors import UserError
    from flows.pipeline import PipelineFailed, pipeline_flow

    state = pipeline_flow(cfg, refresh=args.refresh, return_state=True)
    elapsed = time.perf_counter() - start
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, PipelineFailed):  # finished with a report, but some stage failed
        result = outcome.result
    elif isinstance(outcome, UserError):  # expected (e.g. a folder another run trains into): one line
        raise outcome
    elif isinstance(outcome, BaseException):
        print(f"ecgssl pipeline: failed after {elapsed / 60:.1f} min: {outcome}", file=sys.stderr)
        return 1
    else:
        result = outcome
    print()
    print(result["summary_markdown"])
    print(f"Finished in {elapsed / 60:.1f} min.")
    uri = result["tracking_uri"]
    if uri.startswith(("http://", "https://")):
        print(f"Browse the runs: {uri}")
    else:
        print(f"Browse the runs: {ui_command()}   (MLflow UI on http://127.0.0.1:5000 over {uri})")
    if state.is_failed():
        print(f"\necgssl pipeline: FAILED: {state.message}", file=sys.stderr)
        return 1
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run ingest -> pretrain -> ablations (both tasks) as one Prefect flow",
        description="Run the whole pipeline. Settings: defaults (or --demo), then --config, then --set.",
    )
    p.add_argument("--demo", action="store_true", help="small settings on the bundled sample/physionet")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file with a (partial) PipelineConfig")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted-key override, e.g. --set ablation.seeds=2 (repeatable)")
    p.add_argument("--refresh", action="store_true",
                   help="recompute every stage: ignore cached stage results and finished checkpoints (ingest "
                   "re-verifies the mirror; records already committed to the store are kept)")
    p.set_defaults(func=_cmd_pipeline)
