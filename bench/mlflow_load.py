"""Concurrent metric writers: the MLflow tracking server of the local stack (PostgreSQL behind it) against a
SQLite store, in the same run.

    infra/local/stack.sh up
    python bench/mlflow_load.py --writers 20 --steps 50 --metrics 4 > mlflow_load.json

Each writer is a process (as a fine-tuning cell of an ablation with ``max_concurrent`` cells is): it creates its
run, waits at a barrier until every writer is ready, then logs ``--metrics`` metrics at every one of ``--steps``
steps (one ``log_batch`` call per step, as ``mlflow.log_metrics`` does) and ends its run. Afterwards every run's
metric history is read back: a metric value missing or present twice counts as lost or duplicated. Errors are
counted, and those that say "database is locked" separately. Prints JSON: per backend the wall time from the
barrier to the last writer, metric values and calls per second, latency per call, errors, lost and duplicated.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _stack_env(state_dir: str | None) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("ecgssl_local_stack", REPO / "infra" / "local" / "stack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stack = mod.Stack(state_dir)
    if stack.process("mlflow-server") is None:
        sys.exit(f"mlflow_load: no MLflow server of the local stack runs in {stack.dir}: start it with "
                 "`infra/local/stack.sh up` (or pass --stack-dir)")  # fmt: skip
    env = stack.client_env()
    return {k: env[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}


def _writer(i: int, uri: str, env: dict[str, str], exp_id: str, steps: int, n_metrics: int, barrier, out) -> None:
    os.environ.update(env)
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    latencies, errors = [], []
    run_id = None
    try:
        run_id = client.create_run(exp_id, run_name=f"writer-{i}").info.run_id
    except Exception as e:  # noqa: BLE001 - counted, reported
        errors.append(f"create_run: {type(e).__name__}: {e}"[:300])
    barrier.wait()
    t0 = time.perf_counter()
    if run_id is not None:
        for step in range(steps):
            ts = int(time.time() * 1000)
            metrics = [Metric(f"m{k}", float(step * n_metrics + k), ts, step) for k in range(n_metrics)]
            t = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=metrics, synchronous=True)
            except Exception as e:  # noqa: BLE001 - counted, reported
                errors.append(f"log_batch step {step}: {type(e).__name__}: {e}"[:300])
            latencies.append(time.perf_counter() - t)
        try:
            client.set_terminated(run_id)
        except Exception as e:  # noqa: BLE001
            errors.append(f"set_terminated: {type(e).__name__}: {e}"[:300])
    out.put({"writer": i, "run_id": run_id, "start": t0, "end": time.perf_counter(), "latencies": latencies,
             "errors": errors})  # fmt: skip


def run_backend(name: str, uri: str, env: dict[str, str], writers: int, steps: int, n_metrics: int) -> dict:
    os.environ.update(env)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(f"load-{name}-{int(time.time())}")  # also creates a new SQLite schema
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(i, uri, env, exp_id, steps, n_metrics, barrier, out))
             for i in range(writers)]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    start, end = min(r["start"] for r in results), max(r["end"] for r in results)
    wall = end - start
    errors = [e for r in results for e in r["errors"]]
    lost = duplicated = 0
    for r in results:  # read every metric back
        if r["run_id"] is None:
            lost += steps * n_metrics
            continue
        for k in range(n_metrics):
            hist = client.get_metric_history(r["run_id"], f"m{k}")
            got = sorted(m.step for m in hist)
            lost += len(set(range(steps)) - set(got))
            duplicated += len(got) - len(set(got))
    lat = sorted(x for r in results for x in r["latencies"])
    calls = len(lat)
    return {
        "backend": name, "uri": uri.split("@")[-1], "writers": writers, "steps": steps, "metrics_per_step": n_metrics,
        "wall_s": round(wall, 2), "calls": calls, "metric_values": calls * n_metrics,
        "calls_per_s": round(calls / wall, 1), "metric_values_per_s": round(calls * n_metrics / wall, 1),
        "latency_ms": {"p50": round(1000 * statistics.median(lat), 1), "p95": round(1000 * lat[int(0.95 * (calls - 1))], 1),
                       "max": round(1000 * lat[-1], 1)} if lat else None,
        "errors": len(errors), "database_is_locked": sum("database is locked" in e for e in errors),
        "first_errors": errors[:3], "lost": lost, "duplicated": duplicated,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--metrics", type=int, default=4, help="metrics logged at every step")
    ap.add_argument("--stack-dir", default=None, help="the local stack's state folder (default $ECGSSL_STACK_DIR or .stack)")
    ap.add_argument("--backends", nargs="+", default=["server", "sqlite"], choices=["server", "sqlite"])
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    out = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "results": []}
    with tempfile.TemporaryDirectory(prefix="mlflow-load-") as tmp:
        for backend in args.backends:
            if backend == "server":
                env = _stack_env(args.stack_dir)
                uri = env["MLFLOW_TRACKING_URI"]
            else:
                env, uri = {}, f"sqlite:///{Path(tmp) / 'load.db'}"
            out["results"].append(run_backend(backend, uri, env, args.writers, args.steps, args.metrics))
            print(json.dumps(out["results"][-1]), file=sys.stderr)
    by = {r["backend"]: r for r in out["results"]}
    if {"server", "sqlite"} <= set(by):
        out["server_vs_sqlite_throughput"] = round(by["server"]["metric_values_per_s"] / by["sqlite"]["metric_values_per_s"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
