"""``mlflow.pyfunc.PythonModel`` wrappers of the encoder and the fine-tuned classifiers.

Input (both): named tensors ``{"signal": float32 (n, 12, samples) mV at the contract's rate, "lead_present":
bool (n, 12)}`` (see :mod:`ecgmodel.serving.contract`). Output:

* classifier: a DataFrame, one row per record: ``prob_<class>`` (float), ``label_<class>`` (bool: at or above
  the tuned threshold; single-label tasks: the most probable class) and ``labels`` (';'-joined positives);
* encoder: float32 ``(n, dim)``, one embedding per record (``ecgssl embed``'s numbers).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


def _tensors(model_input: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(model_input, dict):
        missing = {"signal", "lead_present"} - set(model_input)
        if missing:
            raise ValueError(f"input lacks {sorted(missing)} (expected named tensors signal (n, 12, samples) float32 "
                             "mV and lead_present (n, 12) bool)")  # fmt: skip
        return np.asarray(model_input["signal"], np.float32), np.asarray(model_input["lead_present"], bool)
    raise ValueError(f"input must be a dict of named tensors signal and lead_present, got {type(model_input).__name__}")


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned ecgssl classifier (artifacts ``model`` = model.pt, ``contract`` = contract.json)."""

    def load_context(self, context) -> None:
        from ecgmodel.serving.contract import Contract
        from ecgmodel.serving.core import load_classifier

        self.contract = Contract.read(context.artifacts["contract"])
        self.model, _ = load_classifier(context.artifacts["model"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from ecgmodel.serving.core import classify, prediction_frame
        from ecgmodel.serving.inputs import from_model_input

        records = from_model_input(*_tensors(model_input), self.contract)
        bad = [r.error for r in records if not r.ok]
        if bad:
            raise ValueError("; ".join(bad))
        return prediction_frame(classify(self.model, self.contract, records), self.contract)


class EncoderModel(mlflow.pyfunc.PythonModel):
    """A pretrained ecgssl encoder (artifacts ``encoder`` = encoder.pt, ``contract`` = contract.json)."""

    def load_context(self, context) -> None:
        from ecgmodel.serving.contract import Contract
        from ecgmodel.train.checkpoint import load_encoder

        self.contract = Contract.read(context.artifacts["contract"])
        self.encoder, _ = load_encoder(context.artifacts["encoder"])
        self.encoder.eval()

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from ecgmodel.serving.core import embed
        from ecgmodel.serving.inputs import from_model_input

        records = from_model_input(*_tensors(model_input), self.contract)
        bad = [r.error for r in records if not r.ok]
        if bad:
            raise ValueError("; ".join(bad))
        return embed(self.encoder, self.contract, records)
