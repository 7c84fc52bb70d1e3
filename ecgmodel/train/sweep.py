"""Pretraining-length sweep: probe score on the VALIDATION split and held-out pretext losses at checkpoints.

What it measures. For each pretraining seed, ONE run of a preset to the longest sweep point; at every sweep
point (e.g. 100, 200, 400, 800, 1200, 1600 steps) the encoder is kept and scored. The learning-rate schedule
decides what such a checkpoint means:

* ``schedule="constant"`` (default): linear warm-up, then the peak learning rate held (``optim.min_lr =
  optim.lr``; the cosine of :class:`ecgmodel.train.pretrain.WarmupCosine` is then flat). The checkpoint at step s
  IS a complete s-step run of that schedule, every length is measured the same way (none annealed), and the
  sweep can be extended or cut without invalidating what it measured.
* ``schedule="cosine"``: the preset's warm-up + cosine decay over the LONGEST point; an earlier checkpoint is a
  truncated run (still at a high learning rate), not an s-step cosine run; only the last point is one.

At each point: (1) the linear probe of ``ptbxl-superclass`` on the frozen encoder, trained on the training split
(all of it, and nested 10 % subsets for several subset seeds), scored as record-level macro AUROC on the
validation split; the probe's ``C`` is chosen on a patient-wise inner split of the probe's own training records
(never on the validation records it is scored on). Test records are never loaded. (2) the pretext metrics of
:func:`ecgmodel.train.pretrain.evaluate` on held-out (validation) windows (``eval_*``) and, as an over-fitting
diagnostic, on the same number of training windows (``train_*``).

Selection rule (fixed before any result): ``score`` = mean over the pretraining seeds of the mean of the
validation macro AUROC at 100 % and at 10 % of the labels; the chosen length is the point (steps >= 1; step 0,
the initialisation, is a random-init reference) with the highest ``score`` rounded to 3 decimals; ties go to
fewer steps.

The probe: the library's (``ecgmodel.downstream.probe``): standardised mean+max token pooling over present leads,
one L2 logistic regression per class (scikit-learn, L-BFGS), here without class weights (AUROC is rank-based).
Resumable: every finished (seed, step) row is appended to ``rows.jsonl`` under the output folder and skipped on
re-runs; pretraining resumes from its checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

ROWS_FILE = "rows.jsonl"
TABLE_FILE = "sweep.csv"
PLOT_FILE = "sweep.png"
STATE_FILE = "sweep.json"
RULE = ("score = mean over pretraining seeds of the mean of the validation macro AUROC over the probe's label "
        "fractions (100 % and 10 % of the labels); the chosen length is the sweep point (steps >= 1; step 0, the initialisation, is a reference) "
        "with the highest score rounded to 3 decimals; ties go to fewer steps")  # fmt: skip


class SweepConfig(BaseModel):
    """A pretraining-length sweep."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("cpu", description="Pretraining preset (ecgmodel.train.config.PRESETS).")
    overrides: list[str] = Field(default_factory=list, description="Pretraining config overrides (key=value).")
    seeds: list[int] = Field([0, 1], min_length=1, description="Pretraining seeds (run.seed), one run each.")
    steps: list[int] = Field([0, 100, 200, 400, 800, 1200, 1600], min_length=1,
                             description="Sweep points (optimizer steps) where the encoder is scored; 0 = the "
                             "initialisation (a random-init reference, never the chosen length).")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant = warm-up then the peak rate held (each checkpoint is a complete run); "
        "cosine = the preset's cosine over the longest point (earlier checkpoints are truncated runs).")
    fractions: list[float] = Field([1.0, 0.1], min_length=1, description="Label fractions of the probe.")
    subset_seeds: int = Field(3, ge=1, description="Nested label subsets averaged at each fraction below 1.")
    C_grid: list[float] = Field([1e-3, 1e-2, 1e-1, 1.0, 10.0], min_length=1, description="Probe L2 strengths tried.")
    inner_val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the probe's training patients that "
                                      "choose C (inner validation); the probe is then refitted on all of them.")
    max_iter: int = Field(500, ge=1, description="L-BFGS iterations of one probe fit.")
    threads: int | None = Field(None, ge=1, description="torch threads (None = torch default).")
    batch_size: int = Field(32, ge=1, description="Crops per forward pass when embedding.")
    experiment: str = Field("ecgssl-sweep", description="MLflow experiment of the parent and child runs.")
    mlflow: bool = Field(True, description="Log the parent run, one child per seed, table and plot to MLflow.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or max(v) < 1:
            raise ValueError("steps: sweep points must be >= 0 (0 = the initialisation) and one of them >= 1")
        return sorted(set(v))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds: repeated pretraining seed")
        return v


def pretrain_config(cfg: SweepConfig, seed: int):
    """The pretraining config of one seed of the sweep (checkpoints kept at every sweep point)."""
    from ecgmodel.train.pretrain import build_config

    base = build_config(cfg.preset, cfg.overrides)
    over = [f"run.seed={seed}", f"optim.max_steps={max(cfg.steps)}", "run.mlflow=false",
            "run.register_model=false", "run.progress=false"]  # fmt: skip
    if cfg.schedule == "constant":
        over.append(f"optim.min_lr={base.optim.lr}")
    return build_config(cfg.preset, [*cfg.overrides, *over])


# ---------------------------------------------------------------------------------------------- probe data


def probe_data(store, split_cfg) -> dict[str, Any]:
    """ptbxl-superclass records of the TRAIN and VALIDATION splits (test records are never read) with their
    windows in memory: {train: WindowSet, val: WindowSet, classes, n_test_skipped}."""
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.downstream.dataset import WindowSet, labelled_records

    fcfg = FinetuneConfig(task="ptbxl-superclass", store=str(getattr(store, "path", store)), split=split_cfg)
    lab = labelled_records(fcfg, store if not isinstance(store, str | Path) else None)
    st, meta, records, rows, y = lab["store"], lab["meta"], lab["records"], lab["rows"], lab["y"]
    parts = {s: np.flatnonzero(records["split"].to_numpy() == s) for s in ("train", "val")}
    for name, idx in parts.items():
        if len(idx) == 0:
            raise ValueError(f"{fcfg.store}: no ptbxl-superclass record in the {name} split (rule: the sweep probes "
                             "train -> val records of the store's persisted split)")  # fmt: skip
    used = np.sort(np.concatenate([rows[i] for idx in parts.values() for i in idx]))
    signal = st.load_signal(used)
    position = {int(r): i for i, r in enumerate(used)}
    present = st.lead_present()
    valid = meta["valid_length"].to_numpy().astype(np.int64)
    out: dict[str, Any] = {"classes": lab["classes"], "n_test_skipped": int((records["split"] == "test").sum())}
    for name, idx in parts.items():
        win = [rows[i] for i in idx]
        flat = np.concatenate(win)
        take = np.array([position[int(r)] for r in flat], dtype=np.int64)
        rec = np.concatenate([np.full(len(r), j) for j, r in enumerate(win)]).astype(np.int64)
        out[name] = WindowSet(signal[take], present[flat], valid[flat], rec, y[idx],
                              records.iloc[idx].reset_index(drop=True))
    return out


def crop_features(encoder, data, input_samples: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The linear probe's features (``PROBE_POOLING``: mean+max over present-lead tokens) of every crop tiling
    ``data``, and each crop's record."""
    from ecgmodel.downstream.evaluate import embed_crops
    from ecgmodel.downstream.probe import PROBE_POOLING

    f = embed_crops(encoder, data, input_samples, batch_size, "cpu", pooling=PROBE_POOLING)
    return f.features.numpy().astype(np.float64), f.owner


def _fit(X: np.ndarray, Y: np.ndarray, C: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (K, F), bias (K,)) of the library's probe (standardised L2 logistic regression per class, no
    class weights: AUROC is rank-based), in raw feature space."""
    from ecgmodel.downstream.probe import fit_probe

    fit = fit_probe(X, Y, True, Y.shape[1], C, np.ones(Y.shape[1]), max_iter, 1e-4)
    return fit.weight, fit.bias


def _record_probs(X, owner, n_records, W, b) -> np.ndarray:
    from ecgmodel.downstream.evaluate import aggregate_crops

    p = 1.0 / (1.0 + np.exp(-(X @ W.T + b)))
    return aggregate_crops(p, owner, n_records, "mean")


def macro_auroc(y: np.ndarray, probs: np.ndarray) -> float:
    from ecgmodel.metrics.classification import multilabel_metrics

    return float(multilabel_metrics(y, probs, probs >= 0.5)["macro_auroc"])


def probe_score(train: tuple, val: tuple, records: pd.DataFrame, y_train: np.ndarray, y_val: np.ndarray,
                chosen: np.ndarray, cfg: SweepConfig, seed: int) -> dict[str, float]:
    """Validation macro AUROC of a probe trained on the training records ``chosen``; C on an inner patient split."""
    from sklearn.model_selection import GroupShuffleSplit

    Xtr, own_tr = train
    Xva, own_va = val
    groups = records["patient_id"].astype(str).to_numpy()[chosen]
    inner_fit, inner_val = next(GroupShuffleSplit(1, test_size=cfg.inner_val_fraction, random_state=seed)
                                .split(chosen, groups=groups))  # fmt: skip

    def crops_of(recs: np.ndarray):
        pos = np.full(len(y_train), -1)
        pos[recs] = np.arange(len(recs))
        m = pos[own_tr] >= 0
        return Xtr[m], pos[own_tr[m]]

    Xf, of = crops_of(chosen[inner_fit])
    Xv, ov = crops_of(chosen[inner_val])
    best = (-np.inf, cfg.C_grid[0])
    for C in sorted(cfg.C_grid):
        W, b = _fit(Xf, y_train[chosen[inner_fit]][of], C, cfg.max_iter)
        s = macro_auroc(y_train[chosen[inner_val]], _record_probs(Xv, ov, len(inner_val), W, b))
        if math.isfinite(s) and s > best[0]:
            best = (s, C)
    Xa, oa = crops_of(chosen)
    W, b = _fit(Xa, y_train[chosen][oa], best[1], cfg.max_iter)
    return {"auroc": macro_auroc(y_val, _record_probs(Xva, own_va, len(y_val), W, b)), "C": best[1]}


def score_encoder(encoder, input_samples: int, data: dict[str, Any], cfg: SweepConfig) -> dict[str, float]:
    """Validation macro AUROC at every fraction (mean over subset seeds below 1) of one frozen encoder."""
    from ecgmodel.data.splits import nested_fractions

    tr = crop_features(encoder, data["train"], input_samples, cfg.batch_size)
    va = crop_features(encoder, data["val"], input_samples, cfg.batch_size)
    y_tr, y_va = np.asarray(data["train"].y, bool), np.asarray(data["val"].y, bool)
    recs = data["train"].records
    out: dict[str, float] = {}
    for f in cfg.fractions:
        scores, Cs = [], []
        for s in range(1 if f >= 1 else cfg.subset_seeds):
            chosen = np.arange(len(y_tr)) if f >= 1 else nested_fractions(y_tr, sorted({f, 1.0}), seed=s)[f]
            r = probe_score(tr, va, recs, y_tr, y_va, np.asarray(chosen), cfg, s)
            scores.append(r["auroc"])
            Cs.append(r["C"])
        out[f"val_auroc_{_pct(f)}"] = float(np.mean(scores))
        out[f"probe_C_{_pct(f)}"] = float(np.median(Cs))
    return out


def _pct(f: float) -> str:
    return f"{round(f * 100):d}"


# ---------------------------------------------------------------------------------------------- the sweep


def _pretext_metrics(pcfg, store, model) -> dict[str, float]:
    """eval_* on held-out windows and train_* on as many training windows, of a pretraining model."""
    from ecgmodel.data.loader import InMemoryLoader
    from ecgmodel.train.pretrain import evaluate, evaluate_held_out, select_rows

    sel = select_rows(store, pcfg)
    dev = torch.device("cpu")
    train_rows = sel["rows"][: max(len(sel["eval_rows"]), 1)]
    batch = min(pcfg.data.batch_size, len(train_rows))
    tl = InMemoryLoader(store, batch, dev, rows=train_rows, seed=pcfg.run.seed, device_resident=True)
    held = evaluate_held_out(model, store, sel, pcfg, dev, tl)
    out = {k: float(v) for k, v in held["metrics"].items()}
    out["eval_source"] = held["source"]
    tr = evaluate(model, tl, pcfg, dev, batches=max(1, len(train_rows) // batch))["metrics"]
    out.update({"train_" + k.removeprefix("eval_"): float(v) for k, v in tr.items()})
    return out


def _done_rows(out: Path) -> list[dict]:
    p = out / ROWS_FILE
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def run_sweep(cfg: SweepConfig, store: str | Path, out: str | Path, tracking_uri: str | None = None,
              log=print) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) the sweep; returns {table, chosen, rule, plot, table_path}."""
    from ecgmodel.data.store import open_store
    from ecgmodel.models.encoder import build_encoder
    from ecgmodel.models.heads import PretrainModel
    from ecgmodel.train.checkpoint import load_checkpoint, save_encoder
    from ecgmodel.train.pretrain import CKPT_FILE, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    state["config"] = cfg.model_dump(mode="json")
    state_path.write_text(json.dumps(state, indent=2))
    st = open_store(store)
    pcfg0 = pretrain_config(cfg, cfg.seeds[0])
    data = probe_data(st, pcfg0.data.split)
    log(f"probe data: {data['train'].n_records} train / {data['val'].n_records} val records "
        f"({data['n_test_skipped']} test records not read)")
    rows = _done_rows(out)
    done = {(r["seed"], r["step"]) for r in rows}
    for seed in cfg.seeds:
        pcfg = pretrain_config(cfg, seed)
        run_dir = out / f"seed{seed}"
        for point in cfg.steps:
            if (seed, point) in done:
                continue
            keep = run_dir / f"ckpt_{point}.pt"
            if point == 0:  # the initialisation pretraining starts from (train() seeds torch the same way)
                torch.manual_seed(pcfg.run.seed)
                model = PretrainModel(build_encoder(pcfg.encoder), pcfg.ssl.mode)
            elif not keep.exists():
                ck = run_dir / CKPT_FILE
                step = int(load_checkpoint(ck, map_location="cpu")["step"]) if ck.exists() else 0
                if step > point:
                    raise RuntimeError(f"{ck}: at step {step}, past sweep point {point} whose checkpoint is missing "
                                       "(rule: a sweep point's checkpoint is kept before training goes on); "
                                       f"delete {run_dir} to redo seed {seed}")  # fmt: skip
                if step < point:
                    res = train(pcfg, st.path, run_dir, resume=True, stop_after=point - step)
                    log(f"seed {seed}: pretrained to step {res['step']}")
                shutil.copyfile(ck, keep)
            if point > 0:
                model = PretrainModel(build_encoder(pcfg.encoder), pcfg.ssl.mode)
                model.load_state_dict(load_checkpoint(keep, map_location="cpu")["model"])
            run_dir.mkdir(parents=True, exist_ok=True)
            save_encoder(run_dir / f"encoder_{point}.pt", model.encoder, pcfg.encoder)
            row: dict[str, Any] = {"seed": seed, "step": point, "schedule": cfg.schedule}
            row.update(score_encoder(model.encoder, pcfg.encoder.input_samples, data, cfg))
            row.update(_pretext_metrics(pcfg, st, model))
            with open(out / ROWS_FILE, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            rows.append(row)
            log(json.dumps(row))
    table = sweep_table(rows)
    table = table[table["seed"].isin(cfg.seeds) & table["step"].isin(cfg.steps)]
    table.to_csv(out / TABLE_FILE, index=False)
    chosen = choose_length(table)
    plot = plot_sweep(table, out / PLOT_FILE, chosen)
    result = {"table": table, "chosen": chosen, "rule": RULE, "plot": str(plot), "table_path": str(out / TABLE_FILE)}
    if cfg.mlflow:
        state.update(_log_mlflow(cfg, table, chosen, out, state, tracking_uri, st))
        state_path.write_text(json.dumps(state, indent=2))
        result["parent_run_id"] = state.get("parent_run_id")
    return result


def sweep_table(rows: list[dict]) -> pd.DataFrame:
    """One row per (seed, step), sorted."""
    t = pd.DataFrame(rows)
    return t.drop_duplicates(["seed", "step"], keep="last").sort_values(["step", "seed"]).reset_index(drop=True)


def score_by_step(table: pd.DataFrame) -> pd.DataFrame:
    """Per step: mean over seeds of each val_auroc_* column and the rule's ``score``."""
    cols = sorted((c for c in table.columns if c.startswith("val_auroc_")), key=lambda c: -int(c[10:]))
    if not cols:
        raise ValueError("sweep table has no val_auroc_<percent> column (rule: the score needs them)")
    per_row = table[cols].mean(axis=1)
    g = table.assign(score=per_row).groupby("step")
    s = g[[*cols, "score"]].mean()
    s["n_seeds"] = g.size()
    return s.reset_index()


def choose_length(table: pd.DataFrame) -> int:
    """The sweep point the rule (:data:`RULE`) chooses."""
    s = score_by_step(table)
    s = s[s["step"] >= 1]
    if s.empty:
        raise ValueError("sweep table has no point with steps >= 1 (rule: step 0 is a reference, not a length)")
    s["rounded"] = s["score"].round(3)
    best = s["rounded"].max()
    return int(s.loc[s["rounded"] == best, "step"].min())


def plot_sweep(table: pd.DataFrame, path: str | Path, chosen: int | None = None) -> Path:
    """Probe score vs steps per seed (100 % and 10 %), and the held-out pretext losses (train as dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for seed, t in table.groupby("seed"):
        for col, ls in (("val_auroc_100", "-"), ("val_auroc_10", "--")):
            if col in t:
                axes[0].plot(t["step"], t[col], ls, marker="o", label=f"seed {seed}, {col[10:]} % labels")
        for ax, key in ((axes[1], "recon_loss"), (axes[2], "lead_ce")):
            if f"eval_{key}" in t:
                ax.plot(t["step"], t[f"eval_{key}"], "-", marker="o", label=f"seed {seed} held-out")
            if f"train_{key}" in t:
                ax.plot(t["step"], t[f"train_{key}"], ":", marker=".", label=f"seed {seed} train windows")
    if chosen is not None:
        axes[0].axvline(chosen, color="grey", lw=1)
    axes[0].set(title="ptbxl-superclass probe, validation", xlabel="pretraining steps", ylabel="macro AUROC")
    axes[1].set(title="masked reconstruction MSE", xlabel="pretraining steps")
    axes[2].set(title="lead-number cross-entropy", xlabel="pretraining steps")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=100)  # step 0 (the initialisation) stays on the axis
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_mlflow(cfg: SweepConfig, table: pd.DataFrame, chosen: int, out: Path, state: dict,
                tracking_uri: str | None, store) -> dict:  # fmt: skip
    import mlflow

    from ecgmodel.tracking import run_tags, setup_mlflow

    exp = setup_mlflow(cfg.experiment, tracking_uri)
    client = mlflow.MlflowClient()
    tags = run_tags(store_hash=getattr(store, "hash", None), store_path=str(getattr(store, "path", "")))
    parent = state.get("parent_run_id")
    if not parent:
        parent = client.create_run(exp, run_name=f"sweep-{cfg.preset}", tags={**tags, "ecgssl.kind": "sweep"}).info.run_id
    children = dict(state.get("child_run_ids", {}))
    for seed, t in table.groupby("seed"):
        cid = children.get(str(seed))
        if not cid:
            cid = client.create_run(exp, run_name=f"sweep-{cfg.preset}-seed{seed}",
                                    tags={**tags, "mlflow.parentRunId": parent, "ecgssl.seed": str(seed)}).info.run_id
            children[str(seed)] = cid
        for _, r in t.iterrows():
            for k, v in r.items():
                if k not in ("seed", "step") and isinstance(v, int | float) and math.isfinite(float(v)):
                    client.log_metric(cid, k, float(v), step=int(r["step"]))
        client.set_terminated(cid)
    client.log_param(parent, "preset", cfg.preset) if not state.get("parent_run_id") else None
    client.set_tag(parent, "ecgssl.sweep.rule", RULE)
    client.set_tag(parent, "ecgssl.sweep.schedule", cfg.schedule)
    client.log_metric(parent, "chosen_steps", chosen)
    for name in (TABLE_FILE, PLOT_FILE, STATE_FILE):
        if (out / name).exists():
            client.log_artifact(parent, str(out / name))
    client.set_terminated(parent)
    return {"parent_run_id": parent, "child_run_ids": children}


def markdown_report(table: pd.DataFrame, cfg: SweepConfig, plot_name: str, command: str = "",
                    compare: dict[str, pd.DataFrame] | None = None) -> str:  # fmt: skip
    """The results page, generated from the sweep table (and the tables of other sweeps in ``compare``:
    label -> table, e.g. complete cosine runs at single lengths)."""
    chosen = choose_length(table)
    s = score_by_step(table)
    lines = ["# Pretraining length chosen on validation", "",
             f"Preset `{cfg.preset}`, pretraining seeds {', '.join(map(str, sorted(table['seed'].unique())))}, "
             f"sweep points {', '.join(map(str, sorted(table['step'].unique())))} steps, schedule `{cfg.schedule}` "
             f"({'warm-up then the peak learning rate held: every checkpoint is a complete run of its length' if cfg.schedule == 'constant' else 'cosine over the longest point: earlier checkpoints are truncated runs'}).",  # noqa: E501
             "", "Probe: `ptbxl-superclass`, frozen encoder, standardised mean+max token pooling, one L2 logistic "
             "regression per class (C chosen on a patient-wise inner split of the probe's training records), "
             "record-level macro AUROC on the VALIDATION split; 10 % = mean over "
             f"{cfg.subset_seeds} nested label subsets. Test records are never read. Pretext metrics: "
             "`ecgmodel.train.pretrain.evaluate` on held-out (validation) windows (`eval_*`) and on as many training "
             "windows (`train_*`).", "", f"**Rule (fixed before the run):** {RULE}.", "",
             f"**Chosen length: {chosen} steps.**", "", f"![sweep]({plot_name})", "",
             "## Score by step (mean over seeds)", "", "| steps | seeds | val AUROC 100 % | val AUROC 10 % | score |",
             "|---|---|---|---|---|"]  # fmt: skip
    for _, r in s.iterrows():
        mark = " **<-**" if int(r["step"]) == chosen else ""
        lines.append(f"| {int(r['step'])} | {int(r['n_seeds'])} | {r.get('val_auroc_100', float('nan')):.3f} | "
                     f"{r.get('val_auroc_10', float('nan')):.3f} | {r['score']:.3f}{mark} |")
    cols = [c for c in ("val_auroc_100", "val_auroc_10", "eval_recon_loss", "train_recon_loss", "eval_recon_time",
                        "eval_lead_ce", "train_lead_ce", "eval_lead_acc", "train_lead_acc") if c in table.columns]
    lines += ["", "## Every checkpoint", "", "| steps | seed | " + " | ".join(cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append(f"| {int(r['step'])} | {int(r['seed'])} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    lines += ["", "## Read from the table", ""] + findings(table)
    if compare:
        lines += ["", "## Other schedules at single lengths", "",
                  "Each row: a complete run of that schedule and length, scored by the same probe; beside it the "
                  "sweep's checkpoint of the same seed and length.", "",
                  "| run | seed | steps | val AUROC 100 % | val AUROC 10 % | sweep 100 % | sweep 10 % |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        ref = table.set_index(["seed", "step"])
        for label, t in compare.items():
            for _, r in t.sort_values(["step", "seed"]).iterrows():
                key = (int(r["seed"]), int(r["step"]))
                mine = ref.loc[key] if key in ref.index else None
                cells = [f"{mine[c]:.3f}" if mine is not None and c in mine else "-"
                         for c in ("val_auroc_100", "val_auroc_10")]  # fmt: skip
                lines.append(f"| {label} | {key[0]} | {key[1]} | {r.get('val_auroc_100', float('nan')):.3f} | "
                             f"{r.get('val_auroc_10', float('nan')):.3f} | {cells[0]} | {cells[1]} |")
    if command:
        lines += ["", "Reproduce:", "", "```bash", command, "```"]
    return "\n".join(lines) + "\n"


def findings(table: pd.DataFrame) -> list[str]:
    """Statements computed from the table (bullets): longest vs chosen point per fraction against the seed
    spread, the random-init reference, the train vs held-out pretext gap and the lead-number accuracy."""
    chosen = choose_length(table)
    steps = sorted(int(x) for x in table["step"].unique())
    longest = steps[-1]
    seeds = sorted(table["seed"].unique())
    out: list[str] = []
    piv = {c: table.pivot(index="step", columns="seed", values=c)
           for c in table.columns if c.startswith("val_auroc_")}  # fmt: skip
    for col, p in sorted(piv.items(), key=lambda kv: -int(kv[0][10:])):
        spread = float((p.max(axis=1) - p.min(axis=1)).max()) if len(seeds) > 1 else float("nan")
        d = p.loc[longest] - p.loc[chosen]
        agree = "every seed" if (d < 0).all() else ("no seed" if (d >= 0).all() else "some seeds")
        out.append(f"- {col[10:]} % of the labels: {longest} steps vs the chosen {chosen}: {d.mean():+.3f} "
                   f"(per seed {', '.join(f'{v:+.3f}' for v in d)}; lower at {agree}); the largest spread between "
                   f"seeds at one point is {spread:.3f}, so differences below it are not told apart from seed "
                   "noise.")  # fmt: skip
        if 0 in p.index:
            gain = p.loc[chosen] - p.loc[0]
            out.append(f"  Against the initialisation (step 0, a random encoder under the same probe): "
                       f"{gain.mean():+.3f} at {chosen} steps, {(p.loc[longest] - p.loc[0]).mean():+.3f} at "
                       f"{longest}.")  # fmt: skip
    g = table.groupby("step").mean(numeric_only=True)
    if {"train_recon_loss", "eval_recon_loss"} <= set(g.columns):
        gap = (g["eval_recon_loss"] - g["train_recon_loss"])
        out.append("- Masked-reconstruction MSE, held-out minus training windows (over-fitting of the ~1,700 "
                   "pretraining records would widen it): " + ", ".join(f"{k}: {v:+.3f}" for k, v in gap.items())
                   + ".")  # fmt: skip
    if {"train_lead_ce", "eval_lead_ce"} <= set(g.columns):
        gap = (g["eval_lead_ce"] - g["train_lead_ce"])
        out.append("- Lead-number cross-entropy, held-out minus training: "
                   + ", ".join(f"{k}: {v:+.3f}" for k, v in gap.items()) + ".")
    if "eval_lead_acc" in g.columns:
        out.append("- Held-out lead-number accuracy (every sample shuffled): "
                   + ", ".join(f"{k}: {v:.3f}" for k, v in g["eval_lead_acc"].items()) + ".")
    return out
