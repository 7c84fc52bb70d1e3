"""The ablation report, from files alone: cells.csv + each cell's test_predictions.npz + spec.json -> every number.

:func:`build_report` is what the ablation runs at its end and what ``ecgssl report DIR`` runs again: the same
function on the same files with the same bootstrap seed gives the same numbers, so anyone holding the report folder
can re-derive the parent run's metrics. It writes ``summary.csv`` (per arm x mode x fraction: mean and a bootstrap
interval over pretraining runs and seeds), ``evidence.csv`` (per SSL arm, reference arm, pretraining run - "pooled"
and each run - mode and fraction: the gain and SSL(f) - reference(100 %) with hierarchical paired-bootstrap CIs),
``arm_contrasts.csv`` (SSL arms head to head), ``report.md``, ``label_efficiency.png`` and ``metrics.json`` (the
parent run's metrics). Nothing here talks to MLflow.

Rules applied to what is printed (MLflow keeps every number):

* a gain, a significance verdict or a ``labels_to_match`` that involves a budget-limited cell (best epoch inside
  the last patience window of the epoch ceiling), a schedule chosen at the edge of its grid or a probe whose
  regularisation sits at its grid edge is printed as "withheld: <arm> budget-limited at <fraction>";
* a comparison whose bootstrap cannot vary (too few test records) gives "too few test records", no verdict and no
  ``labels_to_match``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecgmodel.ablation.spec import RANDOM, SUPERVISED
from ecgmodel.downstream.ablation import best_cell, metric_key, summarize
from ecgmodel.downstream.report import NOT_REACHED, fmt_fraction, num
from ecgmodel.metrics.bootstrap import (
    PREDICTIONS_FILE,
    TOO_FEW_RECORDS,
    Arm,
    hierarchical_bootstrap,
    labels_to_match,
    load_predictions,
    metric_function,
    prepare,
)

POOLED = "pooled"
#: vs-full and labels_to_match text of a piece that ran no reference cells at 100 % of the labels
NO_FULL_REFERENCE = "not run: no {reference} cells at 100 % of the labels"
#: stands in for a bootstrap that was not run (gains only, or no reference at 100 %)
_NOT_COMPUTED = {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "too_few": False}
SPEC_FILE = "spec.json"
CELLS_FILE = "cells.csv"
TUNING_FILE = "tuning.csv"
METRICS_FILE = "metrics.json"


# ------------------------------------------------------------------------------------------------ inputs
def as_bool(column: pd.Series) -> pd.Series:
    """A flag column as read back from a CSV or MLflow (True/False, "true"/"false", 1/0, empty) -> bool."""
    return column.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).astype(bool)


class Cells:
    """The finished cells of one ablation and their saved predictions (loaded once, keyed by identity)."""

    def __init__(self, frame: pd.DataFrame, base_dir: str | Path, metric: str):
        frame = frame.copy()
        for col, default in (("error", ""), ("pretrain_id", ""), ("out_dir", ""), ("budget_limited", False),
                             ("grid_edge", False), ("role", "cell")):  # fmt: skip
            if col not in frame.columns:
                frame[col] = default
        frame["error"] = frame["error"].fillna("").astype(str)
        frame["pretrain_id"] = frame["pretrain_id"].fillna("").astype(str)
        frame["budget_limited"] = as_bool(frame["budget_limited"])
        frame["grid_edge"] = as_bool(frame["grid_edge"])
        self.frame = frame[frame["role"].fillna("cell") == "cell"]
        self.ok = self.frame[self.frame["error"] == ""]
        self.base = Path(base_dir)
        self.metric = metric
        self._cache: dict[str, Any] = {}

    def arm(self, mode: str, init: str, fraction: float, pretrain_id: str | None = None) -> Arm:
        """Pretraining run -> seed -> predictions of (mode, init, fraction); one run only when given."""
        f = self.ok
        part = f[(f["mode"] == mode) & (f["init"] == init) & np.isclose(f["fraction"].astype(float), fraction)]
        if pretrain_id is not None:
            part = part[part["pretrain_id"] == pretrain_id]
        out: Arm = {}
        for row in part.itertuples(index=False):
            path = Path(str(row.out_dir))
            path = (path if path.is_absolute() else self.base / path) / PREDICTIONS_FILE
            if not path.is_file():
                continue
            key = str(path)
            if key not in self._cache:
                self._cache[key] = prepare(load_predictions(path), self.metric)
            out.setdefault(row.pretrain_id, {})[int(row.seed)] = self._cache[key]
        return out

    def pretrain_ids(self, init: str) -> list[str]:
        return sorted(set(self.ok.loc[self.ok["init"] == init, "pretrain_id"]))

    def fractions(self, mode: str, init: str) -> set[float]:
        part = self.frame[(self.frame["mode"] == mode) & (self.frame["init"] == init)]
        return set(part["fraction"].astype(float))

    def limits(self, arm: str, mode: str, fraction: float) -> list[str]:
        """Why verdicts involving ``arm`` at (mode, fraction) are withheld (empty: they are not)."""
        f = self.frame
        part = f[(f["mode"] == mode) & (f["init"] == arm) & np.isclose(f["fraction"].astype(float), fraction)]
        out = []
        if part["budget_limited"].any():
            out.append(f"{arm} budget-limited at {fraction:g}")
        if part["grid_edge"].any():
            out.append(f"{arm} regularisation at its grid edge at {fraction:g}")
        return out


def _schedule_limits(info: dict[str, Any], arm: str, mode: str) -> list[str]:
    return [f"{arm} schedule chosen at the edge of its grid"] if (info.get("schedule_edges") or {}).get(
        f"{arm}/{mode}") else []  # fmt: skip


def _withheld(reasons: list[str]) -> str:
    return "withheld: " + "; ".join(dict.fromkeys(reasons)) if reasons else ""


# ------------------------------------------------------------------------------------------------ evidence
def evidence(cells: Cells, info: dict[str, Any], ssl: str, reference: str, n_boot: int, seed: int = 0,
             confidence: float = 0.95, gains_only: bool = False) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Rows per pretraining run (``pooled`` first, then each run when there are several), mode and fraction:
    ``ssl`` - ``reference`` at f (the gain) and ssl(f) - reference(100 %) with hierarchical paired-bootstrap CIs;
    and per mode the non-inferiority ``labels_to_match`` (pooled) with its status ("", "too few test records" or
    "withheld: ..."). ``gains_only``: the pooled gains alone (same seeds, so the same intervals), no per-run rows,
    no comparison with the reference at 100 % and no ``labels_to_match``: what a head-to-head contrast reads."""
    task, metric, margin = info["task"], info["metric"], float(info["margin"])
    fn = metric_function(task, metric)
    rows, ltm = [], {}
    runs = cells.pretrain_ids(ssl)
    for mode in info["modes"]:
        if mode not in info.get("arm_modes", {}).get(reference, info["modes"]):
            continue
        fracs = sorted(cells.fractions(mode, ssl) & cells.fractions(mode, reference))
        if not fracs:
            continue
        reference_full = cells.arm(mode, reference, 1.0)
        # a piece without the reference at 100 % (by design) still reports its gains; only the comparisons with
        # the reference at 100 % (and labels_to_match) are "not run", not "too few test records"
        no_full = "" if any(math.isclose(x, 1.0) for x in cells.fractions(mode, reference)) else \
            NO_FULL_REFERENCE.format(reference=reference)
        ref_limits = cells.limits(reference, mode, 1.0) + _schedule_limits(info, reference, mode)
        sched = _schedule_limits(info, ssl, mode) + _schedule_limits(info, reference, mode)
        lower: dict[float, float] = {}
        too_few_any, all_reasons = False, list(ref_limits)
        for which in [POOLED, *(runs if len(runs) > 1 and not gains_only else [])]:
            pid = None if which == POOLED else which
            for i, f in enumerate(fracs):
                a = cells.arm(mode, ssl, f, pid)
                g = hierarchical_bootstrap(a, cells.arm(mode, reference, f), fn, n_boot, confidence, seed + i)
                v = (_NOT_COMPUTED if gains_only or no_full
                     else hierarchical_bootstrap(a, reference_full, fn, n_boot, confidence, seed + 1000 + i))
                gain_reasons = cells.limits(ssl, mode, f) + cells.limits(reference, mode, f) + sched
                full_reasons = [] if no_full else cells.limits(ssl, mode, f) + ref_limits + sched
                vs_full_status = no_full or (TOO_FEW_RECORDS if v["too_few"] else "")
                if which == POOLED:
                    lower[f] = math.nan if v["too_few"] else v["ci_low"]
                    too_few_any |= bool(v["too_few"])
                    all_reasons += full_reasons
                rows.append({
                    "arm": ssl, "reference": reference, "pretrain": which, "mode": mode, "fraction": f,
                    "gain": g["estimate"], "gain_ci_low": g["ci_low"], "gain_ci_high": g["ci_high"],
                    "gain_significant": (not g["too_few"]) and _excludes_zero(g),
                    "vs_full": v["estimate"], "vs_full_ci_low": v["ci_low"], "vs_full_ci_high": v["ci_high"],
                    "non_inferior": bool((not v["too_few"]) and math.isfinite(v["ci_low"]) and v["ci_low"] >= -margin),
                    "too_few": bool(g["too_few"]), "vs_full_status": vs_full_status,
                    "gain_withheld": _withheld(gain_reasons),
                    "vs_full_withheld": _withheld(full_reasons), "n_test_records": g["n_records"],
                    "n_cells": g["n_cells_a"], "n_pretrain": g["n_pretrain_a"], "n_boot": g["n_boot"],
                })  # fmt: skip
        value = labels_to_match(lower, margin) if reference_full else math.nan
        status = no_full or _withheld(all_reasons) or (TOO_FEW_RECORDS if too_few_any else "")
        if too_few_any:
            value = math.nan
        ltm[f"{ssl}/{mode}"] = {"value": value, "status": status}
    columns = ["arm", "reference", "pretrain", "mode", "fraction", "gain", "gain_ci_low", "gain_ci_high",
               "gain_significant", "vs_full", "vs_full_ci_low", "vs_full_ci_high", "non_inferior", "too_few",
               "vs_full_status", "gain_withheld", "vs_full_withheld", "n_test_records", "n_cells", "n_pretrain",
               "n_boot"]
    return pd.DataFrame(rows, columns=columns), ltm


