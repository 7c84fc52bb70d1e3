"""The ecgssl production stack as plain processes on 127.0.0.1, under one state folder.

    infra/local/stack.sh up        # PostgreSQL, Prefect server, MLflow server, Dask scheduler + 2 workers, cpu worker
    infra/local/stack.sh status    # what runs where (pid, address, health)
    infra/local/stack.sh env       # shell lines that point a client (CLI, worker) at the stack
    infra/local/stack.sh deploy    # the deployments of prefect.yaml on the stack's Prefect server
    infra/local/stack.sh down      # stops exactly what `up` started

The same topology as infra/compose, for a VM without containers. Ports, database names, credential file names
and the Dask TLS settings come from infra/services.yaml (shared with the compose files). State lives in
``$ECGSSL_STACK_DIR`` (default ``.stack/`` in the checkout): ``secrets/`` (mode 600 files: generated, or copied
from ``$ECGSSL_CREDENTIALS`` when that folder holds them), ``tls/`` (a CA and a certificate for Dask mutual
TLS), ``pg/`` (the database cluster), ``mlartifacts/`` (MLflow's artifact store, served by the tracking server),
``logs/``, ``run/`` (one pid file per service) and ``stack.json`` (addresses; no credential).

Credentials reach the services through environment variables set from the secret files when a process starts
(``PGPASSWORD``, ``PREFECT_SERVER_API_AUTH_STRING``, ...): never on a command line or in a URL. Each service runs
in its own process group and carries ``ECGSSL_STACK_DIR`` in its environment; ``down`` signals the groups in its
pid files (checked against the recorded start time, so a reused pid is never signalled), then any process left
that carries this state folder's service marker (``ECGSSL_STACK_SERVICE``: a flow run the worker started).

Ports default to infra/services.yaml; ``ECGSSL_STACK_<NAME>_PORT`` overrides one (POSTGRES, PREFECT, MLFLOW,
DASK, DASK_DASHBOARD). When run as root, PostgreSQL runs as ``$ECGSSL_STACK_PG_USER`` (default ``postgres``, else
``nobody``): the state folder must then be reachable by that user.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import pwd
import secrets as secrets_mod
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SPEC_FILE = REPO / "infra" / "services.yaml"
BIN = Path(sys.executable).parent
MARKER = "ECGSSL_STACK_SERVICE"  # in every service's environment (and so its children's): whose they are
ORDER = ["postgres", "prefect-server", "mlflow-server", "dask-scheduler", "dask-worker-0", "dask-worker-1",
         "prefect-worker-cpu"]  # fmt: skip
PORT_ENV = {"postgres": "POSTGRES", "prefect": "PREFECT", "mlflow": "MLFLOW", "dask": "DASK",
            "dask_dashboard": "DASK_DASHBOARD"}  # fmt: skip


class StackError(RuntimeError):
    """An expected failure: printed as one line by the CLI."""


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_FILE.read_text())


def _write_private(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, 0o600)


class Stack:
    def __init__(self, state: str | os.PathLike | None = None):
        self.spec = load_spec()
        self.dir = Path(state or os.environ.get("ECGSSL_STACK_DIR") or REPO / ".stack").resolve()
        self.secrets, self.tls, self.logs = self.dir / "secrets", self.dir / "tls", self.dir / "logs"
        self.run, self.pg = self.dir / "run", self.dir / "pg"
        self.state_file = self.dir / "stack.json"
        self.pg_bin = Path(os.environ.get("ECGSSL_PG_BIN") or f"/usr/lib/postgresql/{self.spec['postgres']['version']}/bin")
        self.ports = self._ports()
        bind = self.spec["bind"]
        self.prefect_api = f"http://{bind}:{self.ports['prefect']}/api"
        self.mlflow_uri = f"http://{bind}:{self.ports['mlflow']}"
        self.dask_address = f"tls://{bind}:{self.ports['dask']}"
        self.dashboard = f"http://{bind}:{self.ports['dask_dashboard']}/status"

    # ---- configuration ------------------------------------------------------------------------------------
    def _ports(self) -> dict[str, int]:
        saved = {}
        if self.state_file.is_file():  # a running stack keeps its ports (restart, status, down)
            saved = json.loads(self.state_file.read_text()).get("ports", {})
        spec = self.spec
        ports = {"postgres": spec["postgres"]["port"], "prefect": spec["prefect"]["port"],
                 "mlflow": spec["mlflow"]["port"], "dask": spec["dask"]["scheduler_port"],
                 "dask_dashboard": spec["dask"]["dashboard_port"]}  # fmt: skip
        for key, name in PORT_ENV.items():
            value = os.environ.get(f"ECGSSL_STACK_{name}_PORT") or saved.get(key)
            if value:
                ports[key] = int(value)
        return ports

    def secret_path(self, key: str) -> Path:
        return self.secrets / self.spec["secrets"][key]

    def secret(self, key: str) -> str:
        return self.secret_path(key).read_text().strip()

    def tls_paths(self) -> dict[str, Path]:
        return {k: self.tls / self.spec["dask"]["tls"][k] for k in ("ca", "cert", "key")}

    @property
    def pg_user(self) -> str | None:
        """The unprivileged account PostgreSQL runs as when this runs as root (None: the current user)."""
        if os.geteuid() != 0:
            return None
        for name in filter(None, [os.environ.get("ECGSSL_STACK_PG_USER"), "postgres", "nobody"]):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise StackError("running as root and no unprivileged user for PostgreSQL: set ECGSSL_STACK_PG_USER")

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_", "PG"))}  # fmt: skip
        env.pop(MARKER, None)
        env.update(ECGSSL_STACK_DIR=str(self.dir), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                   DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DASK_TEMPORARY_DIRECTORY=str(self.dir / "dask"))  # fmt: skip
        return env

    def dask_env(self) -> dict[str, str]:
        """The Dask client/worker TLS settings (file paths, not contents) and the production config."""
        tls = self.tls_paths()
        return {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tls["ca"]),
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(tls["cert"]),
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(tls["key"]),
                "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION":
                    str(self.spec["dask"]["tls"]["require_encryption"]).lower(),
                "DASK_CONFIG": str(REPO / self.spec["dask"]["config"])}  # fmt: skip

    def client_env(self) -> dict[str, str]:
        """The environment of a client of this stack (a worker, the CLI, a test): credentials read from files."""
        env = self.base_env()
        env.update(self.dask_env())
        env.update(PREFECT_API_URL=self.prefect_api, PREFECT_API_AUTH_STRING=self.secret("prefect_auth"),
                   PREFECT_HOME=str(self.dir / "prefect-client"), MLFLOW_TRACKING_URI=self.mlflow_uri,
                   MLFLOW_TRACKING_USERNAME=self.spec["mlflow"]["admin_user"],
                   MLFLOW_TRACKING_PASSWORD=self.secret("mlflow_admin"))  # fmt: skip
        return env

    def pg_url(self, db_key: str, driver: str) -> str:
        pg = self.spec["postgres"]
        return f"postgresql+{driver}://{pg['user']}@{self.spec['bind']}:{self.ports['postgres']}/{pg['databases'][db_key]}"

    # ---- secrets and certificates --------------------------------------------------------------------------
    def ensure_secrets(self) -> None:
        self.secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)
        given = Path(os.environ["ECGSSL_CREDENTIALS"]) if os.environ.get("ECGSSL_CREDENTIALS") else None
        for key, name in list(self.spec["secrets"].items()) + [("flask", "mlflow_flask_secret_key")]:
            path = self.secrets / name
            if path.is_file():
                continue
            if given is not None and (given / name).is_file():
                _write_private(path, (given / name).read_bytes())
            elif key == "prefect_auth":
                _write_private(path, f"admin:{secrets_mod.token_hex(24)}")
            else:
                _write_private(path, secrets_mod.token_hex(24))

    def ensure_tls(self) -> None:
        """One CA and one certificate (scheduler, workers, clients) for Dask mutual TLS, made here once."""
        paths = self.tls_paths()
        if all(p.is_file() for p in paths.values()):
            return
        given = Path(os.environ["ECGSSL_CREDENTIALS"]) if os.environ.get("ECGSSL_CREDENTIALS") else None
        if given is not None and all((given / p.name).is_file() for p in paths.values()):
            for p in paths.values():
                _write_private(p, (given / p.name).read_bytes())
            return
        ca_key, ca_cert, key, cert = make_certificates("ecgssl-dask")
        _write_private(paths["ca"], ca_cert)
        _write_private(paths["cert"], cert)
        _write_private(paths["key"], key)
        _write_private(self.tls / "dask-ca.key", ca_key)  # to sign more certificates; keep offline in production
        os.chmod(self.tls, 0o700)

    # ---- processes -----------------------------------------------------------------------------------------
    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.json"

    def process(self, name: str):
        """The live process recorded for ``name`` (None when it is not running or the pid was reused)."""
        import psutil

        path = self.pid_file(name)
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        try:
            proc = psutil.Process(rec["pid"])
            if abs(proc.create_time() - rec["create_time"]) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def _record(self, name: str, pid: int, pgid: int) -> None:
        import psutil

        self.run.mkdir(parents=True, exist_ok=True)
        rec = {"pid": pid, "pgid": pgid, "create_time": psutil.Process(pid).create_time(),
               "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
        self.pid_file(name).write_text(json.dumps(rec))

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            log.write(f"--- {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} start\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, env=dict(env, **{MARKER: str(self.dir)}), cwd=cwd or self.dir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self._record(name, proc.pid, proc.pid)

    def stop(self, name: str, timeout: float = 20) -> bool:
        """Stop one service (its whole process group). True when something was running."""
        import psutil

        if name == "postgres":
            return self._pg_stop()
        path = self.pid_file(name)
        proc = self.process(name)
        if proc is None:
            path.unlink(missing_ok=True)
            return False
        pgid = json.loads(path.read_text())["pgid"]
        # SIGINT twice first (Prefect workers and uvicorn shut down cleanly on it), then SIGTERM, then SIGKILL
        for sig, grace in ((signal.SIGINT, 0.5), (signal.SIGINT, timeout / 2), (signal.SIGTERM, timeout / 2),
                           (signal.SIGKILL, 5)):  # fmt: skip
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.1)
            if not _group_alive(pgid):
                break
        try:
            proc.wait(timeout=1)
        except psutil.Error:
            pass
        path.unlink(missing_ok=True)
        return True

    # ---- PostgreSQL ----------------------------------------------------------------------------------------
    def _as_pg_user(self) -> dict[str, Any]:
        user = self.pg_user
        if user is None:
            return {}
        pw = pwd.getpwnam(user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _pg_run(self, args: list[str], stdin: str | None = None, check: bool = True, timeout: float = 120):
        env = dict(self.base_env(), LC_ALL="C.UTF-8", LANG="C.UTF-8")
        proc = subprocess.run(args, input=stdin, env=env, cwd=self.pg, capture_output=True, text=True,
                              timeout=timeout, **self._as_pg_user())  # fmt: skip
        if check and proc.returncode != 0:
            raise StackError(f"{Path(args[0]).name} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def _pg_init(self) -> None:
        data = self.pg / "data"
        if (data / "PG_VERSION").is_file():
            return
        if not (self.pg_bin / "initdb").is_file():
            raise StackError(f"PostgreSQL binaries not found in {self.pg_bin}: install PostgreSQL "
                             f"{self.spec['postgres']['version']} or set ECGSSL_PG_BIN")  # fmt: skip
        self.pg.mkdir(parents=True, exist_ok=True)
        user = self.pg_user
        if user is not None:
            pw = pwd.getpwnam(user)
            probe = subprocess.run(["test", "-x", str(self.pg)], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            os.chown(self.pg, pw.pw_uid, pw.pw_gid)
            if probe.returncode != 0:
                raise StackError(f"the PostgreSQL user {user!r} cannot reach {self.pg}: put ECGSSL_STACK_DIR "
                                 "under folders others may traverse (e.g. chmod o+x on its parents)")  # fmt: skip
        os.chmod(self.pg, 0o700)
        # the superuser connects only over the socket in pg/ (mode 700); TCP needs a password (scram-sha-256)
        self._pg_run([str(self.pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"])  # fmt: skip
        with open(data / "postgresql.conf", "a") as fh:
            fh.write("include_if_exists = 'ecgssl.conf'\n")

    def _pg_conf(self) -> None:
        conf = (f"listen_addresses = '{self.spec['bind']}'\nport = {self.ports['postgres']}\n"
                f"unix_socket_directories = '{self.pg}'\nmax_connections = 200\nshared_buffers = 128MB\n"
                # a failing statement is never echoed into the log (it could hold a password)
                "log_min_error_statement = panic\n")  # fmt: skip
        path = self.pg / "data" / "ecgssl.conf"
        path.write_text(conf)
        if self.pg_user is not None:
            pw = pwd.getpwnam(self.pg_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def pg_start(self) -> None:
        if self.process("postgres") is not None:
            return
        self._pg_init()
        self._pg_conf()
        env = dict(self.base_env(), LC_ALL="C.UTF-8", LANG="C.UTF-8", **{MARKER: str(self.dir)})
        log = self.pg / "postgres.log"
        subprocess.run([str(self.pg_bin / "pg_ctl"), "-D", str(self.pg / "data"), "-l", str(log), "-w", "-t", "60",
                        "start"], env=env, cwd=self.pg, check=True, capture_output=True, **self._as_pg_user())  # fmt: skip
        pid = int((self.pg / "data" / "postmaster.pid").read_text().split()[0])
        self._record("postgres", pid, os.getpgid(pid))

    def _pg_stop(self) -> bool:
        running = self.process("postgres") is not None
        if running:
            env = dict(self.base_env(), LC_ALL="C.UTF-8")
            subprocess.run([str(self.pg_bin / "pg_ctl"), "-D", str(self.pg / "data"), "-m", "fast", "-w", "-t", "30",
                            "stop"], env=env, cwd=self.pg, capture_output=True, **self._as_pg_user())  # fmt: skip
        self.pid_file("postgres").unlink(missing_ok=True)
        return running

    def pg_provision(self) -> None:
        """The role and databases of infra/services.yaml (idempotent); the password goes in over stdin."""
        pg = self.spec["postgres"]
        password = self.secret("postgres").replace("'", "''")
        dbs = pg["databases"].values()
        sql = [f"SELECT 'CREATE ROLE {pg['user']} LOGIN' WHERE NOT EXISTS "
               f"(SELECT FROM pg_roles WHERE rolname = '{pg['user']}')\\gexec",
               f"ALTER ROLE {pg['user']} PASSWORD '{password}';"]  # fmt: skip
        for db in dbs:
            sql.append(f"SELECT 'CREATE DATABASE {db} OWNER {pg['user']}' WHERE NOT EXISTS "
                       f"(SELECT FROM pg_database WHERE datname = '{db}')\\gexec")  # fmt: skip
        sql.append(f"\\c {pg['databases']['prefect']}\nCREATE EXTENSION IF NOT EXISTS pg_trgm;")  # Prefect needs it
        self._pg_run([str(self.pg_bin / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-h", str(self.pg), "-p",
                      str(self.ports["postgres"]), "-U", "postgres", "-d", "postgres", "-f", "-"],
                     stdin="\n".join(sql) + "\n")  # fmt: skip

    # ---- services ------------------------------------------------------------------------------------------
    def start(self, name: str) -> None:
        if name == "postgres":
            return self.pg_start()
        if self.process(name) is not None:
            return
        bind = self.spec["bind"]
        env = self.base_env()
        if name == "prefect-server":
            env.update(PREFECT_HOME=str(self.dir / "prefect-server"),
                       PREFECT_API_DATABASE_CONNECTION_URL=self.pg_url("prefect", "asyncpg"),
                       PGPASSWORD=self.secret("postgres"),
                       PREFECT_SERVER_API_AUTH_STRING=self.secret("prefect_auth"),
                       PREFECT_UI_API_URL=self.prefect_api)  # fmt: skip
            cmd = [str(BIN / "prefect"), "server", "start", "--host", bind, "--port", str(self.ports["prefect"])]
        elif name == "mlflow-server":
            ini = self.dir / "mlflow" / "basic_auth.ini"
            _write_private(ini, (
                "[mlflow]\n"
                f"default_permission = {self.spec['mlflow']['default_permission']}\n"
                f"database_uri = {self.pg_url('mlflow_auth', 'psycopg2')}\n"
                f"admin_username = {self.spec['mlflow']['admin_user']}\n"
                f"admin_password = {self.secret('mlflow_admin')}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"))  # fmt: skip
            (self.dir / "mlartifacts").mkdir(exist_ok=True)
            env.update(PGPASSWORD=self.secret("postgres"), MLFLOW_AUTH_CONFIG_PATH=str(ini),
                       MLFLOW_FLASK_SERVER_SECRET_KEY=(self.secrets / "mlflow_flask_secret_key").read_text().strip())
            cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", bind,
                   "--port", str(self.ports["mlflow"]), "--workers", "1",
                   "--backend-store-uri", self.pg_url("mlflow", "psycopg2"),
                   "--artifacts-destination", (self.dir / "mlartifacts").as_uri(),
                   "--allowed-hosts", f"{bind}:{self.ports['mlflow']},localhost:{self.ports['mlflow']}"]  # fmt: skip
        elif name == "dask-scheduler":
            env.update(self.dask_env())
            tls = self.tls_paths()
            cmd = [str(BIN / "dask"), "scheduler", "--protocol", "tls", "--host", bind,
                   "--port", str(self.ports["dask"]), "--dashboard-address", f"{bind}:{self.ports['dask_dashboard']}",
                   "--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]  # fmt: skip
        elif name.startswith("dask-worker-"):
            env.update(self.dask_env())
            tls = self.tls_paths()
            cmd = [str(BIN / "dask"), "worker", self.dask_address, "--nworkers", "1",
                   "--nthreads", str(self.spec["dask"]["nthreads"]), "--host", bind, "--dashboard-address", f"{bind}:0",
                   "--name", f"stack-{name.rsplit('-', 1)[1]}",
                   "--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]  # fmt: skip
            # in the checkout, like the flow runs of the cpu worker (ECGSSL_HOME): relative raw_dir paths that the
            # client sends resolve to the same files here
            return self.spawn(name, cmd, env, cwd=REPO)
        elif name == "prefect-worker-cpu":
            env = self.client_env()
            env.update(ECGSSL_HOME=str(REPO), PREFECT_HOME=str(self.dir / "prefect-worker"))
            cmd = [str(BIN / "prefect"), "worker", "start", "--pool", self.spec["prefect"]["pool"],
                   "--type", "process", "--name", "stack-cpu"]  # fmt: skip
        else:
            raise StackError(f"unknown service {name!r}: one of {', '.join(ORDER)}")
        self.spawn(name, cmd, env)

    def wait(self, name: str, timeout: float = 150) -> None:
        """Until ``name`` answers (health endpoint, scheduler with its workers); raise with its log tail."""
        import requests

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process(name) is None:
                raise StackError(f"{name} exited; its log ({self.logs / (name + '.log')}) ends:\n{self.tail(name)}")
            try:
                if name == "prefect-server":
                    r = requests.get(f"{self.prefect_api}/health", auth=tuple(self.secret("prefect_auth").split(":", 1)),
                                     timeout=3)  # fmt: skip
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}"
                elif name == "mlflow-server":
                    r = requests.get(f"{self.mlflow_uri}/health", timeout=3)
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}"
                elif name == "dask-scheduler":
                    if len(self.dask_workers(timeout=5)) >= self.spec["dask"]["workers"]:
                        return
                    last = "workers not connected yet"
                elif name.startswith("dask-worker-"):
                    if f"stack-{name.rsplit('-', 1)[1]}" in self.dask_workers(timeout=5):
                        return
                    last = "not connected to the scheduler yet"
                else:
                    return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        raise StackError(f"{name} not ready after {timeout:.0f} s ({last}); log:\n{self.tail(name)}")

    def dask_workers(self, timeout: float = 10) -> list[str]:
        """Names of the workers connected to the scheduler."""
        from distributed import Client
        from distributed.security import Security

        tls = self.tls_paths()
        sec = Security(tls_ca_file=str(tls["ca"]), tls_client_cert=str(tls["cert"]), tls_client_key=str(tls["key"]),
                       require_encryption=True)  # fmt: skip
        with Client(self.dask_address, security=sec, timeout=timeout) as client:
            return sorted(w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values())

    def tail(self, name: str, n: int = 2000) -> str:
        path = self.pg / "postgres.log" if name == "postgres" else self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.is_file() else "(no log)"

    def create_pools(self) -> None:
        """The cpu and gpu pools from infra/work-pools/process-*.json and the store-writer tag limit, over the REST
        API (what infra/work-pools/create-pools.sh does, without starting the CLI six times). The stack's worker
        serves the cpu pool; the gpu pool exists so that every deployment of prefect.yaml has its pool."""
        import requests

        auth = tuple(self.secret("prefect_auth").split(":", 1))
        for pool in ("cpu", "gpu"):
            template = json.loads((REPO / "infra" / "work-pools" / f"process-{pool}.json").read_text())
            r = requests.get(f"{self.prefect_api}/work_pools/{pool}", auth=auth, timeout=10)
            if r.status_code == 404:
                r = requests.post(f"{self.prefect_api}/work_pools/", auth=auth, timeout=10,
                                  json={"name": pool, "type": "process", "base_job_template": template})  # fmt: skip
            else:
                r = requests.patch(f"{self.prefect_api}/work_pools/{pool}", auth=auth, timeout=10,
                                   json={"base_job_template": template})  # fmt: skip
            if r.status_code >= 300:
                raise StackError(f"creating the {pool} work pool failed: HTTP {r.status_code} {r.text[:300]}")
        requests.post(f"{self.prefect_api}/concurrency_limits/", auth=auth, timeout=10,
                      json={"tag": "store-writer", "concurrency_limit": 1})  # fmt: skip

    def save_state(self) -> None:
        state = {"ports": self.ports, "prefect_api": self.prefect_api, "mlflow": self.mlflow_uri,
                 "dask": self.dask_address, "dask_dashboard": self.dashboard, "state_dir": str(self.dir),
                 "secrets": {k: str(self.secret_path(k)) for k in self.spec["secrets"]},
                 "tls": {k: str(v) for k, v in self.tls_paths().items()}}  # fmt: skip
        self.state_file.write_text(json.dumps(state, indent=1))

    # ---- commands ------------------------------------------------------------------------------------------
    def up(self) -> float:
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ensure_secrets()
        self.ensure_tls()
        self.save_state()
        try:
            self.pg_start()
            self.pg_provision()
            for name in ("prefect-server", "mlflow-server", "dask-scheduler", "dask-worker-0", "dask-worker-1"):
                self.start(name)  # they start together; each waits for what it needs itself
            self.wait("prefect-server")
            self.create_pools()
            self.start("prefect-worker-cpu")
            self.wait("mlflow-server")
            self.wait("dask-scheduler")
        except BaseException:
            self.down(quiet=True)
            raise
        return time.monotonic() - t0

    def down(self, quiet: bool = False) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        stopped = []
        # clients first, then the servers, then the database; each phase in parallel
        phases = [["prefect-worker-cpu", "dask-worker-0", "dask-worker-1"],
                  ["dask-scheduler", "mlflow-server", "prefect-server"], ["postgres"]]  # fmt: skip
        with ThreadPoolExecutor(max_workers=3) as pool:
            for phase in phases:
                t0 = time.monotonic()
                ran = list(pool.map(self.stop, phase))
                took = time.monotonic() - t0
                stopped += [f"{name} ({took:.1f} s)" for name, r in zip(phase, ran, strict=True) if r]
        for name in self.leftovers():  # a flow-run process of the worker, a nanny's child: anything carrying our marker
            stopped.append(name)
        if not quiet:
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return stopped

    def leftovers(self, kill: bool = True) -> list[str]:
        """Processes still carrying this state folder's service marker in their environment (never this process
        or its ancestors)."""
        import psutil

        me = psutil.Process()
        mine = {me.pid} | {p.pid for p in me.parents()}
        found = []
        for proc in psutil.process_iter(["pid", "name"]):
            try:
                if proc.pid in mine or proc.environ().get(MARKER) != str(self.dir):
                    continue
                found.append(f"{proc.info['name']}[{proc.pid}]")
                if kill:
                    proc.kill()
            except psutil.Error:
                continue
        return found

    def status(self) -> list[dict[str, Any]]:
        where = {"postgres": f"{self.spec['bind']}:{self.ports['postgres']} (databases "
                             f"{', '.join(self.spec['postgres']['databases'].values())})",
                 "prefect-server": f"{self.prefect_api} (UI http://{self.spec['bind']}:{self.ports['prefect']})",
                 "mlflow-server": f"{self.mlflow_uri} (artifacts {self.dir / 'mlartifacts'})",
                 "dask-scheduler": f"{self.dask_address} (dashboard {self.dashboard})",
                 "dask-worker-0": f"-> {self.dask_address}", "dask-worker-1": f"-> {self.dask_address}",
                 "prefect-worker-cpu": f"pool {self.spec['prefect']['pool']} -> {self.prefect_api}"}  # fmt: skip
        rows = []
        for name in ORDER:
            proc = self.process(name)
            rows.append({"service": name, "running": proc is not None, "pid": proc.pid if proc else None,
                         "where": where[name], "log": str(self.tail_path(name))})  # fmt: skip
        return rows

    def tail_path(self, name: str) -> Path:
        return self.pg / "postgres.log" if name == "postgres" else self.logs / f"{name}.log"

    def env_lines(self) -> list[str]:
        """``export`` lines for a shell: values, and credentials as ``$(cat FILE)`` (never the secret itself)."""
        env = {"PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_uri,
               "MLFLOW_TRACKING_USERNAME": self.spec["mlflow"]["admin_user"]}  # fmt: skip
        env.update(self.dask_env())
        lines = [f"export {k}={v}" for k, v in env.items()]
        lines.append(f'export PREFECT_API_AUTH_STRING="$(cat {self.secret_path("prefect_auth")})"')
        lines.append(f'export MLFLOW_TRACKING_PASSWORD="$(cat {self.secret_path("mlflow_admin")})"')
        lines.append(f"# Dask: --dask-address {self.dask_address}   dashboard: {self.dashboard}")
        return lines

    def deploy(self) -> str:
        """``prefect --no-prompt deploy --all`` against this stack (ECGSSL_HOME unset: each worker resolves its own)."""
        env = {k: v for k, v in self.client_env().items() if k != "ECGSSL_HOME"}
        proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if proc.returncode != 0:
            raise StackError(f"prefect deploy failed: {(proc.stdout + proc.stderr).strip()[-1500:]}")
        return proc.stdout


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Zombies do not count (a service restarted from this
    process is its child: reap it here, or it would look alive until this process exits)."""
    import psutil

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                return True
            try:
                os.waitpid(proc.pid, os.WNOHANG)  # ours: reap it
            except ChildProcessError:
                pass
        except (psutil.Error, ProcessLookupError):
            continue
    return False


