"""No credential in the deployment files: every password, key and auth string comes from a secret file.

Checks every command, entrypoint, healthcheck, URL and environment value of the compose files and work-pool
templates under infra/ (not only a few variable names), and the secure multi-host setup: Dask mutual TLS,
Prefect API auth, MLflow basic auth with bucket-scoped object-store credentials, read-only data for Dask
workers, no published database or object-store ports.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
CREDENTIAL = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|AUTH_STRING|PRIVATE_KEY|API_KEY", re.I)
EXPANSION = re.compile(r"\$\$?\{?([A-Za-z_][A-Za-z0-9_]*)")
USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@:'\"]*:([^/\s@'\"]+)@", re.I)
ASSIGNMENT = re.compile(
    r"\b([A-Za-z_]*(?:PASSWORD|SECRET|TOKEN|AUTH_STRING)[A-Za-z_]*)=(\"?)(\$\$?\(cat [^)]*\)|[^\s\";]*)"
)
DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-[^}]*)?\}")  # ${VAR:-default} -> ${VAR}
FROM_SECRET_FILE = re.compile(r"^\$\$?\(cat /run/secrets/[A-Za-z0-9_.-]+\)$")


def credential_problems(text: str) -> list[str]:
    """What in ``text`` (a command, URL or value) puts a credential where it does not belong."""
    problems = []
    text = DEFAULTED.sub(lambda m: "${" + m.group(1) + "}", text)
    for name in EXPANSION.findall(text):
        if CREDENTIAL.search(name) and not name.upper().endswith("_FILE"):
            problems.append(f"expands the credential variable {name}")
    for password in USERINFO.findall(text):
        if not FROM_SECRET_FILE.match(password):
            problems.append(f"a URL carries a password ({password[:6]}...)")
    for name, _, value in ASSIGNMENT.findall(text):
        if not FROM_SECRET_FILE.match(value) and not name.upper().endswith("_FILE"):
            problems.append(f"assigns {name} a value that is not read from /run/secrets")
    if re.search(r"--password[= ]\S", text):
        problems.append("passes --password on a command line")
    return problems


def env_problems(env) -> list[str]:
    if isinstance(env, dict):
        items = list(env.items())
    else:  # the list form: ["KEY=value", ...]
        items = [tuple((str(e).split("=", 1) + [""])[:2]) for e in env or []]
    out = []
    for key, value in items:
        if CREDENTIAL.search(str(key)) and not str(key).upper().endswith("_FILE"):
            out.append(f"environment sets the credential {key}")
        out += [f"{key}: {p}" for p in credential_problems(str(value))]
    return out


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    return []


def compose_files() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((INFRA / "compose").glob("*.yml"))}


def service_problems(svc: dict) -> list[str]:
    out = env_problems(svc.get("environment") or {})
    for field in ("command", "entrypoint", "healthcheck", "labels", "build"):
        for text in strings(svc.get(field)):
            out += [f"{field}: {p}" for p in credential_problems(text)]
    return out


def test_the_checker_catches_what_it_must():
    bad = {
        "environment": {"DB_URL": "postgresql://u:${POSTGRES_PASSWORD}@db/x", "MINIO_ROOT_PASSWORD": "${X}",
                        "AUTH": "$${PREFECT_API_AUTH_STRING}"},
        "command": "mlflow server --backend-store-uri postgresql://u:hunter2@db/x && PGPASSWORD=hunter2 psql",
    }  # fmt: skip
    found = " | ".join(service_problems(bad))
    for what in ("POSTGRES_PASSWORD", "credential MINIO_ROOT_PASSWORD", "PREFECT_API_AUTH_STRING",
                 "URL carries a password", "assigns PGPASSWORD"):  # fmt: skip
        assert what in found, what
    good = {"environment": {"POSTGRES_PASSWORD_FILE": "/run/secrets/p", "URL": "postgresql+asyncpg://u@db/x"},
            "command": ['export PGPASSWORD="$$(cat /run/secrets/postgres_password)"; exec server']}  # fmt: skip
    assert service_problems(good) == []


@pytest.mark.parametrize("file", sorted(p.name for p in (INFRA / "compose").glob("*.yml")))
def test_no_credential_in_any_command_url_or_environment_value(file):
    doc = compose_files()[file]
    problems = [f"{name}: {p}" for name, svc in (doc.get("services") or {}).items() for p in service_problems(svc)]
    assert not problems, f"{file}: " + "; ".join(problems)
    for name, svc in (doc.get("services") or {}).items():  # every secret a service names is declared as a file
        for secret in svc.get("secrets") or []:
            assert secret in (doc.get("secrets") or {}), f"{file}:{name}: secret {secret} is not declared"


def test_work_pool_templates_and_env_example_hold_no_credentials():
    for path in sorted((INFRA / "work-pools").glob("*.json")):
        tpl = json.loads(path.read_text())
        env = tpl["variables"]["properties"].get("env", {}).get("default") or {}
        assert not env_problems(env), (path.name, env_problems(env))
        assert not [p for s in strings(tpl) for p in credential_problems(s)], path.name
    for line in (INFRA / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key = line.split("=", 1)[0].strip()
            assert not CREDENTIAL.search(key), f".env.example sets the credential {key}: use a secret file"
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.suffix in (".sh", ".yml", ".yaml", ".json", ".example", ".py", "") and \
                "secrets" not in path.parts:  # fmt: skip
            text = DEFAULTED.sub(lambda m: "${" + m.group(1) + "}", path.read_text(errors="replace"))
            assert all(FROM_SECRET_FILE.match(p) for p in USERINFO.findall(text)), f"{path}: URL with a password"


def test_multi_host_setup_is_authenticated_and_least_privileged():
    c = compose_files()
    dask = c["dask.yml"]["services"]
    for name in ("dask-scheduler", "dask-worker"):
        cmd = dask[name]["command"]
        assert "--tls-cert" in cmd and "--tls-key" in cmd and "--tls-ca-file" in cmd, name
        assert dask[name]["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "true"
    assert "tls://dask-scheduler:8786" in dask["dask-worker"]["command"]
    assert all(v.endswith(":ro") for v in dask["dask-worker"]["volumes"]), "Dask workers must not write the data"
    assert not any("8787" in str(p) for p in dask["dask-scheduler"].get("ports", [])), "dashboard published"

    prefect = c["prefect.yml"]["services"]
    assert "PREFECT_SERVER_API_AUTH_STRING=" in " ".join(strings(prefect["prefect-server"]["command"]))
    assert "prefect_auth_string" in prefect["prefect-server"]["secrets"]
    assert not prefect["postgres"].get("ports"), "the database needs no published port"

    mlflow = c["mlflow.yml"]["services"]
    command = " ".join(strings(mlflow["mlflow"]["command"]))
    assert "--app-name basic-auth" in command and "MLFLOW_AUTH_CONFIG_PATH" in mlflow["mlflow"]["environment"]
    key_id = mlflow["mlflow"]["environment"]["AWS_ACCESS_KEY_ID"]
    assert "MINIO_ROOT" not in key_id, "MLflow must not get the object store's root keys"
    assert "minio_root_password" not in mlflow["mlflow"]["secrets"]
    assert "mlflow-artifacts" in " ".join(strings(mlflow["minio-bucket"]["command"]))  # the scoped policy
    assert not mlflow["minio"].get("ports"), "MinIO is reached by MLflow only"
    for name in ("worker-cpu", "worker-gpu"):
        svc = c["workers.yml"]["services"][name]
        assert "PREFECT_API_AUTH_STRING=" in " ".join(strings(svc["command"]))


# Where infra/local/stack.py may put a value it read from a secret file: the environment of a process (under a
# credential's name), an HTTP basic-auth header, a mode-600 file (_write_private), or psql's standard input.
LOCAL_STACK = INFRA / "local" / "stack.py"
ALLOWED_HOLDERS = {"auth", "password"}  # requests' auth=, the SQL fed to psql over stdin


def _secret_reads(tree: ast.AST) -> list[tuple[ast.Call, list[ast.AST]]]:
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "secret":
            chain, cur = [], node
            while cur in parents:
                cur = parents[cur]
                chain.append(cur)
            found.append((node, chain))
    return found


def local_stack_problems(source: str) -> list[str]:
    """Each secret read must reach an allowed holder, and a list or f-string on the way (a command line, a URL)
    only when that holder is a private file."""
    problems = []
    for call, chain in _secret_reads(ast.parse(source)):
        where, inside = f"line {call.lineno}", False
        for node in chain:
            if isinstance(node, (ast.List, ast.JoinedStr)):
                inside = True
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_write_private":
                break  # a mode-600 file: anything goes
            elif isinstance(node, ast.keyword):
                if not (node.arg in ALLOWED_HOLDERS or node.arg == "PGPASSWORD" or CREDENTIAL.search(node.arg or "")):
                    problems.append(f"{where}: a secret passed as {node.arg}=")
                elif inside:
                    problems.append(f"{where}: a secret inside a list or f-string (a command line, a URL)")
                break
            elif isinstance(node, ast.Assign):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                if not names & ALLOWED_HOLDERS:
                    problems.append(f"{where}: a secret assigned to {sorted(names)}"
                                    + (" inside a list or f-string (a command line, a URL)" if inside else ""))
                break
            elif isinstance(node, ast.FunctionDef):
                problems.append(f"{where}: a secret read in {node.name}() reaches no allowed holder")
                break
    return problems


def test_the_local_stack_checker_catches_what_it_must():
    bad = (
        "def f(self):\n"
        "    cmd = ['mlflow', 'server', '--password', self.secret('mlflow_admin')]\n"
        "    url = f'postgresql://u:{self.secret(\"postgres\")}@h/db'\n"
        "    run(cmd, extra=self.secret('x'))\n"
    )
    found = " | ".join(local_stack_problems(bad))
    assert "list or f-string" in found and "extra=" in found, found
    good = (
        "def f(self):\n"
        "    env.update(PGPASSWORD=self.secret('postgres'), PREFECT_SERVER_API_AUTH_STRING=self.secret('p'))\n"
        "    _write_private(ini, f'admin_password = {self.secret(\"m\")}')\n"
        "    auth = tuple(self.secret('p').split(':', 1))\n"
    )
    assert local_stack_problems(good) == []


def test_local_stack_hands_credentials_only_to_environments_headers_and_private_files():
    source = LOCAL_STACK.read_text()
    assert _secret_reads(ast.parse(source)), "the checker found no secret read: did the accessor change name?"
    assert local_stack_problems(source) == []
    # its credential files are created mode 600 in a mode 700 folder; nothing prints a secret's value
    assert "0o600" in source and "0o700" in source
    assert not re.search(r"print\([^)]*secret\(", source)
    wrapper = (INFRA / "local" / "stack.sh").read_text()
    assert not CREDENTIAL.search(wrapper.replace("ECGSSL_CREDENTIALS", "")), "the wrapper handles no credential"
