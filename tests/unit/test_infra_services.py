"""infra/services.yaml describes the services once; the compose files, .env.example, the secrets README and the
local stack script must agree with it (ports, names, credential files, Dask TLS settings)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
SPEC = yaml.safe_load((INFRA / "services.yaml").read_text())


def compose(name: str) -> dict:
    return yaml.safe_load((INFRA / "compose" / name).read_text())


def text(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def env_example() -> dict[str, str]:
    out = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_ports_agree():
    prefect = compose("prefect.yml")["services"]["prefect-server"]
    assert any(str(p).endswith(f":{SPEC['prefect']['port']}:{SPEC['prefect']['port']}") for p in prefect["ports"])
    assert f"--port {SPEC['prefect']['port']}" in text(prefect["command"])
    mlflow = compose("mlflow.yml")["services"]["mlflow"]
    assert any(str(p).endswith(f":{SPEC['mlflow']['port']}:{SPEC['mlflow']['port']}") for p in mlflow["ports"])
    assert f"--port {SPEC['mlflow']['port']}" in text(mlflow["command"])
    dask = compose("dask.yml")["services"]
    sched = text(dask["dask-scheduler"]["command"])
    assert f"--port {SPEC['dask']['scheduler_port']}" in sched
    assert f"--dashboard-address 127.0.0.1:{SPEC['dask']['dashboard_port']}" in sched
    assert f"tls://dask-scheduler:{SPEC['dask']['scheduler_port']}" in text(dask["dask-worker"]["command"])
    assert f"postgres:{SPEC['postgres']['port']}/" in text(mlflow["command"])


def test_names_versions_and_credential_files_agree():
    env = env_example()
    pg = SPEC["postgres"]
    assert env["POSTGRES_USER"] == pg["user"] and env["POSTGRES_DB"] == pg["databases"]["prefect"]
    assert env["MLFLOW_DB"] == pg["databases"]["mlflow"]
    assert env["DASK_NWORKERS"] == str(SPEC["dask"]["workers"]) and env["DASK_NTHREADS"] == str(SPEC["dask"]["nthreads"])
    prefect = compose("prefect.yml")
    assert prefect["services"]["prefect-server"]["image"].startswith(f"prefecthq/prefect:{SPEC['prefect']['version']}-")
    assert f"{pg['user']}}}@postgres" in prefect["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow = compose("mlflow.yml")
    assert mlflow["services"]["mlflow"]["image"].endswith(f":{SPEC['mlflow']['version']}")
    assert f"admin_username = {SPEC['mlflow']['admin_user']}" in text(mlflow["services"]["mlflow"]["command"])
    assert f"default_permission = {SPEC['mlflow']['default_permission']}" in text(mlflow["services"]["mlflow"]["command"])
    declared = set(prefect["secrets"]) | set(mlflow["secrets"]) | set(compose("workers.yml")["secrets"])
    for name in SPEC["secrets"].values():
        assert name in declared, f"{name} is not a compose secret"
        assert name in (INFRA / "secrets" / "README.md").read_text()
    for svc in compose("workers.yml")["services"].values():
        assert svc["environment"]["MLFLOW_TRACKING_USERNAME"] == SPEC["mlflow"]["admin_user"]
    assert f"--pool {SPEC['prefect']['pool']}" in text(compose("workers.yml")["services"]["worker-cpu"]["command"])


def test_dask_tls_settings_agree():
    tls = SPEC["dask"]["tls"]
    dask = compose("dask.yml")
    for name in ("dask-scheduler", "dask-worker"):
        svc = dask["services"][name]
        cmd = text(svc["command"])
        for flag, key in (("--tls-ca-file", "ca"), ("--tls-cert", "cert"), ("--tls-key", "key")):
            assert f"{flag} /run/secrets/{tls[key]}" in cmd, (name, flag)
            assert tls[key] in svc["secrets"]
        assert svc["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == str(tls["require_encryption"]).lower()
    assert dask["services"]["dask-worker"]["environment"]["DASK_CONFIG"].endswith(SPEC["dask"]["config"])
    assert f"--nthreads ${{DASK_NTHREADS:-{SPEC['dask']['nthreads']}}}" in text(dask["services"]["dask-worker"]["command"])
    # the production Dask config keeps allowed-failures small (ingest bisects failed batches itself)
    conf = yaml.safe_load((INFRA.parent / SPEC["dask"]["config"] / "distributed.yaml").read_text())
    assert 0 <= conf["distributed"]["scheduler"]["allowed-failures"] <= 1


def test_the_local_stack_reads_the_same_description(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("ecgssl_local_stack", INFRA / "local" / "stack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for key in ("POSTGRES", "PREFECT", "MLFLOW", "DASK", "DASK_DASHBOARD"):
        monkeypatch.delenv(f"ECGSSL_STACK_{key}_PORT", raising=False)
    stack = mod.Stack(tmp_path)
    assert stack.ports == {"postgres": SPEC["postgres"]["port"], "prefect": SPEC["prefect"]["port"],
                           "mlflow": SPEC["mlflow"]["port"], "dask": SPEC["dask"]["scheduler_port"],
                           "dask_dashboard": SPEC["dask"]["dashboard_port"]}  # fmt: skip
    assert stack.prefect_api == f"http://{SPEC['bind']}:{SPEC['prefect']['port']}/api"
    assert stack.dask_address == f"tls://{SPEC['bind']}:{SPEC['dask']['scheduler_port']}"
    assert {p.name for p in stack.tls_paths().values()} == {SPEC["dask"]["tls"][k] for k in ("ca", "cert", "key")}
    assert {stack.secret_path(k).name for k in SPEC["secrets"]} == set(SPEC["secrets"].values())
    dask_env = stack.dask_env()
    for name in SPEC["client_env"]["dask"]:
        assert name in dask_env, name
    lines = "\n".join(stack.env_lines())
    for names in SPEC["client_env"].values():
        for name in names:
            assert re.search(rf"^export {name}=", lines, re.M), name
    monkeypatch.setenv("ECGSSL_STACK_MLFLOW_PORT", "15000")
    assert mod.Stack(tmp_path).mlflow_uri == f"http://{SPEC['bind']}:15000"
