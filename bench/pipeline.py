"""Benchmark: the demo pipeline (`ecgssl pipeline --demo`) end to end, then again (every stage cached).

    .venv/bin/python bench/pipeline.py [--keep DIR]

Runs in a fresh working directory with its own PREFECT_HOME and SQLite MLflow store (nothing of yours is touched),
and prints one JSON object: wall time of the whole first run (including the temporary Prefect server's start),
per-stage seconds, the re-run's time, and the store size. Target: first run < 10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ecgssl-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", PREFECT_HOME=str(work / ".prefect"),
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", DASK_TEMPORARY_DIRECTORY=str(work / "dask"),
    )
    os.chdir(work)
    t0 = time.perf_counter()
    from flows.pipeline import PipelineConfig, pipeline_flow  # imports count: the CLI pays them too

    cfg = PipelineConfig.demo()
    first = pipeline_flow(cfg)
    first_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    second = pipeline_flow(cfg)
    second_s = time.perf_counter() - t1
    print(json.dumps({
        "benchmark": "pipeline-demo",
        "cpu_count": os.cpu_count(),
        "first_run_s": round(first_s, 1),
        "first_run_stages_s": first["seconds"],
        "rerun_s": round(second_s, 1),
        "rerun_stages_s": second["seconds"],
        "rerun_reused_pretraining": second["pretrain_run_id"] == first["pretrain_run_id"],
        "windows": first["n_windows"],
        "ablation_cells": {k: v.get("n_cells") for k, v in first["ablations"].items()},
        "labels_to_match": {k: v.get("labels_to_match") for k, v in first["ablations"].items()},
        "workdir": str(work),
    }, default=str))


if __name__ == "__main__":
    main()
