"""MLflow conventions shared by pretraining, fine-tuning and ablations.

* Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` (one file, no server).
* Every run is tagged with the git commit, the config hash, the store's content hash and, when the run is
  driven by Prefect, the flow-run id (passed in by the Prefect task: this library never imports prefect).
* Every experiment the project creates carries the tag ``mlflow.experimentKind = custom_model_development``
  (:data:`EXPERIMENT_KIND`): the MLflow 3 UI opens experiments without it in its GenAI view; with it, in the
  model-training view (runs, metrics, charts). The value is the UI's own enumeration (mlflow 3.17).
* Metrics are batched (:class:`MetricBuffer`) because each SQLite write costs ~5 ms.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# mlflow.pytorch.log_model / registry calls are not thread-safe (seen crashing from two threads).
MLFLOW_WRITE_LOCK = threading.Lock()


def tracking_uri() -> str:
    """The MLflow tracking URI in force: the environment's, else a SQLite file in the working directory."""
    uri = os.environ.get(DEFAULT_TRACKING_URI_ENV)
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def setup_mlflow(experiment: str, uri: str | None = None) -> str:
    """Point mlflow at ``uri`` (or :func:`tracking_uri`) and select ``experiment``; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(uri or tracking_uri())
    exp = mlflow.set_experiment(experiment)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit of the code (``"unknown"`` outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(
    *,
    config_hash: str | None = None,
    store_hash: str | None = None,
    store_path: str | Path | None = None,
    flow_run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The standard tag set of an ecgssl MLflow run."""
    tags = {"ecgssl.git_commit": git_commit()}
    if config_hash:
        tags["ecgssl.config_hash"] = config_hash
    if store_hash:
        tags["ecgssl.store_hash"] = store_hash
    if store_path:
        tags["ecgssl.store_path"] = str(store_path)
    flow_run_id = flow_run_id or os.environ.get("PREFECT__FLOW_RUN_ID")
    if flow_run_id:
        tags["prefect.flow_run_id"] = str(flow_run_id)
    for key, value in (extra or {}).items():
        tags[key] = str(value)
    return tags


class MetricBuffer:
    """Collects metrics and writes them in one ``log_batch`` call per flush.

    Usage: ``buf.add({"loss": 0.3}, step)``; ``buf.flush()`` every N steps and at the end.
    """

    def __init__(self, run_id: str, client: Any | None = None, max_items: int = 500):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = client or MlflowClient()
        self.max_items = max_items
        self._items: list[Any] = []

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self._items.append(Metric(key=key, value=float(value), timestamp=ts, step=int(step)))
        if len(self._items) >= self.max_items:
            self.flush()

    def flush(self) -> None:
        while self._items:
            batch, self._items = self._items[:1000], self._items[1000:]
            self.client.log_batch(self.run_id, metrics=batch)


# ---------------------------------------------------------------------------------------------- model registry
#: The alias the pipeline sets on a version that passed its gate (docs/use.md "Registry"); deployments and the
#: CLI default to ``models:/<name>@champion``.
CHAMPION = "champion"
ENCODER_MODEL = "ecgssl-encoder"
DEFAULT_ENCODER_URI = f"models:/{ENCODER_MODEL}@{CHAMPION}"


def classifier_model_name(task: str) -> str:
    """Registered name of a task's deployable classifier: ``ecgssl-<task>``."""
    return f"ecgssl-{task}"


def register_version(
    name: str, source: str, run_id: str | None = None, tags: Mapping[str, str] | None = None,
    description: str | None = None, model_description: str | None = None,
) -> str:
    """A new version of registered model ``name`` (created when missing) on the MLflow model at ``source``
    (``runs:/...`` or an artifact URI); returns the version number."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with MLFLOW_WRITE_LOCK:
        try:
            client.create_registered_model(name, description=model_description)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        mv = client.create_model_version(name, source=source, run_id=run_id,
                                         tags={k: str(v) for k, v in (tags or {}).items()},
                                         description=description)  # fmt: skip
    return str(mv.version)


def apply_gate(name: str, version: str, passed: bool, rule: str, detail: str, move_alias: bool = True) -> bool:
    """Record a gate's outcome on a model version (tags ``ecgssl.gate``, ``ecgssl.gate_passed``,
    ``ecgssl.gate_detail``) and, with ``move_alias``, point the :data:`CHAMPION` alias at it only when it passed.
    Returns ``passed``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with MLFLOW_WRITE_LOCK:
        client.set_model_version_tag(name, version, "ecgssl.gate", rule)
        client.set_model_version_tag(name, version, "ecgssl.gate_passed", str(bool(passed)).lower())
        client.set_model_version_tag(name, version, "ecgssl.gate_detail", detail[:5000])
        if passed and move_alias:
            client.set_registered_model_alias(name, CHAMPION, version)
    return bool(passed)


def resolve_model_uri(uri: str) -> tuple[str, str | None]:
    """``(name, version)`` of a ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` URI (the alias
    resolved); raises ``mlflow.exceptions.MlflowException`` when the model, version or alias does not exist."""
    from mlflow.tracking import MlflowClient

    body = uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.partition("/")
    return name, str(client.get_model_version(name, version).version)
