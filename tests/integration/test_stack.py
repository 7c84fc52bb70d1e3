"""The production stack of infra/local, run for real on 127.0.0.1, and the faults a deployment meets.

One stack for the module (`infra/local/stack.sh up`, free ports, a state folder of its own): PostgreSQL,
the Prefect server on it with API auth, the MLflow server on it with basic auth and proxied artifacts, a Dask
scheduler and two workers with mutual TLS, a Prefect process worker on the cpu pool. The default run checks the
services, refusals and the quick faults; the `nightly` ones run the pipeline and ingest through the stack while
a server restarts or a worker dies. The last test brings the stack down and checks that nothing is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMPLE = REPO / "sample" / "physionet"
STACK_SH = REPO / "infra" / "local" / "stack.sh"
PG_BIN = Path(os.environ.get("ECGSSL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _load_stack_module():
    spec = importlib.util.spec_from_file_location("ecgssl_local_stack", REPO / "infra" / "local" / "stack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


stack_mod = _load_stack_module()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(STACK_SH), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def traversable_tmp() -> str:
    """A temporary folder whose every ancestor others may traverse: the system's (``TMPDIR``) when it is, else
    /tmp or /var/tmp (CI's TMPDIR is a private mktemp folder that PostgreSQL's user cannot enter)."""
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(base).resolve()
        if path.is_dir() and all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    pytest.fail("no temporary folder that PostgreSQL's unprivileged user can traverse (tried $TMPDIR, /tmp, /var/tmp)")


@pytest.fixture(scope="module")
def stack():
    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"PostgreSQL binaries not found in {PG_BIN} (install postgresql-15 or set ECGSSL_PG_BIN)")
    # a folder PostgreSQL's unprivileged user can traverse (pytest's own tmp folders are private to root)
    state = Path(tempfile.mkdtemp(prefix="ecgssl-stack-", dir=traversable_tmp()))
    os.chmod(state, 0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "ECGSSL_STACK_"))}
    env.update(ECGSSL_STACK_DIR=str(state), ECGSSL_PYTHON=sys.executable, ECGSSL_PG_BIN=str(PG_BIN))
    for name in ("POSTGRES", "PREFECT", "MLFLOW", "DASK", "DASK_DASHBOARD"):
        env[f"ECGSSL_STACK_{name}_PORT"] = str(free_port())
    t0 = time.monotonic()
    up = sh(["up"], env, timeout=300)
    took = time.monotonic() - t0
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        s = stack_mod.Stack(state)
        yield {"stack": s, "env": env, "up": up.stdout, "up_s": took, "client": s.client_env(), "state": state}
    finally:
        sh(["down"], env, timeout=180)
        shutil.rmtree(state, ignore_errors=True)


def mlflow_api(st, path: str, method: str = "get", auth: bool = True, **kw) -> requests.Response:
    s = st["stack"]
    creds = (s.spec["mlflow"]["admin_user"], s.secret("mlflow_admin")) if auth else None
    return getattr(requests, method)(f"{s.mlflow_uri}/api/2.0/mlflow/{path}", auth=creds, timeout=30, **kw)


def prefect_auth(st) -> tuple[str, str]:
    return tuple(st["stack"].secret("prefect_auth").split(":", 1))


def test_up_starts_every_service_and_status_says_where(stack):
    s = stack["stack"]
    print(f"stack up in {stack['up_s']:.1f} s")
    assert stack["up_s"] < 120, f"up took {stack['up_s']:.0f} s (target < 2 min)"
    st = sh(["status"], stack["env"])
    assert st.returncode == 0, st.stdout + st.stderr
    for name in stack_mod.ORDER:
        assert re.search(rf"^{name}\s+up\s+\d+", st.stdout, re.M), st.stdout
    assert s.dask_address in st.stdout and s.prefect_api in st.stdout and s.mlflow_uri in st.stdout
    # the dashboard (bokeh) answers; the scheduler has the two TLS workers
    assert requests.get(s.dashboard, timeout=10).status_code == 200
    assert s.dask_workers() == ["stack-0", "stack-1"]
    # PostgreSQL holds the state of both servers
    q = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(s.ports["postgres"]), "-U", "ecgssl",
                        "-d", "prefect", "-Atc", "select count(*) from work_pool where name = 'cpu'"],
                       env=dict(os.environ, PGPASSWORD=s.secret("postgres")), capture_output=True, text=True)  # fmt: skip
    assert q.stdout.strip() == "1", q.stdout + q.stderr


def test_credentials_are_private_files_never_in_a_command_line_or_log(stack):
    s, state = stack["stack"], stack["state"]
    values = {}
    for key in s.spec["secrets"]:
        path = s.secret_path(key)
        assert path.stat().st_mode & 0o777 == 0o600, path
        values[key] = s.secret(key)
    values["prefect_password"] = values["prefect_auth"].split(":", 1)[1]
    assert (s.tls / "dask-key.pem").stat().st_mode & 0o777 == 0o600
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        for key, value in values.items():
            assert value not in cmd, f"{key} on the command line of {proc.pid}: {cmd[:80]}"
    logs = [p for p in state.rglob("*.log")] + [state / "stack.json"]
    for path in logs:
        text = path.read_text(errors="replace")
        for key, value in values.items():
            assert value not in text, f"{key} written in {path}"
    env_out = sh(["env"], stack["env"]).stdout
    assert "$(cat " in env_out and not any(v in env_out for v in values.values())


def test_mlflow_refuses_a_client_without_the_password_and_serves_artifacts(stack):
    s = stack["stack"]
    assert mlflow_api(stack, "experiments/search", params={"max_results": 5}, auth=False).status_code == 401
    bad = requests.get(f"{s.mlflow_uri}/api/2.0/mlflow/experiments/search", params={"max_results": 5},
                       auth=("admin", "not-the-password"), timeout=10)  # fmt: skip
    assert bad.status_code == 401
    # the mlflow client without MLFLOW_TRACKING_PASSWORD is refused too (no retries: a 401 is final)
    import mlflow
    from mlflow.exceptions import MlflowException

    client_env = stack["client"]
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.delenv(key, raising=False)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            mlflow.MlflowClient(tracking_uri=s.mlflow_uri).create_experiment("refused")

        # with the password: a run whose artifact goes through the server into the stack's artifact store
        mp.setenv("MLFLOW_TRACKING_USERNAME", client_env["MLFLOW_TRACKING_USERNAME"])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", client_env["MLFLOW_TRACKING_PASSWORD"])
        client = mlflow.MlflowClient(tracking_uri=s.mlflow_uri)
        exp = client.create_experiment("stack-artifacts")
        run = client.create_run(exp)
        run_id, artifact_uri = run.info.run_id, run.info.artifact_uri
        client.log_metric(run_id, "m", 1.5)
        client.log_text(run_id, "hello through the server", "notes/hello.txt")
        client.set_terminated(run_id)
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri  # proxied: the client needs no store access
    stored = list((stack["state"] / "mlartifacts").rglob("hello.txt"))
    assert len(stored) == 1 and run_id in str(stored[0])
    got = requests.get(f"{s.mlflow_uri}/get-artifact", params={"path": "notes/hello.txt", "run_uuid": run_id},
                       auth=("admin", s.secret("mlflow_admin")), timeout=30)  # fmt: skip
    assert got.status_code == 200 and got.text == "hello through the server"
    unauth = requests.get(f"{s.mlflow_uri}/get-artifact", params={"path": "notes/hello.txt", "run_uuid": run_id},
                          timeout=30)  # fmt: skip
    assert unauth.status_code == 401


def test_prefect_refuses_a_client_without_the_auth_string(stack):
    s = stack["stack"]
    assert requests.post(f"{s.prefect_api}/flows/filter", json={}, timeout=10).status_code == 401
    assert requests.post(f"{s.prefect_api}/flows/filter", json={}, auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.post(f"{s.prefect_api}/flows/filter", json={}, auth=prefect_auth(stack), timeout=10).status_code == 200


def test_a_dask_worker_without_the_cluster_certificate_is_refused(stack, tmp_path):
    s = stack["stack"]
    # a certificate from another CA (what an attacker on the network can make), and no certificate at all
    _, other_ca, other_key, other_cert = stack_mod.make_certificates("intruder")
    for name, data in (("ca.pem", other_ca), ("cert.pem", other_cert), ("key.pem", other_key)):
        (tmp_path / name).write_bytes(data)
    env = {k: v for k, v in stack["client"].items() if not k.startswith("DASK_DISTRIBUTED__COMM__TLS")}
    intruders = {
        "foreign-cert": ["--tls-ca-file", str(tmp_path / "ca.pem"), "--tls-cert", str(tmp_path / "cert.pem"),
                         "--tls-key", str(tmp_path / "key.pem")],
        # the cluster's CA (so it trusts the scheduler) but a certificate the scheduler did not sign
        "unsigned-cert": ["--tls-ca-file", str(s.tls_paths()["ca"]), "--tls-cert", str(tmp_path / "cert.pem"),
                          "--tls-key", str(tmp_path / "key.pem")],
        "no-cert": [],
    }  # fmt: skip
    procs = {}
    for name, flags in intruders.items():
        cmd = [str(BIN / "dask"), "worker", s.dask_address, "--no-nanny", "--nthreads", "1", "--host", "127.0.0.1",
               "--dashboard-address", ":0", "--death-timeout", "15", "--name", name, *flags]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True)  # fmt: skip
    outputs = {}
    for name, proc in procs.items():
        try:
            outputs[name] = proc.communicate(timeout=90)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode != 0, f"{name} worker exited 0:\n{outputs[name][-1500:]}"
    # the scheduler still knows exactly its two workers, none of the intruders
    from distributed import Client

    sec = stack_mod_security(s)
    with Client(s.dask_address, security=sec, timeout=10) as client:
        names = {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}
    assert names == {"stack-0", "stack-1"}, names
    log = (s.logs / "dask-scheduler.log").read_text(errors="replace")
    assert not any(f"'{n}'" in log or f"name: {n}" in log for n in intruders), "an intruder registered"
    # a client without the certificate cannot connect either
    plain = subprocess.run([sys.executable, "-c", f"from distributed import Client; Client({s.dask_address!r}, timeout=8)"],
                           env=env, capture_output=True, text=True, timeout=90)  # fmt: skip
    assert plain.returncode != 0, plain.stdout


def stack_mod_security(s):
    from distributed.security import Security

    tls = s.tls_paths()
    return Security(tls_ca_file=str(tls["ca"]), tls_client_cert=str(tls["cert"]), tls_client_key=str(tls["key"]),
                    require_encryption=True)  # fmt: skip


def test_postgres_stopped_for_seconds_fails_clearly_and_loses_nothing(stack):
    s = stack["stack"]
    exp = mlflow_api(stack, "experiments/create", "post", json={"name": "pg-outage"}).json()["experiment_id"]
    run_id = mlflow_api(stack, "runs/create", "post", json={"experiment_id": exp}).json()["run"]["info"]["run_id"]
    for step in range(5):
        r = mlflow_api(stack, "runs/log-metric", "post",
                       json={"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1), "timestamp": 0, "step": step})
        assert r.status_code == 200, r.text

    t0 = time.monotonic()
    assert s.stop("postgres")
    try:
        # while the database is down: the servers answer with an error (no hang, no silent success)
        r = mlflow_api(stack, "runs/log-metric", "post",
                       json={"run_id": run_id, "key": "loss", "value": 9.0, "timestamp": 0, "step": 99})
        assert r.status_code >= 500, (r.status_code, r.text[:300])
        r = requests.post(f"{s.prefect_api}/flows/filter", json={}, auth=prefect_auth(stack), timeout=60)
        assert r.status_code >= 500, (r.status_code, r.text[:300])
        time.sleep(max(0.0, 5 - (time.monotonic() - t0)))
    finally:
        s.start("postgres")

    # back: both servers recover by themselves (within a few requests), and nothing written before was lost
    def eventually(fn, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            r = fn()
            if r.status_code == 200 or time.monotonic() > deadline:
                return r
            time.sleep(1)

    r = eventually(lambda: mlflow_api(stack, "metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}))
    assert r.status_code == 200, r.text
    steps = sorted(m["step"] for m in r.json()["metrics"])
    assert steps == [0, 1, 2, 3, 4], steps  # the refused write did not land, the earlier ones are all there
    r = eventually(lambda: requests.post(f"{s.prefect_api}/flows/filter", json={}, auth=prefect_auth(stack), timeout=30))
    assert r.status_code == 200
    r = mlflow_api(stack, "runs/log-metric", "post",
                   json={"run_id": run_id, "key": "loss", "value": 0.1, "timestamp": 0, "step": 5})
    assert r.status_code == 200, r.text
    assert "database system was shut down" in s.tail("postgres", 20000)  # a clean stop, no recovery needed


LOGGER = """
import sys, time, mlflow
from mlflow import MlflowClient
n_children, steps, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
mlflow.set_experiment("restart-" + sys.argv[4])
c = MlflowClient()
with mlflow.start_run(run_name="parent") as parent:
    for i in range(n_children):
        with mlflow.start_run(run_name=f"cell-{i}", nested=True) as child:
            for step in range(steps):
                mlflow.log_metrics({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
                time.sleep(pause)
print("DONE", parent.info.run_id, flush=True)
"""


@pytest.mark.nightly
def test_mlflow_server_restarted_mid_run_loses_and_duplicates_nothing(stack):
    """A parent run with child runs logging every step while the tracking server restarts: the client's
    retries carry it over; afterwards exactly one parent, every child once, every step once."""
    s = stack["stack"]
    n_children, steps = 3, 10
    env = dict(stack["client"], MLFLOW_HTTP_REQUEST_MAX_RETRIES="8", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    proc = subprocess.Popen([sys.executable, "-c", LOGGER, str(n_children), str(steps), "0.3", "a"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not mlflow_api(stack, "experiments/get-by-name", params={"experiment_name": "restart-a"}).ok:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-2000:]
            time.sleep(0.5)
        time.sleep(2)  # the first child run is under way
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        t0 = time.monotonic()
        s.stop("mlflow-server")
        assert proc.poll() is None, "the logging client finished before the restart: nothing was tested"
        s.start("mlflow-server")
        s.wait("mlflow-server")
        print(f"mlflow server restarted in {time.monotonic() - t0:.1f} s")
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "DONE" in out, out[-3000:]
    exp = mlflow_api(stack, "experiments/get-by-name", params={"experiment_name": "restart-a"}).json()["experiment"]
    runs = mlflow_api(stack, "runs/search", "post", json={"experiment_ids": [exp["experiment_id"]],
                                                          "max_results": 100}).json()["runs"]  # fmt: skip
    names = sorted(r["info"]["run_name"] for r in runs)
    assert names == sorted(["parent"] + [f"cell-{i}" for i in range(n_children)]), names
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    for r in runs:
        if r["info"]["run_name"] == "parent":
            continue
        for key in ("loss", "acc"):
            hist = mlflow_api(stack, "metrics/get-history",
                              params={"run_id": r["info"]["run_id"], "metric_key": key}).json()["metrics"]
            assert sorted(m["step"] for m in hist) == list(range(steps)), (r["info"]["run_name"], key, len(hist))


# ---- nightly: the pipeline and ingest through the stack, with faults --------------------------------------------


@pytest.fixture(scope="module")
def reference_hash(tmp_path_factory):
    """Content hash of an undisturbed in-process ingest of the bundled sample (no Dask, no server)."""
    tmp = tmp_path_factory.mktemp("reference")
    code = (
        "from ecgmodel.data.convert import convert_sources\n"
        "from ecgmodel.data.download import download_source\n"
        "from ecgmodel.data.ingest_config import IngestConfig\n"
        "from ecgmodel.data.store import content_hash\n"
        f"cfg = IngestConfig(sources={INGEST_SOURCES!r}, mirror={str(SAMPLE)!r}, store={str(tmp / 'ref.zarr')!r},"
        f" raw_dir={str(tmp / 'raw')!r}, workers=0, max_windows_per_record=2, progress=False)\n"
        "fetched = []\n"
        "for slug in cfg.sources:\n"
        "    res = download_source(cfg.source(slug), cfg.mirror, cfg.raw_dir, progress=False).summary()\n"
        "    fetched.append(dict(res, slug=slug, mirror=cfg.mirror))\n"
        "convert_sources(cfg, fetched, client=None)\n"
        f"print(content_hash({str(tmp / 'ref.zarr')!r}))\n"
    )
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()[-1]


INGEST_SOURCES = ["challenge-2020", "challenge-2021", "ptb-xl", "ludb"]


def ingest_cmd(stack, out: Path) -> list[str]:
    cmd = [str(BIN / "ecgssl"), "ingest", "--mirror", str(SAMPLE), "--store", str(out / "store.zarr"),
           "--raw-dir", str(out / "raw"), "--dask-address", stack["stack"].dask_address, "--max-windows", "2",
           "--json"]  # fmt: skip
    for slug in INGEST_SOURCES:
        cmd += ["--source", slug]
    return cmd


def store_hash(path: Path) -> str:
    from ecgmodel.data.store import content_hash

    return content_hash(path)


def scheduler_processing(client) -> dict[str, int]:
    """convert_batch tasks the scheduler has in flight, by worker name."""
    return client.run_on_scheduler(lambda dask_scheduler: {
        ws.name: sum(1 for ts in ws.processing if ts.prefix.name == "convert_batch")
        for ws in dask_scheduler.workers.values()})  # fmt: skip


def dask_client(s):
    from distributed import Client

    return Client(s.dask_address, security=stack_mod_security(s), timeout=10)


@pytest.mark.nightly
def test_dask_worker_killed_mid_ingest_gives_the_undisturbed_store(stack, reference_hash, tmp_path):
    s = stack["stack"]
    env = dict(stack["client"], PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.Popen(ingest_cmd(stack, tmp_path), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed, out, err = None, "", ""
    try:
        deadline = time.monotonic() + 180
        with dask_client(s) as client:
            while killed is None and proc.poll() is None and time.monotonic() < deadline:
                busy = {name: n for name, n in scheduler_processing(client).items() if n}
                if busy:
                    victim = f"dask-worker-{sorted(busy)[0].rsplit('-', 1)[1]}"
                    os.killpg(json.loads(s.pid_file(victim).read_text())["pgid"], signal.SIGKILL)  # an OOM kill
                    killed = victim
                time.sleep(0.02)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if killed:
            s.stop(killed)
            s.start(killed)
            s.wait(killed)
    assert killed, f"no conversion task was ever seen on the cluster:\n{err[-3000:]}"
    assert proc.returncode == 0, (out + err)[-4000:]
    summary = json.loads(out[re.search(r"^\{$", out, re.M).start():])  # --json: the summary on stdout
    assert not summary.get("failed_sources"), summary
    assert store_hash(tmp_path / "store.zarr") == reference_hash


@pytest.mark.nightly
def test_prefect_server_restarted_mid_run_finishes_with_the_same_store(stack, reference_hash, tmp_path):
    s = stack["stack"]
    env = dict(stack["client"], PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.Popen(ingest_cmd(stack, tmp_path), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:  # until the flow is under way (downloading)
            if list((tmp_path / "raw").glob("*")):
                break
            time.sleep(0.1)
        s.stop("prefect-server")
        s.start("prefect-server")
        s.wait("prefect-server")
        first = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    attempts = [proc.returncode]
    if proc.returncode != 0:  # a crashed run is retried: the re-run resumes and must reach the same store
        again = subprocess.run(ingest_cmd(stack, tmp_path), env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)  # fmt: skip
        attempts.append(again.returncode)
        assert again.returncode == 0, first[-3000:] + "\n---\n" + (again.stdout + again.stderr)[-3000:]
    print(f"ingest exit codes across the restart: {attempts}")
    assert store_hash(tmp_path / "store.zarr") == reference_hash


@pytest.mark.nightly
def test_pipeline_demo_deployment_runs_through_the_stack(stack, tmp_path):
    """`pipeline-demo` deployed on the stack's server, run by its cpu worker: ingest on the TLS cluster, runs and
    artifacts in the MLflow server, flow state in PostgreSQL."""
    s = stack["stack"]
    out = sh(["deploy"], stack["env"], timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    demo = tmp_path / "demo"
    config = {
        "preset": "demo",
        "ingest": {"sources": ["ptb-xl"], "store": str(demo / "store.zarr"), "raw_dir": str(demo / "raw"),
                   "dask_address": s.dask_address},
        "pretrain": {"out": str(demo / "pretrain"),
                     "overrides": {"optim.max_steps": 4, "data.batch_size": 8, "run.progress": False}},
        "ablation": {"tasks": ["localization"], "fractions": [1.0], "seeds": 1, "inits": ["random", "ssl"],
                     "max_concurrent": 1, "out_dir": str(demo / "ablation"),
                     "overrides": {"optim.epochs": 1, "min_class_records": 2}},
    }  # fmt: skip
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "pipeline/pipeline-demo", "--param",
                          f"config={json.dumps(config)}"], env=stack["client"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
    auth = prefect_auth(stack)
    deadline, state = time.monotonic() + 900, None
    while time.monotonic() < deadline:
        state = requests.get(f"{s.prefect_api}/flow_runs/{flow_run_id}", auth=auth, timeout=30).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(3)
    assert state and state["type"] == "COMPLETED", f"{state}\n{s.tail('prefect-worker-cpu', 6000)}"
    # ingest ran on the TLS cluster
    from distributed import Client

    with Client(s.dask_address, security=stack_mod_security(s), timeout=10) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "convert_batch" in ran, ran
    # runs in the MLflow server, their artifacts in the stack's artifact store
    exp = mlflow_api(stack, "experiments/get-by-name", params={"experiment_name": "ecgssl-pipeline"}).json()["experiment"]
    runs = mlflow_api(stack, "runs/search", "post", json={
        "experiment_ids": [exp["experiment_id"]], "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'"}).json()["runs"]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED", runs
    assert runs[0]["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    assert list((stack["state"] / "mlartifacts").rglob("summary.md")), "pipeline summary not in the artifact store"


# ---- last: down --------------------------------------------------------------------------------------------------


def test_down_stops_everything_up_started(stack):
    s = stack["stack"]
    pids = [json.loads(p.read_text())["pid"] for p in s.run.glob("*.json")]
    assert len(pids) == len(stack_mod.ORDER)
    t0 = time.monotonic()
    out = sh(["down"], stack["env"], timeout=180)
    print(f"stack down in {time.monotonic() - t0:.1f} s: {out.stdout.strip()}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not list(s.run.glob("*.json"))
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    assert s.leftovers(kill=False) == [], "processes of the stack outlived down"
    for port in s.ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"
    st = sh(["status"], stack["env"])
    assert st.returncode == 3 and " up " not in st.stdout
