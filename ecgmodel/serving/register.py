"""Deployable models in the MLflow registry: the final classifier of a task, the gates, the ``champion`` alias.

* **Final classifier** (``ecgssl finetune --register``, the pipeline's ``final-<task>`` stage): trained on all the
  training labels (fraction 1.0) with the init, mode and schedule the ablation chose **on validation**
  (:func:`choose_final`: the (init, mode) with the best mean validation score over the seeds at the largest
  fraction, with the schedule that init chose in the ablation's tuning); logged as an MLflow pyfunc model
  (:mod:`ecgmodel.serving.log`) with a model card, registered as ``ecgssl-<task>`` with its test metrics and the
  tag ``ecgssl.ablation_run_id`` (the ablation's parent run).
* **Classifier gate** (:func:`classifier_gate`): the lower bound of the 95 % bootstrap CI (records resampled,
  1,000 replicates) of the task's primary test metric is above the score of a trivial predictor (every record gets
  the test set's most frequent class; probabilities = class prevalences: macro AUROC 0.5). Only the pipeline moves
  the ``champion`` alias, and only to a version that passed; ``--register`` records the outcome in tags.
* **Encoder gate** (:func:`encoder_gate`): in the pipeline's ablation of its first task, the SSL - random gain of
  the headline arm and mode has a 95 % CI lower bound > 0 at some label fraction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CI_LEVEL = 0.95
N_BOOT = 1000


# ------------------------------------------------------------------------------------------------ gates
def _trivial(p):
    from ecgmodel.metrics.bootstrap import Predictions

    y = np.asarray(p.y)
    if y.ndim == 2:  # multi-label
        prev = y.mean(axis=0) if len(y) else np.zeros(y.shape[1])
        out = np.zeros_like(y, dtype=bool)
        out[:, int(np.argmax(prev))] = True
        probs = np.repeat(prev[None].astype(np.float64), len(y), 0)
    else:
        n_classes = p.probs.shape[1]
        prev = np.bincount(y.astype(int), minlength=n_classes) / max(len(y), 1)
        out = np.full(len(y), int(np.argmax(prev)))
        probs = np.repeat(prev[None], len(y), 0)
    return Predictions(p.keys, p.y, probs, out, p.classes)


def classifier_gate(predictions: str | Path, task: str, metric: str, n_boot: int = N_BOOT,
                    seed: int = 0) -> dict[str, Any]:
    """The classifier gate (module docstring) on a run's ``test_predictions.npz``."""
    from ecgmodel.metrics.bootstrap import load_predictions, metric_function, prepare

    metric = metric.removeprefix("test_")
    raw = load_predictions(predictions)
    fn = metric_function(task, metric)
    p = prepare(raw, metric)
    n = len(p.keys)
    value = fn(p) if n else math.nan
    rng = np.random.default_rng(seed)
    reps = np.array([fn(p.take(rng.integers(0, n, n))) for _ in range(n_boot)]) if n else np.array([math.nan])
    alpha = (1 - CI_LEVEL) / 2
    low, high = (float(np.nanquantile(reps, alpha)), float(np.nanquantile(reps, 1 - alpha))) \
        if np.isfinite(reps).any() else (math.nan, math.nan)  # fmt: skip
    baseline = float(fn(prepare(_trivial(raw), metric))) if n else math.nan
    passed = bool(np.isfinite(low) and np.isfinite(baseline) and low > baseline)
    rule = (f"test {metric}: lower bound of the {CI_LEVEL:.0%} bootstrap CI > the score of a trivial predictor "
            "(every record gets the most frequent class)")  # fmt: skip
    detail = (f"test {metric} {value:.4g} (95% CI {low:.4g} to {high:.4g}, {n} records, {n_boot} bootstrap "
              f"replicates); trivial predictor {baseline:.4g}: {'passed' if passed else 'not passed'}")  # fmt: skip
    return {"passed": passed, "metric": metric, "value": float(value), "ci_low": low, "ci_high": high,
            "baseline": baseline, "n_test": n, "rule": rule, "detail": detail}  # fmt: skip