def make_certificates(name: str) -> tuple[bytes, bytes, bytes, bytes]:
    """A CA and one certificate it signs (server and client use, SAN 127.0.0.1 and localhost), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=825))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    private = lambda k: k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())  # noqa: E731
    return private(ca_key), ca.public_bytes(pem), private(key), cert.public_bytes(pem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/local/stack.sh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start every service not running yet (idempotent); returns when all answer")
    sub.add_parser("down", help="stop exactly what up started")
    sub.add_parser("status", help="what runs where")
    sub.add_parser("env", help="shell lines pointing a client at the stack (credentials as $(cat FILE))")
    sub.add_parser("deploy", help="prefect deploy --all on the stack's server")
    for verb in ("start", "stop", "restart"):
        p = sub.add_parser(verb, help=f"{verb} one service")
        p.add_argument("service", choices=ORDER)
    args = parser.parse_args(argv)
    stack = Stack()
    try:
        if args.cmd == "up":
            took = stack.up()
            for row in stack.status():
                print(f"{row['service']:<20} {'up' if row['running'] else 'DOWN':<5} {row['pid'] or '-':>7}  {row['where']}")
            print(f"stack up in {took:.1f} s; state in {stack.dir}; clients: eval \"$(infra/local/stack.sh env)\"")
        elif args.cmd == "down":
            stack.down()
        elif args.cmd == "status":
            rows = stack.status()
            for row in rows:
                print(f"{row['service']:<20} {'up' if row['running'] else 'DOWN':<5} {row['pid'] or '-':>7}  {row['where']}")
            return 0 if all(r["running"] for r in rows) else 3
        elif args.cmd == "env":
            print("\n".join(stack.env_lines()))
        elif args.cmd == "deploy":
            print(stack.deploy())
        elif args.cmd in ("stop", "restart"):
            stack.stop(args.service)
            if args.cmd == "restart":
                stack.start(args.service)
                stack.wait(args.service)
        elif args.cmd == "start":
            stack.start(args.service)
            stack.wait(args.service)
    except StackError as e:
        print(f"stack: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
