"""Checkpoints: full training state for exact resume, and the encoder artifact used downstream.

* ``save_checkpoint`` / ``load_checkpoint``: model, optimizer, scheduler, scaler, step, RNG states (python,
  numpy, torch, cuda, the pretext generator) and the loader's position, plus the config as a plain dict.
  Written atomically (temp file + rename), so a run killed mid-write keeps its previous checkpoint.
* ``save_encoder(path, encoder, cfg)`` / ``load_encoder(ref) -> (Encoder, EncoderConfig)``. ``ref`` may be a
  checkpoint or encoder file, a directory holding ``encoder.pt``, an MLflow run id, ``runs:/<id>/<path>`` or a
  registered model ``models:/ecgssl-encoder/<version>`` (or ``models:/<name>@<alias>``).

Everything is loaded with ``torch.load(weights_only=True)``: only tensors and plain containers are stored.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgmodel.models.encoder import Encoder, EncoderConfig, build_encoder

ENCODER_FORMAT = "ecgssl-encoder"
CHECKPOINT_FORMAT = "ecgssl-pretrain-checkpoint"
ENCODER_FILE = "encoder.pt"
ENCODER_ARTIFACT_DIR = "encoder"


def _atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


# ---- RNG state as plain containers --------------------------------------------------------------
def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[float(v) if isinstance(v, float) else int(v) for v in np_state[2:]]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        if name in state["generators"]:
            gen.set_state(state["generators"][name])


def save_checkpoint(path: str | Path, **state: Any) -> Path:
    """Save a full training state (plain dicts/tensors only) atomically."""
    return _atomic_save({"format": CHECKPOINT_FORMAT, "version": 1, **state}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``); raises naming the file if it is not one."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an ecgssl pretraining checkpoint")
    return ckpt


# ---- encoder artifact ----------------------------------------------------------------------------
def encoder_payload(encoder: Encoder, cfg: EncoderConfig) -> dict[str, Any]:
    return {
        "format": ENCODER_FORMAT,
        "version": 1,
        "config": cfg.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    }


def save_encoder(path: str | Path, encoder: Encoder, cfg: EncoderConfig | None = None) -> Path:
    """Write the encoder's weights and config to ``path`` (a ``.pt`` file)."""
    return _atomic_save(encoder_payload(encoder, cfg or encoder.cfg), path)


def _encoder_from_payload(obj: Any, where: str) -> tuple[Encoder, EncoderConfig]:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        cfg = EncoderConfig.model_validate(obj["config"]["encoder"])
        sd = {k[len("encoder."):]: v for k, v in obj["model"].items() if k.startswith("encoder.")}
    elif isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT:
        cfg = EncoderConfig.model_validate(obj["config"])
        sd = obj["state_dict"]
    else:
        raise ValueError(f"{where}: not an ecgssl encoder or pretraining checkpoint")
    enc = build_encoder(cfg)
    enc.load_state_dict(sd)
    return enc, cfg


def _find_file(path: Path) -> Path:
    if path.is_file():
        return path
    for cand in (path / ENCODER_FILE, path / ENCODER_ARTIFACT_DIR / ENCODER_FILE, path / "ckpt_last.pt"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{path}: no {ENCODER_FILE} (or ckpt_last.pt) found there")


def resolve_encoder_ref(ref: str | Path, tracking_uri: str | None = None) -> Path:
    """Local file for ``ref`` (downloading MLflow artifacts when ``ref`` is a run id or a runs:/ models:/ URI)."""
    text = str(ref)
    if Path(text).exists():
        return _find_file(Path(text))
    import mlflow
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    if text.startswith("models:/"):
        body = text[len("models:/"):]
        client = MlflowClient(tracking_uri=uri)
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.partition("/")
            if not version:
                raise ValueError(f"{text}: give a version (models:/<name>/<version>) or an alias (models:/<name>@<alias>)")
            mv = client.get_model_version(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, tracking_uri=uri)
    elif text.startswith("runs:/"):
        local = mlflow.artifacts.download_artifacts(artifact_uri=text, tracking_uri=uri)
    elif re.fullmatch(r"[0-9a-f]{32}", text):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{text}/{ENCODER_ARTIFACT_DIR}/{ENCODER_FILE}", tracking_uri=uri
        )
    else:
        raise FileNotFoundError(
            f"encoder reference {text!r} is neither an existing path, a run id, runs:/... nor models:/..."
        )
    return _find_file(Path(local))


def load_encoder(
    ref: str | Path, map_location: str | torch.device = "cpu", tracking_uri: str | None = None
) -> tuple[Encoder, EncoderConfig]:
    """Rebuild the encoder with its weights from ``ref`` (see module docstring). Returns (encoder, config)."""
    path = resolve_encoder_ref(ref, tracking_uri)
    obj = torch.load(path, map_location=map_location, weights_only=True)
    return _encoder_from_payload(obj, str(ref))
