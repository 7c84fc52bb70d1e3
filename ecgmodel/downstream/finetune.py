"""The fine-tuning loop of one run (one ablation cell).

``finetune(cfg, out_dir, run_id=None)``:

1. :func:`ecgmodel.downstream.dataset.prepare_task` - labels, patient-aware split, nested label subset, windows
   of the used records loaded into memory once;
2. encoder: random (architecture of ``arch_from`` or ``cfg.encoder``) or pretrained (``load_encoder(cfg.init)``),
   plus a linear head (:class:`~ecgmodel.downstream.model.DownstreamModel`), full fine-tune or linear probe;
3. AdamW + warm-up/cosine schedule; random crops of ``input_samples`` from each stored window; class-weighted
   BCE (multi-label tasks) or cross-entropy (localization). The linear probe (``mode="linear"``) by default embeds
   the crops tiling every window once with the frozen encoder and trains the head on those cached embeddings
   (``linear_features``);
4. after every epoch the validation records are scored (arrhythmia27: Challenge score at thresholds tuned on val);
   the best epoch's weights are kept; the test split is scored once, with the best weights and the val thresholds;
5. artifacts into ``out_dir`` (label definitions, splits and subset ids, thresholds, per-class table or confusion
   matrix, metrics, weights) and, when ``run_id`` is given, everything logged to that MLflow run (metrics per
   epoch batched, ``best_*`` / ``test_*`` at the end).
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
from ecgmodel.downstream.config import FinetuneConfig
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
from ecgmodel.downstream.model import DownstreamModel
from ecgmodel.downstream.thresholds import tune_thresholds
from ecgmodel.models.encoder import EncoderConfig, build_encoder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: FinetuneConfig, n_classes: int) -> tuple[DownstreamModel, EncoderConfig]:
    """Encoder (random or pretrained, see FinetuneConfig.init) + linear head, seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    if cfg.init == "random":
        if cfg.arch_from:
            from ecgmodel.train.checkpoint import load_encoder

            _, enc_cfg = load_encoder(cfg.arch_from)
            torch.manual_seed(cfg.seed)
        else:
            enc_cfg = cfg.encoder
        encoder = build_encoder(enc_cfg)
    else:
        from ecgmodel.train.checkpoint import load_encoder

        encoder, enc_cfg = load_encoder(cfg.init)
    return DownstreamModel(encoder, n_classes, cfg.mode, cfg.optim.head_dropout), enc_cfg


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
    data = data or prepare_task(cfg)
    model, enc_cfg = build_model(cfg, len(data.classes))
    model.to(device)
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
            encoder_params=sum(p.numel() for p in model.encoder.parameters()),
            encoder_input_samples=enc_cfg.input_samples, primary_metric=primary,
            # 'init' reads ssl/random; the reference itself goes to encoder_ref
            init="random" if cfg.init == "random" else "ssl", encoder_ref=cfg.init,
        )  # fmt: skip
        with MLFLOW_WRITE_LOCK:
            client.log_batch(run_id, params=_params(params))
            client.set_tag(run_id, "ecgssl.config_hash", config_hash(cfg))
        buffer = MetricBuffer(run_id, client)

    train = data.train
    signal = torch.from_numpy(train.signal)
    present = torch.from_numpy(train.lead_present)
    valid = torch.from_numpy(train.valid_length)
    # cached linear probe: the frozen encoder embeds the crops tiling every window once; the head trains on them
    cached = cfg.mode == "linear" and cfg.linear_features == "cached"
    feats: dict[str, CropFeatures] = {}
    if cached:
        for split in ("train", "val", "test"):
            feats[split] = embed_crops(model.encoder, getattr(data, split), enc_cfg.input_samples,
                                       cfg.optim.batch_size * 2, device, cache=FEATURE_CACHE)  # fmt: skip
        n = len(feats["train"].features)
        targets = torch.from_numpy(np.asarray(train.y)[feats["train"].owner])
    else:
        n = len(train.signal)
        targets = torch.from_numpy(np.asarray(train.y)[train.record_index])
    loss_fn = _loss_fn(data, cfg, device)
    o = cfg.optim
    opt = torch.optim.AdamW(model.param_groups(o.lr, o.encoder_lr_scale, o.weight_decay))
    steps_per_epoch = max(1, math.ceil(n / o.batch_size))
    total = o.epochs * steps_per_epoch
    warmup = max(o.warmup_steps, int(round(o.warmup_fraction * total)))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(cfg.seed)
    best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "state": None, "metrics": {}}
    history: list[dict[str, float]] = []
    step = 0
    bar = tqdm(range(1, o.epochs + 1), desc=f"finetune {cfg.task} f={cfg.fraction:g} {cfg.init[:12]}",
               disable=not progress, leave=False)  # fmt: skip
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        for start in range(0, n, o.batch_size):
            idx = order[start : start + o.batch_size]
            if cached:
                logits = model.head(model.dropout(feats["train"].features[idx.to(device)]))
            else:
                # crop on the CPU with the seeded generator (reproducible on any device), then move the batch
                x = to_model_input(signal[idx], length=enc_cfg.input_samples, crop_mode="random",
                                   valid_length=valid[idx], generator=gen).to(device)  # fmt: skip
                logits = model(x, present[idx].to(device))
            loss = loss_fn(logits, targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
        # epoch selection: one coordinate-ascent sweep is enough to rank epochs; the final tuning does them all
        val_metrics, _, _, _ = _evaluate(model, data, "val", enc_cfg, cfg, device, tune=cfg.tune_thresholds, passes=1,
                                         features=feats.get("val"))  # fmt: skip
        row = {"train_loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
               **{f"val_{k}": v for k, v in val_metrics.items()}}  # fmt: skip
        history.append({"epoch": epoch, **row})
        if buffer:
            buffer.add(row, epoch)
        score = val_metrics[primary]
        if np.isfinite(score) and score > best["score"] or best["state"] is None:
            best.update(score=score, epoch=epoch, metrics=val_metrics,
                        state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))  # fmt: skip
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{score:.3f}")

    model.load_state_dict(best["state"])
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
    torch.save(
        {
            "format": "ecgssl-downstream",
            "task": cfg.task,
            "classes": list(data.classes),
            "thresholds": None if thresholds is None else [float(t) for t in thresholds],
            "encoder_config": enc_cfg.model_dump(mode="json"),
            "finetune_config": cfg.model_dump(mode="json"),
            "state_dict": best["state"],
        },
        out / "model.pt",
    )
    result: dict[str, Any] = {
        "task": cfg.task,
        "fraction": cfg.fraction,
        "seed": cfg.seed,
        "init": cfg.init,
        "mode": cfg.mode,
        "n_labelled": int(data.info["n_labelled"]),
        "n_val": int(data.info["n_val"]),
        "n_labels_used": int(data.info["n_labels_used"]),
        "n_test": int(data.info["n_test"]),
        "lr": o.lr,
        "encoder_lr_scale": o.encoder_lr_scale,
        "warmup_fraction": o.warmup_fraction,
        "best_epoch": int(best["epoch"]),
        "primary_metric": primary,
        **{f"best_val_{k}": float(v) for k, v in val_metrics.items()},
        **{f"test_{k}": float(v) for k, v in test_metrics.items()},
        "seconds": round(time.time() - t0, 2),
        "out_dir": str(out),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=str))
    if buffer:
        final = {k: v for k, v in result.items() if k.startswith(("best_", "test_")) and _finite(v)}
        final["seconds"] = result["seconds"]
        buffer.add(final, o.epochs)
        buffer.flush()
        from ecgmodel.tracking import MLFLOW_WRITE_LOCK

        skip = set() if cfg.log_model else {"model.pt"}
        with MLFLOW_WRITE_LOCK:
            for path in sorted(out.iterdir()):
                if path.is_file() and path.name not in skip:
                    client.log_artifact(run_id, str(path))
    return result


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