def encoder_gate(ablation: dict[str, Any]) -> dict[str, Any]:
    """The encoder gate (module docstring) on an ablation flow's result (``gain_ci``: fraction -> [low, high])."""
    cis = {k: v for k, v in (ablation.get("gain_ci") or {}).items() if v and np.isfinite(v[0])}
    best = max(cis.items(), key=lambda kv: kv[1][0], default=None)
    passed = best is not None and best[1][0] > 0
    rule = "ablation: SSL - random gain with a 95% CI lower bound > 0 at some label fraction"
    if best is None:
        detail = "no gain CI in the ablation result: not passed"
    else:
        detail = (f"{ablation.get('metric', 'metric')}: best lower bound {best[1][0]:+.4g} at fraction {best[0]} "
                  f"(CI {best[1][0]:+.4g} to {best[1][1]:+.4g}): {'passed' if passed else 'not passed'}")  # fmt: skip
    return {"passed": bool(passed), "rule": rule, "detail": detail}


def promote_encoder(encoder_uri: str, ablation: dict[str, Any]) -> dict[str, Any]:
    """Apply the encoder gate to a registered ``models:/<name>/<version>``; the alias moves only if it passed."""
    from ecgmodel.tracking import apply_gate, resolve_model_uri

    gate = encoder_gate(ablation)
    name, version = resolve_model_uri(encoder_uri)
    apply_gate(name, version, gate["passed"], gate["rule"], gate["detail"])
    return {**gate, "name": name, "version": version}


# ------------------------------------------------------------------------------------------------ final model
def choose_final(ablation: dict[str, Any], arms: dict[str, str]) -> dict[str, Any]:
    """(init, mode, schedule) of the deployable model, chosen on VALIDATION from an ablation flow's result.

    ``arms``: init name -> encoder reference (``{"ssl": encoder}``, or the pretext arms). Reads the ablation's
    ``cells.csv`` (beside ``summary_csv``) and each cell's ``best_val_<metric>`` (its metrics.json or MLflow run):
    the (init, mode) whose mean over the seeds at the largest fraction is highest; its schedule is the one that
    init chose (``schedules``)."""
    summary = ablation.get("summary_csv")
    cells_csv = Path(summary).parent / "cells.csv" if summary else None
    if cells_csv is None or not cells_csv.is_file():
        raise ValueError(f"the ablation result has no cells table ({cells_csv}): cannot choose the final model")
    metric = str(ablation.get("metric", "")).removeprefix("test_")
    cells = pd.read_csv(cells_csv)
    score = f"best_val_{metric}"
    if "error" in cells.columns:
        cells = cells[cells["error"].isna() | (cells["error"].astype(str) == "")]
    cells = cells[cells["fraction"] == cells["fraction"].max()].copy()
    cells[score] = [_val_score(r, score) for r in cells.itertuples(index=False)]
    cells = cells[np.isfinite(cells[score].astype(float))]
    if cells.empty:
        raise ValueError(f"no finished ablation cell with {score}: cannot choose the final model")
    top = cells
    means = top.groupby(["init", "mode"])[score].mean().sort_values(ascending=False)
    (init, mode), val = means.index[0], float(means.iloc[0])
    schedule = (ablation.get("schedules") or {}).get(f"{init}/{mode}")
    ref = "random" if init == "random" else arms.get(init)
    if ref is None:
        raise ValueError(f"the ablation chose init {init!r}, which is none of the encoders given ({sorted(arms)})")
    return {"init": init, "init_ref": ref, "mode": mode, "schedule": schedule, "val_score": val,
            "val_metric": metric, "fraction": float(top["fraction"].iloc[0]),
            "candidates": {f"{i}/{m}": float(v) for (i, m), v in means.items()}}  # fmt: skip


def _val_score(row: Any, score: str) -> float:
    """A cell's validation score: its ``metrics.json`` when the folder is at hand, else its MLflow run."""
    out = getattr(row, "out_dir", None)
    if isinstance(out, str) and out and (Path(out) / "metrics.json").is_file():
        return float(json.loads((Path(out) / "metrics.json").read_text()).get(score, math.nan))
    run_id = getattr(row, "run_id", None)
    if isinstance(run_id, str) and run_id:
        from mlflow.tracking import MlflowClient

        return float(MlflowClient().get_run(run_id).data.metrics.get(score, math.nan))
    return math.nan


