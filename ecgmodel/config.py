"""Shared helpers for the typed configs of ecgssl.

Every stage has a pydantic model (``IngestConfig``, ``PretrainConfig``, ``FinetuneConfig``, ...) whose fields
are documented key by key. The same model validates CLI flags, Prefect parameters and files, so a config is
checked once, the same way, wherever it comes from. This module gives them three common operations:

* :func:`flatten` - ``{"model.d_model": 128, ...}`` for MLflow params;
* :func:`config_hash` - a stable short hash of the full config (tags, cache keys, run names);
* :func:`apply_overrides` - ``--set key=value`` / Prefect ``overrides`` applied with validation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) config into dotted keys: ``{"optim.lr": 3e-4}``."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def config_hash(cfg: BaseModel | dict[str, Any], length: int = 12) -> str:
    """Stable hash of a config: same values -> same hash, whatever the key order or Python process."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: M, overrides: list[str] | dict[str, Any] | None) -> M:
    """Return a validated copy of ``cfg`` with dotted-key overrides applied.

    ``overrides`` is a list of ``"key=value"`` strings (values parsed as JSON when they parse, else kept as
    strings) or a dict ``{"optim.lr": 1e-3}``. Unknown keys raise ``KeyError`` naming the key.
    """
    if not overrides:
        return cfg
    if isinstance(overrides, list):
        pairs: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = _parse_value(value.strip())
    else:
        pairs = dict(overrides)
    data = cfg.model_dump()
    for key, value in pairs.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"unknown config key {key!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise KeyError(f"unknown config key {key!r}")
        node[parts[-1]] = value
    return type(cfg).model_validate(data)
