"""The fine-tuning of one run (one ablation cell).

``finetune(cfg, out_dir, run_id=None)``:

1. :func:`ecgmodel.downstream.dataset.prepare_task` - labels, patient-aware split, nested label subset (training and,
   by default, validation records), windows of the used records loaded into memory once;
2. the model: encoder random (architecture of ``arch_from`` or ``cfg.encoder``) or pretrained
   (``load_encoder(cfg.init)``) plus a linear head (:class:`~ecgmodel.downstream.model.DownstreamModel`), or the
   supervised reference arm (``init="supervised"``: :class:`~ecgmodel.models.xresnet1d.XResNet1d` from scratch);
3. ``mode="full"``: AdamW, linear warm-up then a constant lr (or cosine over the ceiling, ``optim.lr_schedule``);
   random crops of ``input_samples`` from each stored window; class-weighted BCE (multi-label tasks) or
   cross-entropy (localization). After every epoch the cell's validation records are scored (arrhythmia27: Challenge
   score at thresholds tuned on them, one sweep); the best epoch's weights are kept; training stops after
   ``optim.patience`` epochs without improvement (counted from the end of the warm-up) or at the ceiling
   ``optim.epochs``. ``budget_limited``: the best epoch lies in the last ``patience`` epochs of the ceiling, i.e.
   the run was still improving when the budget ended;
   ``mode="linear"``: the convex probe of :mod:`ecgmodel.downstream.probe` on cached frozen embeddings;
4. the test split is scored once, with the kept weights and the validation thresholds;
5. artifacts into ``out_dir`` (label definitions, splits and subset ids, thresholds, per-class table or confusion
   matrix, metrics, history, test predictions, weights) and, when ``run_id`` is given, everything logged to that
   MLflow run: per-epoch (probe: per-C) metrics, ``best_*`` / ``test_*``, ``best_epoch``, ``epochs_trained``,
   tags ``ecgssl.budget_limited`` and (probe) ``ecgssl.grid_edge``.

Determinism: every cell owns its random generators (:func:`cell_generators`): weight init (``torch.nn.init`` with
``generator=``), batch order and random crops (CPU generator), dropout masks
(:class:`~ecgmodel.models.dropout.SeededDropout`, on the training device); nothing a cell draws comes from torch's
global generator, so cells training in parallel threads do not perturb each other. On the CPU a cell is bitwise
reproducible for a given config and seed on one machine with the same torch build and intra-op thread count
(``num_threads``, logged): same metrics, predictions and weights, alone or beside other cells. NOT bitwise: across
machines, BLAS/torch versions or thread counts (float summation order), and on CUDA (``cudnn.deterministic`` is set
and ``cudnn.benchmark`` cleared, but atomics in some backward kernels still reorder sums), where runs agree only to
float tolerance. The probe's L-BFGS fits run on single-threaded BLAS and are deterministic; its crop embeddings,
shared between cells through ``FEATURE_CACHE``, are the same whichever cell embedded a crop first because a crop's
embedding does not depend on the other crops of its batch (checked on CPU by the tests).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ecgmodel.config import config_hash, flatten
from ecgmodel.data.splits import save_split_artifacts
from ecgmodel.data.transforms import to_model_input
from ecgmodel.downstream.config import RANDOM_INIT, SUPERVISED_INIT, FinetuneConfig
from ecgmodel.downstream.dataset import TaskData, prepare_task
from ecgmodel.downstream.evaluate import (
    FEATURE_CACHE,
    CropFeatures,
    arrhythmia_metrics,
    embed_crops,
    localization_metrics,
    predict_from_features,
    predict_records,
    superclass_metrics,
)
from ecgmodel.downstream.model import MODEL_FORMAT, DownstreamModel
from ecgmodel.downstream.probe import PROBE_POOLING, ProbeFit, record_class_weights, select_probe
from ecgmodel.downstream.thresholds import tune_thresholds
from ecgmodel.models.dropout import set_dropout_generator
from ecgmodel.models.encoder import EncoderConfig, build_encoder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cell_generators(seed: int, device: torch.device | str = "cpu") -> dict[str, torch.Generator]:
    """The cell's own generators, independent streams spawned from ``seed``: ``init`` (weights, CPU), ``data``
    (batch order and random crops, CPU), ``dropout`` (masks, on ``device``)."""
    streams = np.random.SeedSequence(int(seed) & 0xFFFFFFFFFFFFFFFF).spawn(3)
    init, data, drop = (int(s.generate_state(1, np.uint64)[0] >> np.uint64(1)) for s in streams)
    return {"init": torch.Generator().manual_seed(init), "data": torch.Generator().manual_seed(data),
            "dropout": torch.Generator(device=torch.device(device)).manual_seed(drop)}  # fmt: skip


def build_model(cfg: FinetuneConfig, n_classes: int, generator: torch.Generator | None = None
                ) -> tuple[torch.nn.Module, EncoderConfig]:  # fmt: skip
    """The cell's model and the encoder config that fixes its crop length (``input_samples``).

    random / pretrained init: encoder + linear head (:class:`DownstreamModel`; the linear probe pools mean+max);
    ``supervised``: an :class:`~ecgmodel.models.xresnet1d.XResNet1d` (``cfg.supervised``), the returned config being
    the one whose crop length it shares (``arch_from``'s, else ``cfg.encoder``). Random weights come from
    ``generator`` (default: the ``init`` generator of :func:`cell_generators` for ``cfg.seed``)."""
    if generator is None:
        generator = cell_generators(cfg.seed)["init"]
    if cfg.init in (RANDOM_INIT, SUPERVISED_INIT):
        if cfg.arch_from:
            from ecgmodel.train.checkpoint import load_encoder

            _, enc_cfg = load_encoder(cfg.arch_from)
        else:
            enc_cfg = cfg.encoder
        if cfg.init == SUPERVISED_INIT:
            from ecgmodel.models.xresnet1d import XResNet1d

            return XResNet1d(cfg.supervised, n_classes, generator), enc_cfg
        encoder = build_encoder(enc_cfg, generator)
    else:
        from ecgmodel.train.checkpoint import load_encoder

        encoder, enc_cfg = load_encoder(cfg.init)
    pooling = PROBE_POOLING if cfg.mode == "linear" else "mean"
    model = DownstreamModel(encoder, n_classes, cfg.mode, cfg.optim.head_dropout, pooling=pooling, generator=generator)
    return model, enc_cfg


def arch_of(model: torch.nn.Module) -> str:
    return "transformer" if isinstance(model, DownstreamModel) else "xresnet1d"


def _loss_fn(data: TaskData, cfg: FinetuneConfig, device: torch.device):
    y = data.train.y
    if data.multilabel:
        pos = y.sum(axis=0).astype(np.float64)
        neg = len(y) - pos
        weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).clip(1.0, cfg.optim.max_pos_weight)
        pos_weight = torch.tensor(weight, dtype=torch.float32, device=device) if cfg.optim.class_weighted else None
        return lambda logits, target: F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pos_weight)
    counts = np.bincount(y, minlength=len(data.classes)).astype(np.float64)
    weight = np.where(counts > 0, len(y) / (len(counts) * np.maximum(counts, 1)), 0.0)
    w = torch.tensor(weight, dtype=torch.float32, device=device) if cfg.optim.class_weighted else None
    return lambda logits, target: F.cross_entropy(logits, target.long(), weight=w)


def _evaluate(model, data: TaskData, split: str, enc_cfg, cfg, device, thresholds=None, tune=False, passes=None,
              features: CropFeatures | None = None):
    """(metrics, table, probs, thresholds) of one split; ``tune`` fits the thresholds on this split first.
    ``features``: the split's cached frozen-encoder crop embeddings (cached linear probe) instead of the encoder."""
    ws = getattr(data, split)
    if ws.n_records == 0:  # e.g. no labelled record in the test folds: metrics are undefined, not zero
        names = ["accuracy", "balanced_accuracy", "macro_f1"] if not data.multilabel else \
            ["challenge_score", "macro_auroc", "macro_auprc", "macro_f1", "accuracy"] \
            if data.task == "arrhythmia27" else ["macro_auroc", "macro_auprc", "macro_f1", "accuracy"]
        return {k: float("nan") for k in names}, pd.DataFrame(), np.zeros((0, len(data.classes))), thresholds
    if features is not None:
        probs = predict_from_features(model.head, features, data.multilabel, aggregate=cfg.eval_aggregate)
    else:
        probs = predict_records(model, ws, enc_cfg.input_samples, data.multilabel, cfg.optim.batch_size * 2, device,
                                aggregate=cfg.eval_aggregate)  # fmt: skip
    if not data.multilabel:
        metrics, table = localization_metrics(ws.y, probs, data.classes)
        return metrics, table, probs, None
    if data.task == "ptbxl-superclass":
        thresholds = np.full(len(data.classes), 0.5) if thresholds is None else thresholds
        metrics, table = superclass_metrics(ws.y, probs, thresholds, data.classes)
        return metrics, table, probs, thresholds
    if tune:
        thresholds, _ = tune_thresholds(ws.y, probs, data.classes, cfg.threshold_grid, passes or cfg.threshold_passes)
    elif thresholds is None:
        thresholds = np.full(len(data.classes), 0.5)
    metrics, table = arrhythmia_metrics(ws.y, probs, thresholds, data.classes,
                                        data.definitions["abbreviation"].tolist())  # fmt: skip
    return metrics, table, probs, thresholds


def finetune(
    cfg: FinetuneConfig,
    out_dir: str | Path,
    run_id: str | None = None,
    progress: bool = True,
    data: TaskData | None = None,
) -> dict[str, Any]:
    """Run one fine-tuning (see module docstring). Returns a small dict of metrics and artifact paths."""
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    gens = cell_generators(cfg.seed, device)
    data = data or prepare_task(cfg)
    model, enc_cfg = build_model(cfg, len(data.classes), gens["init"])
    model.to(device)
    set_dropout_generator(model, gens["dropout"])
    arch = arch_of(model)
    primary = cfg.primary_metric

    buffer = None
    if run_id:
        from mlflow.tracking import MlflowClient

        from ecgmodel.tracking import MLFLOW_WRITE_LOCK, MetricBuffer

        client = MlflowClient()
        params = {k: v for k, v in flatten(cfg).items() if k != "store"}
        params.update(
            store=cfg.store, n_labelled=data.info["n_labelled"], n_train_records=data.info["n_train_records"],
            n_val=data.info["n_val"], n_val_split=data.info["n_val_split"], n_labels_used=data.info["n_labels_used"],
            n_test=data.info["n_test"], n_copies_dropped=data.info["n_copies_dropped"],
            split_assignment=data.info["split_assignment"], label_target=data.target,
            encoder_params=sum(p.numel() for p in model.encoder.parameters()), arch=arch,
            encoder_input_samples=enc_cfg.input_samples, primary_metric=primary, num_threads=torch.get_num_threads(),
            # 'init' reads ssl/random/supervised; the reference itself goes to encoder_ref
            init=cfg.init if cfg.init in (RANDOM_INIT, SUPERVISED_INIT) else "ssl", encoder_ref=cfg.init,
        )  # fmt: skip
        if cfg.mode == "linear":
            params["probe_pooling"] = PROBE_POOLING
        with MLFLOW_WRITE_LOCK:
            client.log_batch(run_id, params=_params(params))
            client.set_tag(run_id, "ecgssl.config_hash", config_hash(cfg))
        buffer = MetricBuffer(run_id, client)

    if cfg.mode == "linear":
        fit = _train_probe(cfg, model, data, enc_cfg, device, buffer)
    else:
        fit = _train_full(cfg, model, data, enc_cfg, device, gens, buffer, progress)
    feats = fit.pop("features", {})
    history = fit.pop("history")

    model.load_state_dict(fit["state"])
    val_metrics, val_table, _, thresholds = _evaluate(model, data, "val", enc_cfg, cfg, device,
                                                      tune=cfg.tune_thresholds, features=feats.get("val"))  # fmt: skip
    test_metrics, test_table, test_probs, _ = _evaluate(model, data, "test", enc_cfg, cfg, device,
                                                        thresholds=thresholds, features=feats.get("test"))  # fmt: skip
    save_predictions(out / "test_predictions.npz", data, test_probs, thresholds)

    # ---- artifacts
    data.definitions.to_csv(out / "label_definitions.csv", index=False)
    save_split_artifacts(out, data.records[["source", "record", "patient_id"]], data.records["split"], data.subsets)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    if data.multilabel and thresholds is not None:
        thr = data.definitions[["index", "code", "abbreviation"]].copy()
        thr["threshold"] = thresholds
        thr.to_csv(out / "thresholds.csv", index=False)
        test_table.to_csv(out / "per_class_test.csv", index=False)
        val_table.to_csv(out / "per_class_val.csv", index=False)
    else:
        test_table.to_csv(out / "confusion_test.csv")
        val_table.to_csv(out / "confusion_val.csv")
    blob: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "arch": arch,
        "task": cfg.task,
        "classes": list(data.classes),
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "input_samples": int(enc_cfg.input_samples),
        "mode": cfg.mode,
        "finetune_config": cfg.model_dump(mode="json"),
        "state_dict": fit["state"],
    }
    if arch == "transformer":
        blob.update(encoder_config=enc_cfg.model_dump(mode="json"), pooling=model.pooling)
    else:
        blob["model_config"] = cfg.supervised.model_dump(mode="json")
    torch.save(blob, out / "model.pt")
    result: dict[str, Any] = {
        "task": cfg.task,
        "fraction": cfg.fraction,
        "seed": cfg.seed,
        "init": cfg.init,
        "mode": cfg.mode,
        "arch": arch,
        "n_labelled": int(data.info["n_labelled"]),
        "n_val": int(data.info["n_val"]),
        "n_labels_used": int(data.info["n_labels_used"]),
        "n_test": int(data.info["n_test"]),
        "lr": cfg.optim.lr,
        "encoder_lr_scale": cfg.optim.encoder_lr_scale,
        "warmup_fraction": cfg.optim.warmup_fraction,
        "best_epoch": int(fit["best_epoch"]),
        "epochs_trained": int(fit["epochs_trained"]),
        "max_epochs": int(fit["max_epochs"]),
        "patience": fit["patience"],
        "budget_limited": bool(fit["budget_limited"]),
        "primary_metric": primary,
        **({"probe_C": fit["probe_C"], "grid_edge": bool(fit["grid_edge"])} if cfg.mode == "linear" else {}),
        **{f"best_val_{k}": float(v) for k, v in val_metrics.items()},
        **{f"test_{k}": float(v) for k, v in test_metrics.items()},
        "num_threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0, 2),
        "out_dir": str(out),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=str))
    if buffer:
        final = {k: v for k, v in result.items() if k.startswith(("best_", "test_")) and _finite(v)}
        final.update(seconds=result["seconds"], epochs_trained=result["epochs_trained"])
        if cfg.mode == "linear":
            final["probe_C"] = result["probe_C"]
        buffer.add(final, int(fit["epochs_trained"]))
        buffer.flush()
        from ecgmodel.tracking import MLFLOW_WRITE_LOCK

        skip = set() if cfg.log_model else {"model.pt"}
        with MLFLOW_WRITE_LOCK:
            client.set_tag(run_id, "ecgssl.budget_limited", "true" if result["budget_limited"] else "false")
            if cfg.mode == "linear":
                client.set_tag(run_id, "ecgssl.grid_edge", "true" if result["grid_edge"] else "false")
            for path in sorted(out.iterdir()):
                if path.is_file() and path.name not in skip:
                    client.log_artifact(run_id, str(path))
    return result


