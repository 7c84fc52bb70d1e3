"""Text of an ablation report: the headline table (MLflow parent description, Prefect markdown artifact, CLI) and
the rounded summary rows of the Prefect table artifact. Pure functions of the report's numbers."""

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


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def headline_markdown(
    task: str,
    metric: str,
    evidence: pd.DataFrame,
    labels_to_match: dict[str, float],
    margin: float,
    validation: str,
    n_boot: int,
    overlap_note: str = "",
    failed: int = 0,
    n_cells: int = 0,
    schedules: dict[str, dict[str, float]] | None = None,
) -> str:
    """The headline of one ablation as markdown: labels_to_match per arm/mode and the gain table with CIs."""
    lines = [f"## {task}: label efficiency ({metric})", ""]
    if failed:
        lines += [f"> **{failed} of {n_cells} fine-tuning cells failed**; the figures use the others.", ""]
    if overlap_note:
        lines += [f"> {overlap_note}", ""]
    lines += ["| arm | mode | labels to match (non-inferiority) |", "|---|---|---|"]
    for key, value in labels_to_match.items():
        arm, _, mode = key.partition("/")
        lines.append(f"| {arm} | {mode} | {fmt_fraction(value)} |")
    lines += ["", "| arm | mode | fraction | SSL - random (95% CI) | significant | SSL(f) - random(100%) (95% CI) | "
              "non-inferior |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in evidence.itertuples(index=False):
        arm = getattr(row, "arm", "ssl")
        lines.append(
            f"| {arm} | {row.mode} | {row.fraction:g} | {_num(row.gain)} [{_num(row.gain_ci_low)}, "
            f"{_num(row.gain_ci_high)}] | {'yes' if row.gain_significant else 'no'} | {_num(row.vs_full)} "
            f"[{_num(row.vs_full_ci_low)}, {_num(row.vs_full_ci_high)}] | {'yes' if row.non_inferior else 'no'} |"
        )
    if schedules:
        lines += ["", "Schedules chosen on the validation split (same grid and budget for every init):", ""]
        for key, s in schedules.items():
            lines.append(f"- {key}: lr {s['lr']:g}, encoder lr scale {s['encoder_lr_scale']:g}, "
                         f"warm-up {s['warmup_fraction']:g}")  # fmt: skip
    lines += [
        "",
        f"CIs: paired bootstrap over test records and seeds ({n_boot} replicates). Labels to match: smallest "
        f"fraction f with the lower CI bound of SSL(f) - random(100%) >= -{margin:g} at f and every larger "
        f"fraction. Validation labels: {'nested with the fraction' if validation == 'nested' else 'full split at every fraction (counted in n_labels_used)'}.",  # noqa: E501
    ]
    return "\n".join(lines)


def contrasts_markdown(contrasts: pd.DataFrame) -> str:
    """Pretext ablation: the SSL arms head to head (``ecgmodel.downstream.ablation.arm_contrasts``) as markdown."""
    lines = ["### Pretext arms head to head", "", "| A - B | mode | fraction | difference (95% CI) | significant |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in contrasts.itertuples(index=False):
        lines.append(f"| {r.a} - {r.b} | {r.mode} | {r.fraction:g} | {_num(r.diff)} [{_num(r.ci_low)}, "
                     f"{_num(r.ci_high)}] | {'yes' if r.significant else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def significance_sentences(evidence: pd.DataFrame, labels_to_match: dict[str, float]) -> list[str]:
    """Plain sentences for a console summary: which gains are significant, what labels_to_match says."""
    out = []
    for key, value in labels_to_match.items():
        out.append(f"{key}: labels to match {fmt_fraction(value)}"
                   + ("" if math.isfinite(value) else " (SSL is not shown non-inferior to random init on all labels)"))
    sig = evidence[evidence["gain_significant"].astype(bool)] if len(evidence) else evidence
    if len(evidence) and sig.empty:
        out.append("no SSL - random gain is statistically significant (every 95% CI includes 0)")
    for row in sig.itertuples(index=False):
        out.append(f"{getattr(row, 'arm', 'ssl')}/{row.mode} at {row.fraction:g}: gain {row.gain:+.3f} "
                   f"[{row.gain_ci_low:+.3f}, {row.gain_ci_high:+.3f}] (significant)")  # fmt: skip
    return out


def table_rows(summary: pd.DataFrame, metric: str, digits: int = 4) -> list[dict[str, Any]]:
    """Summary rows for a Prefect table artifact: the metric named in the columns, numbers rounded, NaN -> None."""
    frame = summary.rename(columns={"mean": f"{metric} mean", "std": f"{metric} std",
                                    "ci_low": f"{metric} ci_low", "ci_high": f"{metric} ci_high"}).round(digits)  # fmt: skip
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict(orient="records")
