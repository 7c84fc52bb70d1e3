"""``ecgssl pipeline``: the pipeline flow from the command line (settings: defaults or --demo, --config, --set)."""

from __future__ import annotations

import argparse
import sys
import time

from ecgmodel.pipeline_config import build_config


def _cmd_pipeline(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args.demo, args.config, args.overrides)
    except (KeyError, ValueError, OSError) as e:
        print(f"ecgssl pipeline: invalid configuration: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    from flows.pipeline import PipelineFailed, pipeline_flow

    state = pipeline_flow(cfg, return_state=True)
    elapsed = time.perf_counter() - start
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, PipelineFailed):  # finished with a report, but some stage failed
        result = outcome.result
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
        print(f"Browse the runs: ecgssl ui   (MLflow UI on http://127.0.0.1:5000 over {uri})")
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
    p.set_defaults(func=_cmd_pipeline)