def arm_contrasts(cells: Cells, info: dict[str, Any], arms: list[str], n_boot: int, seed: int = 101) -> pd.DataFrame:
    """Pretext ablation: every pair of SSL arms head to head (A - B per mode and fraction, pooled over their
    pretraining runs). Arms earlier in ``arms`` come first in a pair. Empty with fewer than two arms."""
    rows = []
    columns = ["a", "b", "mode", "fraction", "diff", "ci_low", "ci_high", "significant", "too_few", "withheld",
               "n_test_records", "n_cells"]  # fmt: skip
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            ev, _ = evidence(cells, {**info, "margin": 0.0}, a, b, n_boot, seed=seed + 31 * len(rows),
                             gains_only=True)
            for r in ev[ev["pretrain"] == POOLED].itertuples(index=False):
                rows.append({"a": a, "b": b, "mode": r.mode, "fraction": r.fraction, "diff": r.gain,
                             "ci_low": r.gain_ci_low, "ci_high": r.gain_ci_high, "significant": r.gain_significant,
                             "too_few": r.too_few, "withheld": r.gain_withheld, "n_test_records": r.n_test_records,
                             "n_cells": r.n_cells})  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _excludes_zero(ci: dict[str, float]) -> bool:
    lo, hi = ci["ci_low"], ci["ci_high"]
    return bool(math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0))


