"""Test-wide environment: telemetry off, one PREFECT_HOME / MLflow store / Dask scratch dir per test process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_SCRATCH = Path(tempfile.mkdtemp(prefix="ecgssl-tests-"))
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# Parallel processes sharing one Prefect SQLite database lock each other out: one home per process.
os.environ["PREFECT_HOME"] = str(_SCRATCH / "prefect")
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(_SCRATCH / "dask"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SCRATCH / 'mlflow.db'}"


#: Fixtures that stand for the shared mirror; a test using any of them (directly or through another fixture)
#: needs ../shared.
SHARED_FIXTURES = ("shared", "physionet_mirror")


def shared_path() -> Path:
    """Where the shared material should be: ``$ECGSSL_SHARED`` or ``../shared`` beside the checkout."""
    env = os.environ.get("ECGSSL_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def shared_available() -> bool:
    return (shared_path() / "physionet").is_dir()


def shared_dir() -> Path:
    """The shared material beside the checkout (``../shared``), or ``$ECGSSL_SHARED``."""
    path = shared_path()
    if not (path / "physionet").is_dir():
        raise RuntimeError(f"shared test material not found at {path} (set ECGSSL_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def physionet_mirror(shared: Path) -> Path:
    return shared / "physionet"


#: Fixtures that stand for the local production stack (tests/integration/test_stack.py): they need PostgreSQL's
#: server binaries (``$ECGSSL_PG_BIN``, default the Debian path of PostgreSQL 15).
STACK_FIXTURES = ("stack",)


def pg_bin() -> Path:
    return Path(os.environ.get("ECGSSL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def postgres_available() -> bool:
    return (pg_bin() / "initdb").is_file() and (pg_bin() / "pg_ctl").is_file()


def _deselect(config: pytest.Config, items: list[pytest.Item], fixtures: tuple[str, ...], key) -> None:
    keep, dropped = [], []
    for item in items:
        needs = any(name in getattr(item, "fixturenames", ()) for name in fixtures)
        (dropped if needs else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        config.stash[key] = len(dropped)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A fresh clone has no ../shared: deselect (not skip) the tests that need it, and say so once; the same for
    the local-stack tests on a machine without PostgreSQL.

    CI always has the mirror beside the checkout and PostgreSQL installed, so there every test runs.
    ``ECGSSL_REQUIRE_SHARED=1`` / ``ECGSSL_REQUIRE_POSTGRES=1`` turn a missing mirror / PostgreSQL into an error
    instead (CI sets both, so a misplaced mirror or a missing server cannot silently shrink the suite)."""
    if not shared_available():
        if os.environ.get("ECGSSL_REQUIRE_SHARED") == "1":
            raise pytest.UsageError(
                f"ECGSSL_REQUIRE_SHARED=1 but the shared mirror is missing at {shared_path()} (set ECGSSL_SHARED)"
            )
        _deselect(config, items, SHARED_FIXTURES, _DESELECTED)
    if not postgres_available():
        if os.environ.get("ECGSSL_REQUIRE_POSTGRES") == "1":
            raise pytest.UsageError(
                f"ECGSSL_REQUIRE_POSTGRES=1 but PostgreSQL's server binaries are not in {pg_bin()} "
                "(install postgresql-15 or set ECGSSL_PG_BIN)"
            )
        _deselect(config, items, STACK_FIXTURES, _DESELECTED_PG)


_DESELECTED = pytest.StashKey[int]()
_DESELECTED_PG = pytest.StashKey[int]()


def pytest_report_header(config: pytest.Config) -> str:
    where = shared_path()
    return f"ecgssl shared mirror: {where} ({'present' if shared_available() else 'absent'})"


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    n = config.stash.get(_DESELECTED, 0)
    if n:
        terminalreporter.write_line(
            f"ecgssl: {n} tests that need the shared PhysioNet mirror were deselected: it is not at "
            f"{shared_path()} (a fresh clone has none; CI runs them with ../shared beside the checkout, "
            "or set ECGSSL_SHARED)",
            yellow=True,
        )
    n = config.stash.get(_DESELECTED_PG, 0)
    if n:
        terminalreporter.write_line(
            f"ecgssl: {n} local-stack tests were deselected: PostgreSQL's server binaries are not in {pg_bin()} "
            "(install postgresql-15, or set ECGSSL_PG_BIN; CI runs them)",
            yellow=True,
        )


def pytest_sessionfinish(session, exitstatus):
    """Prefect stops its temporary server at interpreter exit and logs it at INFO; by then pytest has closed the
    captured streams, so the record would end as a 'Logging error' traceback. Keep only warnings from here on."""
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
