"""The product as deployed: a real Prefect server and MLflow server on 127.0.0.1, the work pools from
infra/work-pools, `prefect deploy --all` of prefect.yaml (schedules paused: nothing starts), the demo-sized
pipeline deployment and ablations triggered with parameters, process workers (`--run-once`) running them from the
checkout named by ECGSSL_HOME, and the results read back through MLflow's REST API and Prefect's REST API
(artifacts, progress artifacts, final states). Every process the test starts is stopped, also on failure.
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

import psutil
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


# one fine-tuning schedule: no per-init schedule tuning runs (each cell is then exactly one MLflow child run)
ONE_SCHEDULE = {"lr": 1e-3, "encoder_lr_scale": 1.0, "warmup_fraction": 0.1}
DEPLOYMENTS = {"pipeline", "pipeline-demo", "ingest", "pretrain", "pretrain-ddp", "ablation"}


@pytest.fixture(scope="module")
def deployed(stack):
    """Work pools and every deployment of prefect.yaml on the server, as a user creates them."""
    env = stack["env"]
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
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) >= DEPLOYMENTS, out
    return by_name


def trigger(env: dict[str, str], deployment: str, params: dict) -> str:
    cmd = [str(BIN / "prefect"), "deployment", "run", deployment]
    for key, value in params.items():
        cmd += ["--param", f"{key}={json.dumps(value)}"]
    out = run(cmd, env, timeout=120)
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)


def work_once(stack, pool: str, log_name: str, timeout: float = 420) -> str:
    """One worker pass on ``pool``, started outside the checkout (flows run in ECGSSL_HOME)."""
    worker_cwd = stack["tmp"] / "elsewhere"
    worker_cwd.mkdir(exist_ok=True)
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                             "--run-once"], env=stack["env"], cwd=worker_cwd, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    out = worker.stdout + worker.stderr
    (stack["logs"] / f"{log_name}.log").write_text(out)
    return out


def final_state(stack, flow_run_id: str) -> dict:
    state = None
    for _ in range(120):  # the run may still be finalising when the worker returns
        state = requests.get(f"{stack['prefect']}/flow_runs/{flow_run_id}", timeout=10).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    return state


def artifacts(stack, **flt) -> list[dict]:
    body = {"sort": "CREATED_DESC", "limit": 200}
    if "flow_run_id" in flt:
        body["artifacts"] = {"flow_run_id": {"any_": [flt["flow_run_id"]]}}
    if "key" in flt:
        body["artifacts"] = {"key": {"any_": [flt["key"]]}}
    resp = requests.post(f"{stack['prefect']}/artifacts/filter", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()[::-1]  # oldest first


def subflow_runs(stack, parent_flow_run_id: str) -> list[dict]:
    """Flow runs nested under ``parent_flow_run_id`` (through its stage tasks), any depth."""
    found, frontier = [], [parent_flow_run_id]
    while frontier:
        tasks = requests.post(f"{stack['prefect']}/task_runs/filter", json={
            "flow_runs": {"id": {"any_": frontier}}, "limit": 200}, timeout=10).json()
        task_ids = [t["id"] for t in tasks]
        if not task_ids:
            break
        runs = requests.post(f"{stack['prefect']}/flow_runs/filter", json={
            "flow_runs": {"parent_task_run_id": {"any_": task_ids}}, "limit": 200}, timeout=10).json()
        found += runs
        frontier = [r["id"] for r in runs]
    return found


def test_deploy_starts_nothing(stack, deployed):
    """Schedules ship paused: `prefect deploy --all` queues no run (they would download all of PhysioNet)."""
    for name in ("pipeline", "ingest"):
        schedules = deployed[name]["schedules"]
        assert schedules and all(not s["active"] for s in schedules), schedules
    runs = requests.post(f"{stack['prefect']}/flow_runs/filter", json={}, timeout=10).json()
    assert runs == [], [(r["name"], r["state_type"]) for r in runs]
    assert deployed["ablation"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": "{{ $ECGSSL_HOME }}"
    }


def test_deploy_trigger_ablation_and_read_results_over_rest(stack, deployed):
    env, tmp = stack["env"], stack["tmp"]

    # trigger the ablation with small parameters
    params = {
        "task": "localization", "store": stack["store"], "encoder": stack["encoder"], "fractions": [1.0],
        "seeds": 1, "modes": ["full"], "inits": ["random", "ssl"], "max_concurrent": 1,
        "overrides": {"optim.epochs": 1, "min_class_records": 2}, "out_dir": str(tmp / "ablation"),
        "schedule_grid": [ONE_SCHEDULE], "bootstrap_samples": 50, "supervised": False,
    }
    flow_run_id = trigger(env, "ablation/ablation", params)

    # one worker pass on the cpu pool runs it, from the checkout in ECGSSL_HOME (not the worker's cwd)
    worker = work_once(stack, "cpu", "worker-ablation")
    state = final_state(stack, flow_run_id)
    assert state["type"] == "COMPLETED", f"{state}\n{worker[-6000:]}"
    # the ablation run's own artifacts in Prefect (its results table at least) and its cell progress
    kinds = {a["type"] for a in artifacts(stack, flow_run_id=flow_run_id)}
    assert "table" in kinds and "progress" in kinds, kinds

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

    # SIGTERM to `ecgssl ui` (as a service manager or a container stop sends it) stops every process it started
    started = psutil.Process(ui.proc.pid).children(recursive=True)
    assert started, "ecgssl ui started no MLflow process"
    ui.proc.send_signal(signal.SIGTERM)
    assert ui.proc.wait(timeout=60) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


def test_demo_pipeline_deployment_reports_progress_and_fails_honestly(stack, deployed):
    """The demo-sized pipeline deployment end to end on a worker, then an ablation whose cells all fail."""
    env, tmp = stack["env"], stack["tmp"]
    demo = tmp / "demo"
    config = {  # the demo preset, made smaller still (one source, 4 pretraining steps, 2 fine-tuning cells)
        "preset": "demo",
        "ingest": {"sources": ["ptb-xl"], "store": str(demo / "store.zarr"), "raw_dir": str(demo / "raw"),
                   "workers": 0},
        "pretrain": {"out": str(demo / "pretrain"),
                     "overrides": {"optim.max_steps": 4, "data.batch_size": 8, "run.progress": False}},
        "ablation": {"tasks": ["localization"], "fractions": [1.0], "seeds": 1, "inits": ["random", "ssl"],
                     "max_concurrent": 1, "out_dir": str(demo / "ablation"),
                     "overrides": {"optim.epochs": 1, "min_class_records": 2}},
    }  # fmt: skip
    pipeline_run = trigger(env, "pipeline/pipeline-demo", {"config": config})
    worker = work_once(stack, "cpu", "worker-pipeline-demo", timeout=540)
    state = final_state(stack, pipeline_run)
    assert state["type"] == "COMPLETED", f"{state}\n{worker[-6000:]}"

    # Prefect: the pipeline's summary and table, with links into MLflow's model-training view
    own = {a["key"]: a for a in artifacts(stack, flow_run_id=pipeline_run) if a["key"]}
    assert {"pipeline-summary", "ablation-localization"} <= set(own), set(own)
    summary = own["pipeline-summary"]["data"]
    assert f"{stack['mlflow']}/#/experiments/" in summary and "workflowType=machine_learning" in summary
    assert "test_accuracy mean" in json.dumps(own["ablation-localization"]["data"])
    # the nested stage runs: progress artifacts of ingest and pretraining (finished), the ablation's artifacts
    nested = {r["id"]: r for r in subflow_runs(stack, pipeline_run)}
    by_flow = {}
    for run_ in nested.values():
        flow_name = requests.get(f"{stack['prefect']}/flows/{run_['flow_id']}", timeout=10).json()["name"]
        by_flow.setdefault(flow_name, []).append(run_["id"])
    assert {"ingest", "pretrain", "ablation"} <= set(by_flow), by_flow
    for key in ("ingest-progress", "pretrain-progress"):
        found = [a for a in artifacts(stack, key=key) if a["flow_run_id"] in nested]
        assert found and found[-1]["type"] == "progress" and float(found[-1]["data"]) == 100.0, (key, found)

    # MLflow: the pipeline run, and the registered encoder version with its description and tags
    api = f"{stack['mlflow']}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "ecgssl-pipeline"},
                       timeout=10).json()["experiment"]
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment_id"]],
                         "filter": f"tags.`prefect.flow_run_id` = '{pipeline_run}'"}, timeout=10).json()["runs"]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
    encoder = tags["ecgssl.encoder_path"]
    assert Path(encoder).is_file() and encoder.startswith(str(demo))
    # a 4-step run registers under the smoke name (ecgmodel.train.pretrain.registered_name), not ecgssl-encoder
    versions = requests.get(f"{api}/model-versions/search", params={"filter": "name='ecgssl-encoder-smoke'"},
                            timeout=10).json()["model_versions"]
    mine = [v for v in versions if v["run_id"] == tags["ecgssl.pretrain_run_id"]]
    assert mine and "Final metrics" in mine[0]["description"], versions
    version_tags = {t["key"]: t["value"] for t in mine[0]["tags"]}
    assert version_tags["ecgssl.store_hash"] == tags["ecgssl.store_hash"] and version_tags["ecgssl.pretext"]
    assert version_tags["ecgssl.config_hash"] and any(k.startswith("ecgssl.metric.") for k in version_tags)

    # the ablation run nested in the pipeline has its own artifacts: its results table, its cells' progress
    ablation_kinds = {a["type"] for a in artifacts(stack, flow_run_id=by_flow["ablation"][0])}
    assert "table" in ablation_kinds and "progress" in ablation_kinds, ablation_kinds

    # an ablation whose cells all fail (no class keeps 10,000 records) ends Failed, naming the setting
    params = {"task": "localization", "store": str(demo / "store.zarr"), "encoder": encoder, "fractions": [1.0],
              "seeds": 1, "modes": ["full"], "inits": ["random"], "max_concurrent": 1,
              "overrides": {"optim.epochs": 1, "min_class_records": 10_000}, "out_dir": str(demo / "failing"),
              "schedule_grid": [ONE_SCHEDULE], "bootstrap_samples": 50, "supervised": False}
    failing_run = trigger(env, "ablation/ablation", params)
    worker = work_once(stack, "cpu", "worker-failing-ablation")
    state = final_state(stack, failing_run)
    assert state["type"] == "FAILED", f"{state}\n{worker[-4000:]}"
    assert "min_class_records" in (state.get("message") or ""), state