# ------------------------------------------------------------------------------------------------ report
def headline_mode(modes: list[str]) -> str:
    return "full" if "full" in modes else modes[0]


def _ltm_text(entry: dict[str, Any]) -> str:
    return entry["status"] if entry["status"] else fmt_fraction(entry["value"])


def _gain_text(row, prefix: str = "gain") -> str:
    withheld = getattr(row, f"{prefix}_withheld")
    if withheld:
        return withheld
    status = row.vs_full_status if prefix == "vs_full" else (TOO_FEW_RECORDS if row.too_few else "")
    if status:
        return status
    est, lo, hi = getattr(row, prefix), getattr(row, f"{prefix}_ci_low"), getattr(row, f"{prefix}_ci_high")
    return f"{num(est)} [{num(lo)}, {num(hi)}]"


def build_report(frame: pd.DataFrame, info: dict[str, Any], out_dir: str | Path, plot: bool = True) -> dict[str, Any]:
    """Every number of the report from ``frame`` (cells.csv rows) and ``info`` (spec.json); files under
    ``out_dir``. Returns metrics (the parent run's), markdown, tags and the result fields of the flow."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric, modes = info["metric"], list(info["modes"])
    n_boot, seed = int(info["bootstrap_samples"]), int(info.get("bootstrap_seed", 0))
    cells = Cells(frame, info.get("base_dir") or out, metric)
    ssl_arms = list(info.get("ssl_arms") or [])
    references = [a for a in (RANDOM, SUPERVISED) if a in set(cells.frame["init"])]
    info = {**info, "arm_modes": {SUPERVISED: ["full"]}}

    summary = summarize(cells.frame.assign(**{metric: cells.frame[metric].where(cells.frame["error"] == "")})
                        if metric in cells.frame else cells.frame.assign(**{metric: math.nan}), metric,
                        n_boot=n_boot, seed=seed)  # fmt: skip
    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)

    tables, ltm = [], {}
    for i, arm in enumerate(ssl_arms):
        for j, ref in enumerate(references):
            ev, by_mode = evidence(cells, info, arm, ref, n_boot, seed=seed + 17 * i + 7919 * j)
            tables.append(ev)
            ltm.update({f"{k}|{ref}": v for k, v in by_mode.items()})
    ev_all = pd.concat(tables, ignore_index=True) if tables else evidence(cells, info, "", RANDOM, 0)[0]
    evidence_csv = out / "evidence.csv"
    ev_all.to_csv(evidence_csv, index=False)

    contrasts = pd.DataFrame()
    contrasts_csv = None
    if len(ssl_arms) > 1:  # pretext ablation: the arms head to head (joint first, so a pair reads joint - single)
        order = sorted(ssl_arms, key=lambda a: not a.endswith("joint"))
        contrasts = arm_contrasts(cells, info, order, n_boot, seed=seed + 101)
        contrasts_csv = out / "arm_contrasts.csv"
        contrasts.to_csv(contrasts_csv, index=False)

    head, head_arm = headline_mode(modes), (ssl_arms[0] if ssl_arms else "")
    pooled = ev_all[(ev_all["pretrain"] == POOLED)] if len(ev_all) else ev_all
    vs_random = pooled[pooled["reference"] == RANDOM] if len(pooled) else pooled

    # ---- the parent run's metrics (every number kept, withheld or not)
    metrics: dict[str, float] = {}
    head_entry = ltm.get(f"{head_arm}/{head}|{RANDOM}", {"value": math.nan, "status": ""})
    metrics["labels_to_match"] = head_entry["value"]
    metrics["labels_to_match_reached"] = float(math.isfinite(head_entry["value"]))
    for arm in ssl_arms:
        prefix = "" if arm == head_arm else f"{arm}_"
        for ref in references:
            rp = "" if ref == RANDOM else f"vs_{ref}_"
            for mode in modes:
                entry = ltm.get(f"{arm}/{mode}|{ref}")
                if entry is None:
                    continue
                metrics[f"{prefix}{rp}labels_to_match_{mode}"] = entry["value"]
                metrics[f"{prefix}{rp}labels_to_match_{mode}_reached"] = float(math.isfinite(entry["value"]))
            part = pooled[(pooled["arm"] == arm) & (pooled["reference"] == ref)] if len(pooled) else pooled
            for row in part.itertuples(index=False):
                f = metric_key(row.fraction)
                names = [f"{prefix}{rp}gain_{row.mode}_at_{f}"]
                if not prefix and not rp and row.mode == head:
                    names.append(f"gain_at_{f}")
                for name in names:
                    metrics[name] = row.gain
                    metrics[name.replace("gain_", "gain_ci_low_", 1)] = row.gain_ci_low
                    metrics[name.replace("gain_", "gain_ci_high_", 1)] = row.gain_ci_high
    counts = cells.frame.groupby(["init", "mode"])["budget_limited"].sum() if len(cells.frame) else pd.Series()
    for (arm, mode), n in counts.items():
        metrics[f"budget_limited_{arm}_{mode}"] = float(n)
    metrics["budget_limited_cells"] = float(cells.frame["budget_limited"].sum())
    withheld_rows = [r for r in pooled.itertuples(index=False) if r.gain_withheld] if len(pooled) else []
    metrics["n_withheld"] = float(len(withheld_rows) + sum(1 for e in ltm.values() if e["status"].startswith("w")))
    metrics["n_cells"] = float(len(cells.frame))
    metrics["n_failed"] = float((cells.frame["error"] != "").sum())

    markdown = headline_markdown(info, cells, ev_all, ltm, summary, references)
    if len(contrasts):
        markdown += "\n\n" + contrasts_markdown(contrasts)
    report_md = out / "report.md"
    report_md.write_text(markdown + "\n")
    (out / METRICS_FILE).write_text(json.dumps({k: (None if not math.isfinite(v) else v) for k, v in metrics.items()},
                                               indent=1, sort_keys=True))  # fmt: skip

    plot_path = None
    if plot:
        import matplotlib.pyplot as plt

        from ecgmodel.plots_downstream import plot_label_efficiency

        head_ltm = {m: ltm.get(f"{head_arm}/{m}|{RANDOM}", {"value": math.nan})["value"] for m in modes}
        fig = plot_label_efficiency(summary, metric, head_ltm, title=f"{info['task']}: label efficiency ({metric})",
                                    evidence=vs_random)  # fmt: skip
        plot_path = out / "label_efficiency.png"
        fig.savefig(plot_path, dpi=120)
        plt.close(fig)

    head_rows = vs_random[(vs_random["arm"] == head_arm) & (vs_random["mode"] == head)] if len(vs_random) else vs_random
    return {
        "metrics": metrics,
        "markdown": markdown,
        "labels_to_match": head_entry["value"],
        "labels_to_match_text": _ltm_text(head_entry),
        "labels_to_match_by_arm": {k: v["value"] for k, v in ltm.items()},
        "labels_to_match_status": {k: v["status"] for k, v in ltm.items()},
        "labels_to_match_by_mode": {m: ltm.get(f"{head_arm}/{m}|{RANDOM}", {"value": math.nan})["value"]
                                    for m in modes},  # fmt: skip
        "gains": {metric_key(r.fraction): r.gain for r in head_rows.itertuples(index=False)},
        "gain_ci": {metric_key(r.fraction): [r.gain_ci_low, r.gain_ci_high] for r in head_rows.itertuples(index=False)},
        "significant": {metric_key(r.fraction): bool(r.gain_significant) for r in head_rows.itertuples(index=False)},
        "withheld": {metric_key(r.fraction): (r.gain_withheld or (TOO_FEW_RECORDS if r.too_few else ""))
                     for r in head_rows.itertuples(index=False)},  # fmt: skip
        "statements": statements(ev_all, ltm),
        "budget_limited": {f"{a}/{m}": int(n) for (a, m), n in counts.items()},
        "summary_csv": str(summary_csv),
        "evidence_csv": str(evidence_csv),
        "contrasts_csv": str(contrasts_csv) if contrasts_csv else None,
        "report_md": str(report_md),
        "plot": str(plot_path) if plot_path else None,
        "best": best_cell(summary),
        "metric": metric,
        "files": [str(p) for p in (summary_csv, evidence_csv, report_md, plot_path, contrasts_csv) if p],
    }


def headline_markdown(info: dict[str, Any], cells: Cells, ev: pd.DataFrame, ltm: dict[str, dict[str, Any]],
                      summary: pd.DataFrame, references: list[str]) -> str:
    """The headline of one ablation (report.md, the parent run's description, the Prefect artifact)."""
    task, metric, margin = info["task"], info["metric"], float(info["margin"])
    lines = [f"## {task}: label efficiency ({metric})", ""]
    spec = info.get("spec") or {}
    if spec:
        runs = info.get("pretraining_runs") or {}
        budget = ", ".join(f"{k} {v}" for k, v in (info.get("budget") or {}).items())
        lines += [f"Settings: arms {', '.join(info.get('arms') or [])}; pretraining runs per SSL arm "
                  f"{', '.join(f'{a} {len(r)}' for a, r in runs.items()) or '-'}; modes {', '.join(spec['modes'])}; "
                  f"fractions {', '.join(f'{f:g}' for f in spec['fractions'])}; {spec['seeds']} fine-tuning seeds; "
                  f"budget per cell: {budget or '-'}; store content `{info.get('store_hash', '-')}`; parent run "
                  f"`{info.get('parent_run_id', '-')}`.", ""]  # fmt: skip
    n_failed = int((cells.frame["error"] != "").sum())
    if n_failed:
        lines += [f"> **{n_failed} of {len(cells.frame)} fine-tuning cells failed**; the figures use the others.", ""]
    if info.get("overlap_note"):
        lines += [f"> {info['overlap_note']}", ""]
    limited = cells.frame[cells.frame["budget_limited"]]
    if len(limited):
        per = limited.groupby(["init", "mode"]).size()
        total = cells.frame.groupby(["init", "mode"]).size()
        lines += ["> Budget-limited cells (best epoch in the last patience window of the epoch ceiling): "
                  + ", ".join(f"{a}/{m} {n} of {total[(a, m)]}" for (a, m), n in per.items())
                  + ". Verdicts involving them are withheld.", ""]  # fmt: skip
    lines += ["| arm | reference | mode | labels to match (non-inferiority) |", "|---|---|---|---|"]
    for key, entry in ltm.items():
        armmode, _, ref = key.partition("|")
        arm, _, mode = armmode.partition("/")
        lines.append(f"| {arm} | {ref} | {mode} | {_ltm_text(entry)} |")
    if len(ev):
        lines += ["", "| arm | reference | pretraining run | mode | fraction | arm - reference (95% CI) | significant | "
                  "arm(f) - reference(100%) (95% CI) | non-inferior |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in ev.itertuples(index=False):
            sig = "withheld" if r.gain_withheld else "-" if r.too_few else "yes" if r.gain_significant else "no"
            ni = "withheld" if r.vs_full_withheld else "-" if r.vs_full_status else "yes" if r.non_inferior else "no"
            lines.append(f"| {r.arm} | {r.reference} | {r.pretrain} | {r.mode} | {r.fraction:g} | {_gain_text(r)} | "
                         f"{sig} | {_gain_text(r, 'vs_full')} | {ni} |")  # fmt: skip
    if len(summary):
        lines += ["", f"| mode | arm | fraction | cells | {metric} mean (95% bootstrap interval) | budget-limited |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in summary.itertuples(index=False):
            lines.append(f"| {r.mode} | {r.init} | {r.fraction:g} | {r.n} | {num(r.mean)} [{num(r.ci_low)}, "
                         f"{num(r.ci_high)}] | {r.n_budget_limited} |")  # fmt: skip
    if info.get("schedules"):
        edges = info.get("schedule_edges") or {}
        lines += ["", "Schedules of full fine-tuning chosen on the validation split (same grid and budget for every arm; the linear probe chooses its regularisation inside each cell):", ""]
        for key, s in info["schedules"].items():
            lines.append(f"- {key}: lr {s['lr']:g}, encoder lr scale {s['encoder_lr_scale']:g}, "
                         f"warm-up {s['warmup_fraction']:g}" + (" (at the edge of the grid)" if edges.get(key) else ""))  # fmt: skip
    validation = info.get("validation", "nested")
    lines += [
        "",
        f"CIs: hierarchical paired bootstrap ({info['bootstrap_samples']} replicates, seed "
        f"{info.get('bootstrap_seed', 0)}) resampling pretraining runs, then fine-tuning seeds (paired by seed "
        "number), then test records (paired by record); percentile intervals, inside the metric's range. Labels to "
        f"match: smallest fraction f with the lower CI bound of arm(f) - reference(100%) >= -{margin:g} at f and "
        "every larger fraction. Validation labels: "
        + ("nested with the fraction." if validation == "nested" else "full split at every fraction (counted).")
        + " Re-derive every number: `ecgssl report <this folder>`.",
    ]
    return "\n".join(lines)


def contrasts_markdown(contrasts: pd.DataFrame) -> str:
    """Pretext ablation: the SSL arms head to head as markdown."""
    lines = ["### Pretext arms head to head", "", "| A - B | mode | fraction | difference (95% CI) | significant |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in contrasts.itertuples(index=False):
        withheld = getattr(r, "withheld", "")
        too_few = bool(getattr(r, "too_few", False))
        text = withheld or (TOO_FEW_RECORDS if too_few else f"{num(r.diff)} [{num(r.ci_low)}, {num(r.ci_high)}]")
        sig = "withheld" if withheld else "-" if too_few else "yes" if r.significant else "no"
        lines.append(f"| {r.a} - {r.b} | {r.mode} | {r.fraction:g} | {text} | {sig} |")
    return "\n".join(lines)


def statements(ev: pd.DataFrame, ltm: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences for a console summary (withheld and too-few verdicts spelled out)."""
    out = []
    for key, entry in ltm.items():
        text = _ltm_text(entry)
        out.append(f"{key.replace('|', ' vs ')}: labels to match {text}"
                   + (" (not shown non-inferior on all labels)" if text == NOT_REACHED else ""))  # fmt: skip
    pooled = ev[ev["pretrain"] == POOLED] if len(ev) else ev
    for r in pooled.itertuples(index=False):
        if r.gain_withheld:
            out.append(f"{r.arm} - {r.reference} /{r.mode} at {r.fraction:g}: {r.gain_withheld}")
        elif r.gain_significant:
            out.append(f"{r.arm} - {r.reference} /{r.mode} at {r.fraction:g}: {r.gain:+.3f} [{r.gain_ci_low:+.3f}, "
                       f"{r.gain_ci_high:+.3f}] (significant)")  # fmt: skip
    if len(pooled) and not pooled["gain_significant"].any() and not pooled["gain_withheld"].astype(bool).any():
        out.append("no gain is statistically significant (every 95% CI includes 0)")
    return out


# ------------------------------------------------------------------------------------------------ re-derive
def rederive(report_dir: str | Path, out_dir: str | Path | None = None, plot: bool = False) -> dict[str, Any]:
    """Re-derive every number of a report folder from its files alone (spec.json, cells.csv, the cells'
    test_predictions.npz). ``out_dir`` (default: a ``rederived`` folder inside it) receives the recomputed files."""
    from ecgmodel.errors import UserError

    folder = Path(report_dir)
    spec_file, cells_file = folder / SPEC_FILE, folder / CELLS_FILE
    if not spec_file.is_file() or not cells_file.is_file():
        raise UserError(f"{folder} is not an ablation report folder (it needs {SPEC_FILE} and {CELLS_FILE})",
                        "ecgssl ablate ... (its report folder is printed as report_dir)")  # fmt: skip
    info = json.loads(spec_file.read_text())
    frame = pd.read_csv(cells_file, dtype={"pretrain_id": str, "error": str})
    info["base_dir"] = str(folder)
    return build_report(frame, info, out_dir or folder / "rederived", plot=plot)