def _train_full(cfg: FinetuneConfig, model, data: TaskData, enc_cfg, device, gens, buffer, progress) -> dict:
    """Gradient training with early stopping (see module docstring): the best state and its bookkeeping."""
    train = data.train
    signal = torch.from_numpy(train.signal)
    present = torch.from_numpy(train.lead_present)
    valid = torch.from_numpy(train.valid_length)
    n = len(train.signal)
    targets = torch.from_numpy(np.asarray(train.y)[train.record_index])
    loss_fn = _loss_fn(data, cfg, device)
    o = cfg.optim
    opt = torch.optim.AdamW(model.param_groups(o.lr, o.encoder_lr_scale, o.weight_decay))
    steps_per_epoch = max(1, math.ceil(n / o.batch_size))
    total = o.epochs * steps_per_epoch
    warmup = max(o.warmup_steps, int(round(o.warmup_fraction * total)))
    warmup_epochs = math.ceil(warmup / steps_per_epoch)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if o.lr_schedule == "constant":
            return 1.0
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = gens["data"]
    primary = cfg.primary_metric
    best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "state": None}
    history: list[dict[str, float]] = []
    epoch = 0
    bar = tqdm(range(1, o.epochs + 1), desc=f"finetune {cfg.task} f={cfg.fraction:g} {cfg.init[:12]}",
               disable=not progress, leave=False)  # fmt: skip
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        for start in range(0, n, o.batch_size):
            idx = order[start : start + o.batch_size]
            # crop on the CPU with the cell's generator (reproducible on any device), then move the batch
            x = to_model_input(signal[idx], length=enc_cfg.input_samples, crop_mode="random",
                               valid_length=valid[idx], generator=gen).to(device)  # fmt: skip
            logits = model(x, present[idx].to(device))
            loss = loss_fn(logits, targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        # epoch selection: one coordinate-ascent sweep is enough to rank epochs; the final tuning does them all
        val_metrics, _, _, _ = _evaluate(model, data, "val", enc_cfg, cfg, device, tune=cfg.tune_thresholds, passes=1)
        row = {"train_loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
               **{f"val_{k}": v for k, v in val_metrics.items()}}  # fmt: skip
        history.append({"epoch": epoch, **row})
        if buffer:
            buffer.add(row, epoch)
        score = val_metrics[primary]
        if np.isfinite(score) and score > best["score"] or best["state"] is None:
            best.update(score=score, epoch=epoch,
                        state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))  # fmt: skip
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{score:.3f}")
        if epoch >= max(best["epoch"], warmup_epochs) + o.patience:
            break
    bar.close()
    return {"state": best["state"], "history": history, "best_epoch": best["epoch"], "epochs_trained": epoch,
            "max_epochs": o.epochs, "patience": o.patience,
            "budget_limited": best["epoch"] > o.epochs - o.patience}  # fmt: skip