def final_config(task: str, store: str, choice: dict[str, Any], arch_from: str | None,
                 overrides: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The FinetuneConfig dict of the deployable model: the ablation's base settings, fraction 1.0, the chosen
    init, mode and schedule (the same construction as an ablation cell)."""
    from ecgmodel.config import apply_overrides
    from ecgmodel.downstream.ablation import cell_config
    from ecgmodel.downstream.config import FinetuneConfig, Schedule

    base = apply_overrides(FinetuneConfig(task=task, store=str(store), arch_from=arch_from), overrides)
    sched = Schedule.model_validate(choice["schedule"]) if choice.get("schedule") else Schedule(
        lr=base.optim.lr, encoder_lr_scale=base.optim.encoder_lr_scale, warmup_fraction=base.optim.warmup_fraction)
    return cell_config(base, choice["init_ref"], choice["mode"], 1.0, seed, sched)


def model_card(result: dict[str, Any], gate: dict[str, Any], store: str, store_hash: str | None,
               contract_task: str, ablation_run_id: str | None = None, choice: dict[str, Any] | None = None) -> str:
    """A short markdown model card: data, split, metric with CI, intended use and limits."""
    how = (f"init `{choice['init']}` ({choice['init_ref']}), mode `{choice['mode']}`, schedule {json.dumps(choice['schedule'])}, "
           f"chosen on validation by the ablation (mean {choice['val_metric']} {choice['val_score']:.4g} at fraction "
           f"{choice['fraction']:g})" if choice else f"init `{result.get('init')}`, mode `{result.get('mode')}`")  # fmt: skip
    lines = [
        f"# ecgssl-{contract_task}",
        "",
        f"Classifier of 12-lead ECGs for the `{contract_task}` task: a self-supervised ECG encoder with a linear head.",
        "",
        "## Data and split",
        f"- Store `{store}` (content hash `{store_hash or 'unknown'}`): harmonised PhysioNet records, 500 Hz, 10 s windows.",
        f"- Patient-wise persisted split: {result.get('n_labels_used', '?')} training records (all the training labels, "
        f"fraction {result.get('fraction', 1.0):g}), {result.get('n_val', '?')} validation records (early stopping, "
        f"thresholds), {result.get('n_test', '?')} test records (scored once).",
        f"- Training: {how}; best epoch {result.get('best_epoch', '?')}.",
        "",
        "## Performance (test split)",
        f"- {gate['detail']}.",
        f"- Gate: {gate['rule']}.",
    ]
    lines += [f"- {k}: {v:.4g}" for k, v in sorted(result.items())
              if k.startswith("test_") and isinstance(v, int | float) and math.isfinite(float(v))]  # fmt: skip
    if ablation_run_id:
        lines.append(f"- Label-efficiency ablation (how the init and schedule were chosen): MLflow run `{ablation_run_id}`.")
    lines += [
        "",
        "## Intended use and limits",
        "- Research use only: this is **not a medical device** and must not be used for diagnosis or treatment.",
        "- Trained on public research databases; performance on other populations, devices, filters or lead "
        "placements is unknown. Classes outside the label set are never predicted.",
        "- Input contract (lead order, 500 Hz, mV, 10 s windows, crop aggregation): `contract.json`; "
        "`ecgssl predict` harmonises WFDB/EDF files to it and reports missing leads and resampling.",
    ]
    return "\n".join(lines) + "\n"


def register_classifier(result: dict[str, Any], *, ablation_run_id: str | None = None,
                        choice: dict[str, Any] | None = None, champion: bool = False,
                        name: str | None = None) -> dict[str, Any]:
    """Log a finished fine-tuning run (``finetune_task``'s result: ``out_dir``, ``run_id``, metrics) as an MLflow
    pyfunc model with its model card, register it as ``ecgssl-<task>`` (tags: test metrics, gate, ablation run),
    and with ``champion`` point the alias at it when the gate passed. Returns uri, name, version, gate."""
    from mlflow.tracking import MlflowClient

    from ecgmodel.data.store import content_hash
    from ecgmodel.downstream.config import PRIMARY_METRIC
    from ecgmodel.serving.core import read_downstream_file
    from ecgmodel.serving.log import MODEL_CARD, log_model_folder, save_classifier_model
    from ecgmodel.tracking import MLFLOW_WRITE_LOCK, apply_gate, classifier_model_name, register_version

    out = Path(result["out_dir"])
    run_id = result["run_id"]
    task = result["task"]
    cfg = read_downstream_file(out / "model.pt")["finetune_config"]
    store = cfg["store"]
    store_hash = content_hash(store)
    gate = classifier_gate(out / "test_predictions.npz", task, result.get("primary_metric") or PRIMARY_METRIC[task])
    card = model_card(result, gate, store, store_hash, task, ablation_run_id, choice)
    extra = [out / f for f in ("thresholds.csv", "label_definitions.csv", "per_class_test.csv", "metrics.json",
                               "confusion_test.csv")]  # fmt: skip
    folder, contract = save_classifier_model(out / "mlflow-model" / "classifier", out / "model.pt", store=store,
                                             card=card, extra_files=extra)  # fmt: skip
    log_model_folder(run_id, folder, "classifier")
    client = MlflowClient()
    with MLFLOW_WRITE_LOCK:
        (out / MODEL_CARD).write_text(card)
        client.log_artifact(run_id, str(out / MODEL_CARD))
        if ablation_run_id:
            client.set_tag(run_id, "ecgssl.ablation_run_id", ablation_run_id)
        client.set_tag(run_id, "ecgssl.role", "final-model")
    name = name or classifier_model_name(task)
    tags = {"ecgssl.task": task, "ecgssl.store_hash": store_hash, "ecgssl.primary_metric": gate["metric"],
            "ecgssl.test_ci_low": f"{gate['ci_low']:.6g}", "ecgssl.test_ci_high": f"{gate['ci_high']:.6g}",
            "ecgssl.trivial_baseline": f"{gate['baseline']:.6g}", "ecgssl.n_test": str(gate["n_test"]),
            **{f"ecgssl.{k}": f"{v:.6g}" for k, v in result.items()
               if k.startswith("test_") and isinstance(v, int | float) and math.isfinite(float(v))}}  # fmt: skip
    if ablation_run_id:
        tags["ecgssl.ablation_run_id"] = ablation_run_id
    if choice:
        tags.update({"ecgssl.init": choice["init"], "ecgssl.mode": choice["mode"],
                     "ecgssl.schedule": json.dumps(choice["schedule"])})  # fmt: skip
    source = f"{client.get_run(run_id).info.artifact_uri}/classifier"
    description = (f"ecgssl {task} classifier (MLflow pyfunc; input contract in contract.json, model card in "
                   f"{MODEL_CARD}). {gate['detail']}. Research use only, not a medical device.")  # fmt: skip
    version = register_version(name, source, run_id, tags, description,
                               model_description=f"ecgssl deployable {task} classifier (docs/use.md)")  # fmt: skip
    # the outcome is always recorded; only the pipeline (champion=True) moves the alias
    apply_gate(name, version, gate["passed"], gate["rule"], gate["detail"], move_alias=champion)
    return {"model_uri": f"models:/{name}/{version}", "name": name, "version": version, "gate": gate,
            "champion": bool(champion and gate["passed"]), "run_id": run_id, "n_classes": len(contract.classes)}


def ablation_from_run(parent_run_id: str) -> dict[str, Any]:
    """What :func:`choose_final` and :func:`final_config` need, read back from an ablation's MLflow parent run:
    its cells table (artifact), metric, chosen schedules (or the single grid point), arms, overrides, store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(parent_run_id)
    p, tags = run.data.params, run.data.tags
    if tags.get("ecgssl.role") != "ablation-parent":
        raise ValueError(f"MLflow run {parent_run_id} is not an ablation parent run (tag ecgssl.role)")
    local = Path(client.download_artifacts(parent_run_id, "cells.csv"))
    schedules = json.loads(p["chosen_schedules"]) if "chosen_schedules" in p else None
    if schedules is None:  # one grid point: every init used it
        grid = json.loads(p.get("schedule_grid", "[]"))
        inits = json.loads(p.get("inits", "[]"))
        modes = json.loads(p.get("modes", "[]"))
        schedules = {f"{i}/{m}": grid[0] for i in inits for m in modes} if grid else {}
    arms = json.loads(p.get("encoders") or "{}") or ({"ssl": p["encoder"]} if p.get("encoder") else {})
    return {"summary_csv": str(local.parent / "summary.csv"), "metric": p.get("ablation_metric", ""),
            "schedules": schedules, "arms": arms, "overrides": json.loads(p.get("overrides") or "{}"),
            "store": p.get("store"), "task": p.get("task"), "parent_run_id": parent_run_id}  # fmt: skip
