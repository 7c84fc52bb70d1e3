"""`ecgssl` run directly (not through make) applies the project's environment defaults, keeping the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_defaults_fill_only_what_the_user_left_unset():
    from flows.cli import ENV_DEFAULTS, apply_env_defaults

    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    applied = apply_env_defaults(env)
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"  # the user's value wins
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in applied
    assert env["DO_NOT_TRACK"] == "true" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert set(applied) == set(ENV_DEFAULTS) - {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}


def test_the_cli_entry_point_applies_them_before_prefect_reads_its_settings():
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "from prefect.settings import get_current_settings\n"
        "s = get_current_settings()\n"
        "print(s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_SERVER", "DO_NOT_TRACK", "MLFLOW_DIS"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["90", "False"], out.stdout[-500:]