def _train_probe(cfg: FinetuneConfig, model: DownstreamModel, data: TaskData, enc_cfg, device, buffer) -> dict:
    """The convex linear probe (:mod:`ecgmodel.downstream.probe`) on cached mean+max crop embeddings; the chosen fit
    is written into ``model.head``. ``best_epoch`` / ``epochs_trained`` are the chosen fit's L-BFGS iterations,
    ``max_epochs`` the iteration cap; budget-limited when that fit did not converge."""
    feats = {split: embed_crops(model.encoder, getattr(data, split), enc_cfg.input_samples, cfg.optim.batch_size * 2,
                                device, cache=FEATURE_CACHE, pooling=PROBE_POOLING)
             for split in ("train", "val", "test")}  # fmt: skip
    X = feats["train"].features.cpu().numpy()
    y_records = np.asarray(data.train.y)
    y = y_records[feats["train"].owner]
    n_classes = len(data.classes)
    weight = record_class_weights(y_records, data.multilabel, n_classes, cfg.optim.class_weighted,
                                  cfg.optim.max_pos_weight)  # fmt: skip
    metrics_of: list[dict[str, float]] = []

    def set_head(fit: ProbeFit) -> None:
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(fit.weight, dtype=torch.float32))
            model.head.bias.copy_(torch.as_tensor(fit.bias, dtype=torch.float32))

    def score(fit: ProbeFit) -> float:
        set_head(fit)
        val_metrics, _, _, _ = _evaluate(model, data, "val", enc_cfg, cfg, device, tune=cfg.tune_thresholds, passes=1,
                                         features=feats["val"])  # fmt: skip
        metrics_of.append(val_metrics)
        return float(val_metrics[cfg.primary_metric])

    p = cfg.probe
    sel = select_probe(X, y, data.multilabel, n_classes, p.C_grid, weight, p.max_iter, p.tol, score)
    history = []
    for i, (row, val_metrics) in enumerate(zip(sel.grid, metrics_of, strict=True)):
        entry = {"C": row["C"], "n_iter": row["n_iter"], "converged": row["converged"],
                 **{f"val_{k}": v for k, v in val_metrics.items()}}  # fmt: skip
        history.append(entry)
        if buffer:
            buffer.add({"probe_grid_C": row["C"], "probe_n_iter": row["n_iter"],
                        **{f"val_{k}": v for k, v in val_metrics.items()}}, i)  # fmt: skip
    set_head(sel.best)
    model.head.to(device)
    state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return {"state": state, "history": history, "features": feats, "best_epoch": sel.best.n_iter,
            "epochs_trained": sel.best.n_iter, "max_epochs": p.max_iter, "patience": None,
            "budget_limited": not sel.best.converged, "probe_C": sel.best.C, "grid_edge": sel.grid_edge}  # fmt: skip


def save_predictions(path: Path, data: TaskData, probs: np.ndarray, thresholds: np.ndarray | None) -> Path:
    """The test predictions of one run, for the paired bootstrap of the ablation report
    (``ecgmodel.metrics.bootstrap``): record keys, labels, probabilities and thresholded outputs."""
    ws = data.test
    keys = (ws.records["source"].astype(str) + "/" + ws.records["record"].astype(str)).to_numpy(dtype=str)
    if thresholds is not None:  # multi-label: the thresholded outputs the metric scores
        outputs = probs >= np.asarray(thresholds)[None, :]
    else:  # single-label: the predicted class
        outputs = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    np.savez_compressed(path, keys=keys, y=np.asarray(ws.y), probs=probs, outputs=outputs,
                        classes=np.asarray(data.classes, dtype=str), task=np.asarray(data.task))  # fmt: skip
    return path


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(float(v))


def _params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in params.items()]
