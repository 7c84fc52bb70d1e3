"""Predictions (``ecgssl predict``) and embeddings (``ecgssl embed --input``) for your own ECG files.

    table = predict_inputs("models:/ecgssl-arrhythmia27@champion", ["my_ecgs/", "patient7.edf"])
    write_table(table, "predictions.csv")

``model``: a registered model (``models:/<name>/<version>``, ``models:/<name>@<alias>``), ``runs:/<id>/<path>``, a
downloaded MLflow model folder, or a fine-tuned ``model.pt``. Inputs: WFDB headers, folders of WFDB/EDF files,
EDF files, ecgssl stores (:mod:`ecgmodel.serving.inputs`: ingest's harmonisation). One row per record, in input
order: ``record``, ``input``, ``n_windows``, ``prob_<class>``, ``label_<class>``, ``labels``, ``warnings``
(``; ``-joined) and ``error`` (the one-line reason a record could not be used; its other cells are empty).
The numbers are the pyfunc model's (:mod:`ecgmodel.serving.core`): evaluation's crop aggregation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecgmodel.errors import UserError
from ecgmodel.serving.contract import CONTRACT_FILE, Contract
from ecgmodel.serving.inputs import Prepared, prepare_inputs

BATCH_RECORDS = 64  # records harmonised and predicted together (memory stays flat over a large folder)
FIX_MODEL = "ecgssl finetune --task TASK --store STORE --init URI --register (then --model models:/ecgssl-TASK/N)"


@dataclass
class LoadedModel:
    kind: str  # "classifier" or "encoder"
    model: Any  # torch module
    contract: Contract
    source: str


def local_model_path(uri: str) -> Path:
    """A local folder (or file) for a model reference; UserError when it cannot be found."""
    if Path(uri).exists():
        return Path(uri)
    if not uri.startswith(("models:/", "runs:/")):
        raise UserError(f"--model {uri!r} is neither an existing path nor a models:/ or runs:/ URI", FIX_MODEL)
    import mlflow
    from mlflow.exceptions import MlflowException

    from ecgmodel.tracking import tracking_uri

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri()))
    except (MlflowException, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--model {uri}: not found in the MLflow tracking store {tracking_uri()} ({first[:200]})",
                        "ecgssl ui  # the Models page lists registered names, versions and aliases") from None  # fmt: skip


def load_model(uri: str | os.PathLike, store_settings: dict[str, Any] | None = None) -> LoadedModel:
    """The classifier or encoder behind ``uri`` with its contract (module docstring)."""
    from ecgmodel.serving.core import classifier_contract, load_classifier

    text = str(uri)
    local = local_model_path(text)
    if local.is_file():  # a fine-tuned model.pt, or an encoder / checkpoint file
        try:
            model, meta = load_classifier(local)
        except UserError:
            from ecgmodel.train.checkpoint import load_encoder

            try:
                enc, cfg = load_encoder(local)
            except Exception:  # noqa: BLE001 - neither kind of file
                raise UserError(f"--model {text} is not an ecgssl model (neither a fine-tuned model.pt nor an "
                                "encoder/checkpoint file)", FIX_MODEL) from None  # fmt: skip
            contract = Contract(kind="encoder", input_samples=cfg.input_samples, pooling="mean-max",
                                **(store_settings or {}))  # fmt: skip
            return LoadedModel("encoder", enc.eval(), contract, text)
        return LoadedModel("classifier", model, classifier_contract(meta, model, **(store_settings or {})), text)
    contract_file = local / CONTRACT_FILE
    if not contract_file.is_file():
        from ecgmodel.train.checkpoint import load_encoder

        try:  # an encoder folder of an older run (encoder.pt without a contract)
            enc, cfg = load_encoder(local)
        except Exception:  # noqa: BLE001
            raise UserError(f"--model {text} is not an ecgssl model (no {CONTRACT_FILE} in {local})", FIX_MODEL) from None
        contract = Contract(kind="encoder", input_samples=cfg.input_samples, pooling="mean-max", **(store_settings or {}))
        return LoadedModel("encoder", enc.eval(), contract, text)
    contract = Contract.read(contract_file)
    if contract.kind == "classifier":
        model, _ = load_classifier(local / "artifacts" / "model.pt")
        return LoadedModel("classifier", model, contract, text)
    from ecgmodel.train.checkpoint import load_encoder

    enc, _ = load_encoder(local / "encoder.pt")
    return LoadedModel("encoder", enc.eval(), contract, text)


def _batches(records, size: int):
    batch: list[Prepared] = []
    for r in records:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_inputs(model: str | LoadedModel, inputs: Sequence[str | os.PathLike], batch_size: int = 64,
                   device: str = "cpu") -> pd.DataFrame:
    """One row per input record (module docstring) from a classifier."""
    from ecgmodel.serving.core import classify, prediction_frame

    m = model if isinstance(model, LoadedModel) else load_model(model)
    if m.kind != "classifier":
        raise UserError(f"--model {m.source} is an encoder: it gives embeddings, not predictions",
                        f"ecgssl embed --encoder {m.source} --input ... --out FILE.parquet")  # fmt: skip
    frames = []
    for batch in _batches(prepare_inputs(inputs, m.contract), BATCH_RECORDS):
        ok = [r for r in batch if r.ok]
        pred = prediction_frame(classify(m.model, m.contract, ok, batch_size, device), m.contract)
        pred.index = [i for i, r in enumerate(batch) if r.ok]
        base = _base_frame(batch)
        frames.append(base.join(pred).reindex(columns=[*base.columns[:3], *pred.columns, *base.columns[3:]]))
    table = pd.concat(frames, ignore_index=True)
    labels = [c for c in table.columns if c.startswith("label_")]
    table[labels] = table[labels].astype("boolean")  # empty (<NA>) for a record that could not be used
    table["labels"] = table["labels"].fillna("")
    return table


def _base_frame(batch: Sequence[Prepared]) -> pd.DataFrame:
    return pd.DataFrame({
        "record": [r.record for r in batch],
        "input": [r.input for r in batch],
        "n_windows": [r.n_windows for r in batch],
        "warnings": ["; ".join(r.warnings) for r in batch],
        "error": [r.error or "" for r in batch],
    })


def embed_inputs(encoder: str | LoadedModel, inputs: Sequence[str | os.PathLike], pooling: str | None = None,
                 batch_size: int = 32, device: str = "cpu") -> pd.DataFrame:
    """One row per input record: record, input, n_windows, warnings, error, vector (float32; NaN when unusable)."""
    from ecgmodel.serving.core import embed

    m = encoder if isinstance(encoder, LoadedModel) else load_model(encoder)
    if m.kind != "encoder":
        raise UserError(f"--encoder {m.source} is a classifier, not an encoder",
                        "ecgssl embed --encoder models:/ecgssl-encoder@champion --input ...")  # fmt: skip
    contract = m.contract.model_copy(update={"pooling": pooling}) if pooling else m.contract
    frames, dim = [], None
    for batch in _batches(prepare_inputs(inputs, contract), BATCH_RECORDS):
        ok = [r for r in batch if r.ok]
        X = embed(m.model, contract, ok, batch_size, device) if ok else None
        if X is not None:
            dim = X.shape[1]
        rows, j = [], 0
        for r in batch:
            if r.ok:
                rows.append(X[j])
                j += 1
            else:
                rows.append(None)
        frame = _base_frame(batch)
        frame["vector"] = rows
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    dim = dim or 0
    table["vector"] = [np.full(dim, np.nan, np.float32) if v is None else v for v in table["vector"]]
    return table


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path; UserError unless it ends in .csv or .parquet."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise UserError(f"--out {out}: unknown table format {out.suffix or '(no suffix)'} (rule: .csv or .parquet)",
                        f"ecgssl predict ... --out {out.with_suffix('.csv')}")  # fmt: skip
    return out


def write_table(table: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write predictions as ``.csv`` or ``.parquet`` (by suffix), atomically."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix.lower() == ".csv":
        table.to_csv(tmp, index=False)
    else:
        table.to_parquet(tmp, index=False)
    tmp.replace(out)
    return out


def summary(table: pd.DataFrame, out: Path | None, seconds: float) -> dict[str, Any]:
    errors = table[table["error"] != ""]
    return {"out": str(out) if out else None, "records": len(table), "predicted": int(len(table) - len(errors)),
            "unusable": int(len(errors)), "with_warnings": int((table["warnings"] != "").sum()),
            "seconds": round(seconds, 2)}  # fmt: skip


def predict_to_file(model: str, inputs: Sequence[str], out: str | None = None, batch_size: int = 64,
                    device: str = "cpu") -> tuple[pd.DataFrame, dict[str, Any]]:
    """``ecgssl predict``: the table (written to ``out`` when given) and a small summary."""
    t0 = time.perf_counter()
    if out:
        check_out(out)  # before any work
    table = predict_inputs(model, inputs, batch_size, device)
    path = write_table(table, out) if out else None
    return table, summary(table, path, time.perf_counter() - t0)
