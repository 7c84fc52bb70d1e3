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


def shared_dir() -> Path:
    """The shared material beside the checkout (``../shared``), or ``$ECGSSL_SHARED``."""
    env = os.environ.get("ECGSSL_SHARED")
    path = Path(env) if env else REPO.parent / "shared"
    if not (path / "physionet").is_dir():
        raise RuntimeError(f"shared test material not found at {path} (set ECGSSL_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def physionet_mirror(shared: Path) -> Path:
    return shared / "physionet"


def pytest_sessionfinish(session, exitstatus):
    """Prefect stops its temporary server at interpreter exit and logs it at INFO; by then pytest has closed the
    captured streams, so the record would end as a 'Logging error' traceback. Keep only warnings from here on."""
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
