"""The preprocessing contract of a logged model: what an input must be, and how a record becomes one answer.

It travels with every MLflow model as ``contract.json`` (and in the model's metadata), so a user never has to
guess the lead order, the rate or the units. The pyfunc input is two named tensors:

* ``signal``: float32 ``(n, 12, samples)``, millivolts, at ``fs`` Hz, leads in ``leads`` order; a record shorter
  than the others in a batch is padded with NaN after its end (a sample that is NaN in every lead ends the record);
* ``lead_present``: bool ``(n, 12)``, False for a lead the recording does not have (its row is ignored: give 0).

Inside, every record is cut into consecutive windows of ``window_samples`` (a trailing remainder shorter than a
window is dropped, a record shorter than one window is zero-padded; at most ``max_windows`` windows), stored as
int16 microvolts exactly as ingest stores them, every window is tiled by crops of ``input_samples``, each crop is
standardised per lead, and the record's answer aggregates its crops (``crop_aggregation``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ecgmodel.data.signal import LEADS

CONTRACT_FORMAT = "ecgssl-contract"
CONTRACT_FILE = "contract.json"


class ClassSpec(BaseModel):
    """One output of a classifier."""

    name: str = Field(description="Class identifier as the model's output columns name it (prob_<name>, label_<name>).")
    code: str = Field("", description="SNOMED CT code(s) of the class ('|' joins merged equivalent codes); PTB-XL "
                      "superclass or site name for the other tasks.")  # fmt: skip
    description: str = Field("", description="Human-readable name of the class.")
    threshold: float | None = Field(None, description="Decision threshold tuned on validation (multi-label tasks).")


class Contract(BaseModel):
    """Preprocessing contract of an ecgssl model (module docstring)."""

    format: Literal["ecgssl-contract"] = Field(CONTRACT_FORMAT, description="Marks the file as an ecgssl contract.")
    version: int = Field(1, description="Contract schema version.")
    kind: Literal["classifier", "encoder"] = Field(description="What the model returns: class probabilities and "
                                                   "labels, or one embedding per record.")  # fmt: skip
    task: str | None = Field(None, description="Downstream task of a classifier (arrhythmia27, localization, "
                             "ptbxl-superclass); None for an encoder.")  # fmt: skip
    leads: list[str] = Field(default_factory=lambda: list(LEADS), description="Lead order of the 12 input rows.")
    units: Literal["mV"] = Field("mV", description="Physical units of `signal`.")
    fs: int = Field(500, description="Sampling rate (Hz) of `signal`: the store's rate the model was trained at.")
    window_samples: int = Field(5000, description="Samples per window (the store's window: 10 s at 500 Hz).")
    max_windows: int | None = Field(None, description="At most this many windows per record are used (the first "
                                    "ones); None = all.")  # fmt: skip
    input_samples: int = Field(description="Samples per crop the encoder sees.")
    crop_aggregation: Literal["mean", "max"] = Field("mean", description="How a record's crops combine: mean (or "
                                                     "max) of the crop probabilities; embeddings are always averaged.")  # fmt: skip
    pooling: str | None = Field(None, description="Encoder: token pooling of an embedding (mean, mean-max, "
                                "lead-mean).")  # fmt: skip
    min_std_uv: float = Field(10.0, description="Floor (microvolts) of the per-lead standard deviation when a crop "
                              "is standardised.")  # fmt: skip
    multilabel: bool = Field(True, description="Classifier: independent sigmoid outputs (thresholds) or one softmax "
                             "(argmax).")  # fmt: skip
    classes: list[ClassSpec] = Field(default_factory=list, description="Classifier outputs, in output order.")

    @property
    def window_s(self) -> float:
        return self.window_samples / self.fs

    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def thresholds(self) -> list[float]:
        return [0.5 if c.threshold is None else float(c.threshold) for c in self.classes]

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> Contract:
        return cls.model_validate_json(Path(path).read_text())
