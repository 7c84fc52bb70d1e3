"""Save and log the encoder and the classifiers as MLflow pyfunc models.

Every model folder holds the ``MLmodel`` file with the signature (named tensors ``signal`` float32
``(-1, 12, -1)`` and ``lead_present`` bool ``(-1, 12)``), an input example cut from a real record of the store the
model was trained on, ``contract.json`` (:mod:`ecgmodel.serving.contract`: lead order, rate, units, window, crop
aggregation; classes with their SNOMED codes and tuned thresholds) and the weights. The encoder's folder also
keeps ``encoder.pt`` and ``config.json`` at its top, where :func:`ecgmodel.train.checkpoint.load_encoder` finds
them, so a registered encoder loads both ways.

    save_classifier_model("out/classifier", "runs/finetune/x/model.pt", store="data/store.zarr")
    uri = log_model_folder(run_id, "out/classifier", "classifier")   # runs:/<run_id>/classifier
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ecgmodel.serving.contract import CONTRACT_FILE, Contract

MODEL_CARD = "model_card.md"


def requirements() -> list[str]:
    """Pinned requirements of a served model (the versions in this environment)."""
    out = []
    for dist in ("mlflow", "torch", "numpy", "pandas", "pydantic", "scipy", "wfdb"):
        try:
            out.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(dist)
    return out


def store_settings(store: str | Path) -> dict[str, Any]:
    """``fs``, ``window_samples`` and ``max_windows`` (when all sources agree) of the store a model learned from."""
    from ecgmodel.data.store import open_store

    st = open_store(store)
    caps = {(s.get("settings") or {}).get("max_windows") for s in st.attrs["sources"].values()}
    return {"fs": st.fs, "window_samples": st.window_samples,
            "max_windows": caps.pop() if len(caps) == 1 else None}  # fmt: skip


def example_from_store(store: str | Path, contract: Contract, max_windows: int = 1) -> dict[str, np.ndarray]:
    """The pyfunc input of the first record of ``store`` (its first ``max_windows`` windows): a real record."""
    from ecgmodel.serving.inputs import prepare_store, to_model_input

    rec = next(prepare_store(Path(store), contract))
    rec.signal, rec.valid_length = rec.signal[:max_windows], rec.valid_length[:max_windows]
    return to_model_input([rec])


def signature(contract: Contract, dim: int | None = None):
    """The model signature: named tensors in; the classifier's columns or the encoder's (n, dim) out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, len(contract.leads), -1), "signal"),
                     TensorSpec(np.dtype(bool), (-1, len(contract.leads)), "lead_present")])  # fmt: skip
    if contract.kind == "encoder":
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, dim or -1))])
    else:
        names = contract.class_names()
        outputs = Schema([ColSpec("double", f"prob_{n}") for n in names]
                         + [ColSpec("boolean", f"label_{n}") for n in names] + [ColSpec("string", "labels")])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def _save(out: Path, python_model: Any, artifacts: dict[str, str], contract: Contract,
          example: dict[str, np.ndarray] | None, dim: int | None, metadata: dict[str, Any]) -> Path:
    import mlflow.pyfunc

    if out.exists():
        shutil.rmtree(out)
    mlflow.pyfunc.save_model(str(out), python_model=python_model, artifacts=artifacts,
                             signature=signature(contract, dim), input_example=example,
                             pip_requirements=requirements(), metadata=metadata)  # fmt: skip
    return out


def save_encoder_model(out: str | Path, encoder_path: str | Path, store: str | Path | None = None,
                       pooling: str = "mean-max", extra_files: list[str | Path] = ()) -> tuple[Path, Contract]:
    """Write the encoder at ``encoder_path`` as an MLflow pyfunc model folder ``out`` (returns it and its contract)."""
    from ecgmodel.embed import _pool_dim
    from ecgmodel.serving.pyfunc import EncoderModel
    from ecgmodel.train.checkpoint import load_encoder

    out = Path(out)
    _, cfg = load_encoder(encoder_path)
    settings = store_settings(store) if store else {}
    contract = Contract(kind="encoder", input_samples=cfg.input_samples, pooling=pooling, crop_aggregation="mean",
                        **settings)  # fmt: skip
    tmp = out.parent / f".{out.name}-contract"
    tmp.mkdir(parents=True, exist_ok=True)
    contract.write(tmp / CONTRACT_FILE)
    example = example_from_store(store, contract) if store else None
    _save(out, EncoderModel(), {"encoder": str(encoder_path), "contract": str(tmp / CONTRACT_FILE)}, contract,
          example, _pool_dim(pooling, cfg), {"ecgssl_kind": "encoder", "ecgssl_contract": contract.model_dump(mode="json")})  # fmt: skip
    shutil.copy2(encoder_path, out / "encoder.pt")  # where load_encoder looks (models:/ecgssl-encoder/N)
    shutil.copy2(tmp / CONTRACT_FILE, out / CONTRACT_FILE)
    for f in extra_files:
        if Path(f).is_file():
            shutil.copy2(f, out / Path(f).name)
    shutil.rmtree(tmp, ignore_errors=True)
    return out, contract


def save_classifier_model(out: str | Path, model_path: str | Path, store: str | Path | None = None,
                          card: str | None = None, extra_files: list[str | Path] = ()) -> tuple[Path, Contract]:
    """Write the fine-tuned ``model.pt`` as an MLflow pyfunc model folder ``out`` (returns it and its contract)."""
    from ecgmodel.serving.core import classifier_contract, load_classifier
    from ecgmodel.serving.pyfunc import ClassifierModel

    out = Path(out)
    model, meta = load_classifier(model_path)
    settings = store_settings(store) if store else {}
    contract = classifier_contract(meta, model, **settings)
    tmp = out.parent / f".{out.name}-contract"
    tmp.mkdir(parents=True, exist_ok=True)
    contract.write(tmp / CONTRACT_FILE)
    example = example_from_store(store, contract) if store else None
    _save(out, ClassifierModel(), {"model": str(model_path), "contract": str(tmp / CONTRACT_FILE)}, contract, example,
          None, {"ecgssl_kind": "classifier", "ecgssl_task": contract.task})  # fmt: skip
    shutil.copy2(tmp / CONTRACT_FILE, out / CONTRACT_FILE)
    if card:
        (out / MODEL_CARD).write_text(card)
    for f in extra_files:
        if Path(f).is_file():
            shutil.copy2(f, out / Path(f).name)
    shutil.rmtree(tmp, ignore_errors=True)
    return out, contract


def log_model_folder(run_id: str, folder: str | Path, artifact_path: str) -> str:
    """Upload a saved model folder to ``run_id`` under ``artifact_path``; returns ``runs:/<run_id>/<path>``."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    with MLFLOW_WRITE_LOCK:
        MlflowClient().log_artifacts(run_id, str(folder), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def read_contract(model_dir: str | Path) -> Contract | None:
    """The contract of a downloaded ecgssl model folder (None when it is not one)."""
    p = Path(model_dir) / CONTRACT_FILE
    return Contract.read(p) if p.is_file() else None
