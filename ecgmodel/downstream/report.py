"""Text helpers of an ablation report: how a fraction and a number are printed, and :func:`table_rows`, the one
function that turns a summary table into rounded rows (Prefect table artifacts of the ablation and the pipeline).
The headline itself is written by ``ecgmodel.ablation.report``."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

NOT_REACHED = "not reached"


def fmt_fraction(value: float | None) -> str:
    """``labels_to_match`` as a person reads it: ``0.2`` -> ``20 %``; NaN -> ``not reached``."""
    if value is None or not math.isfinite(float(value)):
        return NOT_REACHED
    return f"{100 * float(value):g} %"


def num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


SUMMARY_STAT_COLUMNS = ("mean", "std", "ci_low", "ci_high")


def table_rows(summary: pd.DataFrame, metric: str | None = None, digits: int = 4) -> list[dict[str, Any]]:
    """Summary rows for a table artifact: the statistics columns named after ``metric`` (``test_accuracy mean``),
    floats to ``digits`` significant digits, NaN -> None."""
    if metric:
        summary = summary.rename(columns={c: f"{metric} {c}" for c in SUMMARY_STAT_COLUMNS if c in summary.columns})
    frame = summary.astype(object).where(summary.notna(), None)
    return [{k: round_sig(v, digits) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def round_sig(value: Any, digits: int = 4) -> Any:
    """``value`` rounded to ``digits`` significant digits when it is a finite float; other values unchanged."""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value
