"""The product as deployed: a real Prefect server and MLflow server on 127.0.0.1, the work pools from
infra/work-pools, `prefect deploy --all` of prefect.yaml, an ablation triggered with parameters, a process
worker (`--run-once`) running it from the checkout named by ECGSSL_HOME, and the results read back through
MLflow's REST API and Prefect's REST API. Every process the test starts is stopped, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMPLE = REPO / "sample" / "physionet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A background process in its own process group, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO):
        self.name, self.log = name, log_dir / f"{name}.log"
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not healthy at {url} after {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        # SIGINT first (prefect/uvicorn shut down cleanly), then SIGTERM, then SIGKILL; whole group.
        for sig, grace in ((signal.SIGINT, 3), (signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        self._fh.close()


def run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prefect server + MLflow server (own homes, SQLite, file artifacts), a small store and an encoder."""
    tmp = tmp_path_factory.mktemp("server")
    logs = tmp / "logs"
    logs.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    base.update(DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                DASK_TEMPORARY_DIRECTORY=str(tmp / "dask"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    p_port, m_port = free_port(), free_port()
    services: list[Service] = []
    try:
        server_env = dict(base, PREFECT_HOME=str(tmp / "prefect-server"))
        services.append(Service("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                   "--port", str(p_port)], server_env, logs))
        services.append(Service("mlflow-server", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(m_port),
            "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination", (tmp / "mlartifacts").as_uri(), "--workers", "1",
        ], base, logs))
        # `ecgssl ui` (MLflow UI over a local SQLite store), started alongside so the start-ups overlap
        ui_port = free_port()
        ui_env = dict(base, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'ui.db'}")
        services.append(Service("ui", [str(BIN / "ecgssl"), "ui", "--port", str(ui_port)], ui_env, logs, cwd=tmp))
        client_env = dict(base, PREFECT_HOME=str(tmp / "prefect-client"),
                          PREFECT_API_URL=f"http://127.0.0.1:{p_port}/api",
                          MLFLOW_TRACKING_URI=f"http://127.0.0.1:{m_port}", ECGSSL_HOME=str(REPO))

        # While the servers start: a small real store (PTB-XL part of the bundled sample) and an encoder.
        store, encoder_dir = tmp / "store.zarr", tmp / "pretrain"
        build = (
            "from ecgmodel.data.download import download_source\n"
            "from ecgmodel.data.convert import convert_sources\n"
            "from ecgmodel.data.ingest_config import IngestConfig\n"
            f"cfg = IngestConfig(sources=['ptb-xl'], mirror={str(SAMPLE)!r}, store={str(store)!r},"
            f" raw_dir={str(tmp / 'raw')!r}, workers=0, progress=False)\n"
            "res = download_source(cfg.source('ptb-xl'), cfg.mirror, cfg.raw_dir, progress=False).summary()\n"
            "convert_sources(cfg, [dict(res, slug='ptb-xl', mirror=cfg.mirror)], client=None)\n"
        )
        run([sys.executable, "-c", build], dict(base, PREFECT_HOME=str(tmp / "p0")), timeout=120)
        pretrain = Service("pretrain", [
            sys.executable, "-m", "ecgmodel.train.pretrain", "--store", str(store), "--preset", "smoke",
            "--out", str(encoder_dir), "--set", "optim.max_steps=4", "--set", "data.batch_size=8",
            "--set", "run.mlflow=false", "--set", "run.progress=false",
        ], base, logs)
        services.append(pretrain)

        services[0].wait_http(f"http://127.0.0.1:{p_port}/api/health", timeout=120)
        services[1].wait_http(f"http://127.0.0.1:{m_port}/health", timeout=120)
        assert pretrain.proc.wait(timeout=180) == 0, pretrain.tail()
        encoder = encoder_dir / "encoder.pt"
        assert encoder.is_file(), pretrain.tail()
        yield {"ui": services[2], "ui_port": ui_port, "env": client_env, "prefect": f"http://127.0.0.1:{p_port}/api", "mlflow": f"http://127.0.0.1:{m_port}",
               "store": str(store), "encoder": str(encoder), "tmp": tmp, "logs": logs, "services": services}
    finally:
        for svc in reversed(services):
            svc.stop()


def test_deploy_trigger_ablation_and_read_results_over_rest(stack):
    env, tmp = stack["env"], stack["tmp"]
    prefect = str(BIN / "prefect")

    # work pools from the committed templates (the script is idempotent: run it twice)
    run(["bash", "infra/work-pools/create-pools.sh"], env, timeout=120)
    out = run(["bash", "infra/work-pools/create-pools.sh"], env, timeout=120)
    assert "cpu" in out and "gpu" in out
    pools = requests.post(f"{stack['prefect']}/work_pools/filter", json={}, timeout=10).json()
    assert {p["name"]: p["type"] for p in pools if p["name"] in ("cpu", "gpu")} == {"cpu": "process", "gpu": "process"}

    # every deployment of prefect.yaml, as a user would from the repository root. ECGSSL_HOME is left unset
    # here: `prefect deploy` would bake its value into the pull step; unset, each worker resolves its own.
    deploy_env = {k: v for k, v in env.items() if k != "ECGSSL_HOME"}
    out = run([prefect, "--no-prompt", "deploy", "--all"], deploy_env, timeout=300)
    deployments = requests.post(f"{stack['prefect']}/deployments/filter", json={}, timeout=10).json()
    assert {d["name"] for d in deployments} >= {"pipeline", "ingest", "pretrain", "pretrain-ddp", "ablation"}, out
    by_name = {d["name"]: d for d in deployments}
    assert by_name["pipeline"]["schedules"] and by_name["ingest"]["schedules"]
    for name in ("pipeline", "ingest"):  # no scheduled tick may reach the worker below (it has no internet)
        resp = requests.post(f"{stack['prefect']}/deployments/{by_name[name]['id']}/pause_deployment", timeout=10)
        assert resp.status_code < 300, resp.text
    assert by_name["ablation"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": "{{ $ECGSSL_HOME }}"
    }

    # trigger the ablation with small parameters
    params = {
        "task": "localization", "store": stack["store"], "encoder": stack["encoder"], "fractions": [1.0],
        "seeds": 1, "modes": ["full"], "inits": ["random", "ssl"], "max_concurrent": 1,
        "overrides": {"optim.epochs": 1, "min_class_records": 2}, "out_dir": str(tmp / "ablation"),
    }
    cmd = [prefect, "deployment", "run", "ablation/ablation"]
    for key, value in params.items():
        cmd += ["--param", f"{key}={json.dumps(value)}"]
    out = run(cmd, env, timeout=120)
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)

    # one worker pass on the cpu pool runs it, from the checkout in ECGSSL_HOME (not the worker's cwd)
    worker_cwd = tmp / "elsewhere"
    worker_cwd.mkdir()
    worker = subprocess.run([prefect, "worker", "start", "--pool", "cpu", "--type", "process", "--run-once"],
                            env=env, cwd=worker_cwd, capture_output=True, text=True, timeout=420)
    (stack["logs"] / "worker.log").write_text(worker.stdout + worker.stderr)
    state = None
    for _ in range(120):  # the run may still be finalising when the worker returns
        state = requests.get(f"{stack['prefect']}/flow_runs/{flow_run_id}", timeout=10).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    assert state["type"] == "COMPLETED", f"{state}\n{(worker.stdout + worker.stderr)[-6000:]}"

    # results, read through MLflow's REST API only
    api = f"{stack['mlflow']}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "ecgssl-localization"},
                       timeout=10).json()["experiment"]
    search = lambda flt: requests.post(f"{api}/runs/search", json={  # noqa: E731
        "experiment_ids": [exp["experiment_id"]], "filter": flt, "max_results": 100}, timeout=10).json().get("runs", [])
    runs = search(f"tags.`prefect.flow_run_id` = '{flow_run_id}'")  # parent and children carry the run id
    parents = [r for r in runs if "mlflow.parentRunId" not in {t["key"] for t in r["data"]["tags"]}]
    assert len(parents) == 1 and len(runs) == 3, runs
    parent = parents[0]
    parent_id = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert tags["ecgssl.store_hash"] and tags["ecgssl.config_hash"] and tags["ecgssl.git_commit"]
    assert tags["ecgssl.ablation_metric"] == "test_accuracy"
    parent_metrics = {m["key"] for m in parent["data"].get("metrics", [])}
    assert "gain_at_1" in parent_metrics or any(k.startswith("gain_") for k in parent_metrics), parent_metrics

    children = search(f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(children) == 2
    inits = set()
    for child in children:
        params_ = {p["key"]: p["value"] for p in child["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in child["data"].get("metrics", [])}
        assert child["info"]["status"] == "FINISHED"
        assert params_["mode"] == "full" and float(params_["fraction"]) == 1.0
        assert "test_accuracy" in metrics and 0.0 <= metrics["test_accuracy"] <= 1.0
        inits.add({t["key"]: t["value"] for t in child["data"]["tags"]}["ecgssl.cell_init"])
    assert inits == {"random", "ssl"}

    files = requests.get(f"{api}/artifacts/list", params={"run_id": parent_id}, timeout=10).json()["files"]
    names = {f["path"] for f in files}
    assert {"label_efficiency.png", "summary.csv"} <= names, names
    png = requests.get(f"{stack['mlflow']}/get-artifact", params={"path": "label_efficiency.png",
                                                                   "run_uuid": parent_id}, timeout=30)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"



def test_ecgssl_ui_serves_the_local_store(stack):
    """`ecgssl ui` starts the MLflow UI on 127.0.0.1 over the SQLite store in force and says where."""
    ui, port = stack["ui"], stack["ui_port"]
    ui.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
    said = ui.log.read_text(errors="replace")
    assert f"MLflow UI on http://127.0.0.1:{port}" in said and "ui.db" in said
    exps = requests.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                        params={"max_results": 10}, timeout=10).json()
    assert [e["name"] for e in exps["experiments"]] == ["Default"]  # its own store, not the server's
