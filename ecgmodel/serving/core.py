"""The numerics of a served model: harmonised records -> per-record probabilities, labels or embeddings.

Classifier: the records' windows go through :func:`ecgmodel.downstream.evaluate.predict_records`, the function
evaluation uses (crops tiling every window, standardised per lead, probabilities aggregated per record), so a
prediction equals the number the test metrics were computed from. Encoder: :func:`ecgmodel.embed.embed_windows`,
the numbers of ``ecgssl embed``.

A fine-tuned model file (``model.pt``, format ``ecgssl-downstream``) is loaded by :func:`load_classifier`: with
``ecgmodel.downstream.model.load_downstream_model``, which rebuilds every ``arch`` (the transformer encoder + head,
or the supervised xresnet1d).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ecgmodel.errors import UserError
from ecgmodel.serving.contract import ClassSpec, Contract
from ecgmodel.serving.inputs import Prepared

DOWNSTREAM_FORMAT = "ecgssl-downstream"


def read_downstream_file(path: str | Path) -> dict[str, Any]:
    """The payload of a fine-tuned ``model.pt`` (weights_only); UserError when it is not one of this project."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist", "ecgssl finetune ... (writes <out>/model.pt)") from None
    except Exception as e:  # noqa: BLE001 - a torn or foreign file
        raise UserError(f"{path} is not a fine-tuned ecgssl model (unreadable: {type(e).__name__})",
                        "ecgssl finetune --task TASK --store STORE --init URI (writes <out>/model.pt)") from None  # fmt: skip
    if not isinstance(obj, dict) or obj.get("format") != DOWNSTREAM_FORMAT:
        raise UserError(f"{path} is not a fine-tuned ecgssl model (format is not {DOWNSTREAM_FORMAT!r})",
                        "ecgssl finetune --task TASK --store STORE --init URI (writes <out>/model.pt)")  # fmt: skip
    return obj


def load_classifier(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, payload without the weights) of a fine-tuned ``model.pt``."""
    obj = read_downstream_file(path)
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    from ecgmodel.downstream.model import load_downstream_model

    model, _ = load_downstream_model(path)
    return model.eval(), meta


def input_samples_of(model: torch.nn.Module, meta: dict[str, Any]) -> int:
    if meta.get("input_samples"):
        return int(meta["input_samples"])
    cfg = getattr(getattr(model, "encoder", None), "cfg", None)
    if cfg is not None and getattr(cfg, "input_samples", None):
        return int(cfg.input_samples)
    return int(meta["encoder_config"]["input_samples"])


def class_specs(task: str, classes: Sequence[str], thresholds: Sequence[float] | None) -> list[ClassSpec]:
    """Names, codes and descriptions of a task's classes (arrhythmia27: the Challenge abbreviations and SNOMED
    codes; merged equivalent codes joined by '|')."""
    names, codes, descr = list(classes), list(classes), [""] * len(classes)
    if task == "arrhythmia27":
        from ecgmodel.data import labels as L

        d = L.label_definition_table(merged=True)
        by_code = {str(r.code): r for r in d.itertuples(index=False)}
        for i, c in enumerate(classes):
            row = by_code.get(str(c))
            if row is not None:
                names[i], descr[i] = str(row.abbreviation), str(row.name)
                group = str(getattr(row, "equivalence_group", "") or "")
                codes[i] = group.replace("=", "|") if group else str(c)
    thr = list(thresholds) if thresholds is not None else [None] * len(classes)
    return [ClassSpec(name=n, code=c, description=t, threshold=None if h is None else float(h))
            for n, c, t, h in zip(names, codes, descr, thr, strict=True)]  # fmt: skip


def classifier_contract(meta: dict[str, Any], model: torch.nn.Module, fs: int = 500, window_samples: int = 5000,
                        max_windows: int | None = None) -> Contract:
    """The contract of a fine-tuned model (its task, classes, thresholds, crop and aggregation)."""
    ft = meta.get("finetune_config") or {}
    task = str(meta.get("task") or ft.get("task"))
    return Contract(kind="classifier", task=task, fs=fs, window_samples=window_samples, max_windows=max_windows,
                    input_samples=input_samples_of(model, meta), crop_aggregation=ft.get("eval_aggregate", "mean"),
                    min_std_uv=10.0, multilabel=task in ("arrhythmia27", "ptbxl-superclass"),
                    classes=class_specs(task, meta["classes"], meta.get("thresholds")))  # fmt: skip


def _window_set(records: Sequence[Prepared]):
    from ecgmodel.downstream.dataset import WindowSet

    sig = np.concatenate([r.signal for r in records])
    present = np.concatenate([np.repeat(np.asarray(r.lead_present, bool)[None], r.n_windows, 0) for r in records])
    valid = np.concatenate([np.asarray(r.valid_length, np.int64) for r in records])
    owner = np.repeat(np.arange(len(records)), [r.n_windows for r in records])
    frame = pd.DataFrame({"record": [r.record for r in records]})
    return WindowSet(sig, present, valid, owner, np.zeros(len(records)), frame)


@torch.no_grad()
def classify(model: torch.nn.Module, contract: Contract, records: Sequence[Prepared], batch_size: int = 64,
             device: str = "cpu") -> np.ndarray:
    """Per-record probabilities (n, C) of usable ``records`` (evaluation's crop aggregation)."""
    from ecgmodel.downstream.evaluate import predict_records

    if not records:
        return np.zeros((0, len(contract.classes)))
    model = model.to(device).eval()
    return predict_records(model, _window_set(records), contract.input_samples, contract.multilabel, batch_size,
                           device, aggregate=contract.crop_aggregation)  # fmt: skip


def prediction_frame(probs: np.ndarray, contract: Contract) -> pd.DataFrame:
    """``prob_<class>`` (float), ``label_<class>`` (bool) and ``labels`` (';'-joined positive classes) per row.
    Multi-label: a class is positive at or above its tuned threshold; single-label: the most probable class."""
    names = contract.class_names()
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(names))
    if contract.multilabel:
        labels = probs >= np.asarray(contract.thresholds())[None, :]
    else:
        labels = np.zeros_like(probs, dtype=bool)
        if len(probs):
            labels[np.arange(len(probs)), probs.argmax(axis=1)] = True
    cols: dict[str, Any] = {f"prob_{n}": probs[:, i] for i, n in enumerate(names)}
    cols.update({f"label_{n}": labels[:, i] for i, n in enumerate(names)})
    cols["labels"] = [";".join(n for n, on in zip(names, row, strict=True) if on) for row in labels]
    return pd.DataFrame(cols)


@torch.no_grad()
def embed(encoder: torch.nn.Module, contract: Contract, records: Sequence[Prepared], batch_size: int = 32,
          device: str = "cpu") -> np.ndarray:
    """float32 (n, dim) embeddings of usable ``records`` (the numbers of ``ecgssl embed``)."""
    from ecgmodel.embed import embed_windows

    if not records:
        return np.zeros((0, 0), np.float32)
    ws = _window_set(records)
    return embed_windows(encoder.to(device).eval(), contract.input_samples, ws.signal, ws.lead_present,
                         ws.valid_length, ws.record_index, len(records), pooling=contract.pooling or "mean-max",
                         batch_size=batch_size, device=device, min_std_uv=contract.min_std_uv)  # fmt: skip
