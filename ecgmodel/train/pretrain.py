"""Self-supervised pretraining loop (nanoGPT-style: one readable function).

    python -m ecgmodel.train.pretrain --store STORE --preset smoke --out runs/pretrain [--set optim.lr=3e-4]
    torchrun --nproc_per_node 2 -m ecgmodel.train.pretrain --store STORE ...   # DDP, same entry point

One step: batch of int16 windows (already on the device) -> random crop + per-sample standardisation ->
(spatial) lead permutation with probability p -> (temporal) fresh random span mask -> encoder + heads ->
loss = masked MSE + lambda * lead CE -> AdamW step (warmup + cosine, grad clipping, bf16 autocast on CUDA).
Training resumes from ``<out>/ckpt_last.pt`` exactly where it stopped (same batches, masks and weights).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ecgmodel.code_digest import code_digest
from ecgmodel.config import apply_overrides, config_hash, flatten
from ecgmodel.data.loader import make_loader
from ecgmodel.data.signal import FLAT_MV
from ecgmodel.data.split_assignment import SEEN_FILE, SEEN_INFO, write_seen
from ecgmodel.data.transforms import to_model_input
from ecgmodel.models.encoder import build_encoder
from ecgmodel.models.heads import PretrainModel
from ecgmodel.ssl.losses import lead_accuracy, lead_cross_entropy, masked_mse
from ecgmodel.ssl.masking import all_lead_mask, span_mask
from ecgmodel.ssl.shuffle import apply_lead_permutation, random_lead_permutation
from ecgmodel.train import distributed
from ecgmodel.train.checkpoint import (
    ENCODER_FILE,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_encoder,
    set_rng_state,
)
from ecgmodel.train.config import PretrainConfig, preset

CKPT_FILE = "ckpt_last.pt"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"  # written when a run has finished and logged everything


class WarmupCosine:
    """Learning-rate multiplier: linear warmup to 1, cosine decay to ``min_lr / lr`` at ``max_steps``.
    A class (not a lambda) so that LambdaLR's state_dict stays plain data."""

    def __init__(self, warmup: int, max_steps: int, floor: float):
        self.warmup, self.max_steps, self.floor = warmup, max_steps, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if step >= self.max_steps:
            return self.floor
        progress = (step - self.warmup) / max(1, self.max_steps - self.warmup)
        return self.floor + 0.5 * (1.0 - self.floor) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only (not biases, norms, position/slot embeddings, mask token)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embed = name.endswith(("pos_embed", "slot_embed", "mask_token"))
        (decay if p.ndim >= 2 and not is_embed else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretext_step(
    model: torch.nn.Module,
    signal: torch.Tensor,
    lead_present: torch.Tensor,
    valid_length: torch.Tensor,
    cfg: PretrainConfig,
    gen: torch.Generator,
    crop_mode: str = "random",
    shuffle_prob: float | None = None,
    mask_mode: str | None = None,
) -> dict[str, torch.Tensor]:
    """Forward pass of both pretext tasks on one int16 batch; returns losses and what the plots need.

    ``recon_alllead`` is the reconstruction error on the patches hidden in every present lead at once (the part
    of the temporal task that lead algebra cannot solve); ``mask_mode`` overrides ``cfg.ssl.mask_mode``."""
    ssl, enc = cfg.ssl, cfg.encoder
    x = to_model_input(signal, enc.input_samples, crop_mode, valid_length, gen, cfg.data.min_std_uv)
    B, L, T = x.shape
    P = T // enc.patch_size
    # flat leads (the ingest's QC_FLAT rule: peak-to-peak under FLAT_MV) carry no signal: no lead-number target,
    # no reconstruction target
    live = (signal.amax(dim=-1).float() - signal.amin(dim=-1).float()) >= FLAT_MV * 1000.0
    weight = (lead_present & live).float()
    out: dict[str, torch.Tensor] = {}
    if ssl.mode in ("joint", "shuffle"):
        src = random_lead_permutation(
            B, L, ssl.shuffle_prob if shuffle_prob is None else shuffle_prob, ssl.shuffle_mode,
            (ssl.shuffle_subset_min, ssl.shuffle_subset_max), gen, x.device,
        )
        x = apply_lead_permutation(x, src)  # the reconstruction target follows the slots
        weight = apply_lead_permutation(weight, src)
        out["lead_target"] = src
    mask = None
    if ssl.mode in ("joint", "mask"):
        mask = span_mask(B, L, P, (ssl.mask_ratio_min, ssl.mask_ratio_max), ssl.mask_span,
                         mask_mode or ssl.mask_mode, ssl.mask_time_share, gen, x.device)
    inp = x
    if mask is not None and ssl.mask_fill == "zero":
        inp = x.view(B, L, P, -1).masked_fill(mask[..., None], 0.0).view(B, L, T)
    with autocast_ctx(cfg, x.device):
        recon, logits = model(inp, mask if ssl.mask_fill == "token" else None)
    loss = x.new_zeros(())
    if recon is not None:
        out["recon_loss"] = masked_mse(recon, x, mask, weight)
        out["recon_alllead"] = masked_mse(recon, x, all_lead_mask(mask, weight > 0), weight)
        loss = loss + out["recon_loss"]
        out["recon"], out["mask"] = recon.detach(), mask
    if logits is not None:
        out["lead_ce"] = lead_cross_entropy(logits, out["lead_target"], weight)
        out["lead_acc"] = lead_accuracy(logits, out["lead_target"], weight)
        loss = loss + ssl.lead_loss_weight * out["lead_ce"]
        out["logits"] = logits.detach()
    out["loss"], out["input"], out["weight"] = loss, x, weight
    return out


def autocast_ctx(cfg: PretrainConfig, device: torch.device):
    dtype = cfg.run.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _mlflow_start(cfg: PretrainConfig, store: str, store_hash: str, run_id: str | None, flow_run_id: str | None,
                  tracking_uri: str | None):
    import mlflow
    from mlflow.exceptions import MlflowException

    from ecgmodel.dataset_inputs import log_store_inputs
    from ecgmodel.tracking import run_tags, setup_mlflow

    setup_mlflow(cfg.run.experiment, tracking_uri)
    if run_id:
        try:
            return mlflow.start_run(run_id=run_id, log_system_metrics=True)
        except MlflowException:  # the checkpoint's run lives in another tracking store: log to a new run here
            print(f"pretrain: MLflow run {run_id} is not in the tracking store in force; starting a new run")
    tags = run_tags(config_hash=config_hash(cfg), store_hash=store_hash, store_path=str(Path(store).resolve()),
                    flow_run_id=flow_run_id, extra={"ecgssl.code_digest": code_digest()})
    run = mlflow.start_run(run_name=f"pretrain-{config_hash(cfg)[:8]}", tags=tags, log_system_metrics=True)
    mlflow.log_params(flatten(cfg))
    log_store_inputs(store, store_hash, cfg.data.splits)
    return run


def select_rows(store: str | Path, cfg: PretrainConfig) -> dict[str, Any]:
    """The store rows pretraining reads: canonical copies of the recordings in ``cfg.data.splits`` of the store's
    persisted split assignment; plus the held-out (validation) rows the eval_* metrics use and what was seen."""
    from ecgmodel.data.split_assignment import ensure_assignment, file_sha, rows_of
    from ecgmodel.data.store import Store, open_store

    st = store if isinstance(store, Store) else open_store(store)
    meta = st.meta()
    table, path = ensure_assignment(st, cfg.data.split)
    rows = rows_of(meta, table, cfg.data.splits)
    if len(rows) == 0:
        raise ValueError(f"{store}: no store row lies in the pretraining splits {cfg.data.splits} of {path} "
                         "(rule: pretraining reads canonical copies of those splits only)")  # fmt: skip
    held = [s for s in ("val",) if s not in cfg.data.splits]
    eval_rows = rows_of(meta, table, held) if held else np.zeros(0, np.int64)
    seen = table[table["split"].isin(cfg.data.splits) & table["canonical"].astype(bool)]
    extra = []
    for other in cfg.data.extra_stores:  # unlabelled external stores: read whole, listed as seen
        from ecgmodel.data.split_assignment import recording_keys, store_records

        ost = open_store(other)
        recs = store_records(ost.meta())
        recs = recs.assign(recording_key=recording_keys(recs).to_numpy(), split="external")
        seen = pd.concat([seen, recs[["source", "record", "recording_key", "split"]]], ignore_index=True)
        extra.append((str(other), None))
    info = {"store": str(st.path), "store_hash": st.hash, "split_assignment": str(path),
            "split_assignment_sha": file_sha(path), "splits": list(cfg.data.splits), "n_windows": int(len(rows)),
            "n_recordings": int(len(seen)), "n_eval_windows": int(min(len(eval_rows), cfg.data.eval_windows))}  # fmt: skip
    info["extra_stores"] = list(cfg.data.extra_stores)
    return {"rows": rows, "eval_rows": eval_rows[: cfg.data.eval_windows], "seen": seen, "info": info,
            "extra": extra}


def evaluate_held_out(model, store, selection: dict[str, Any], cfg: PretrainConfig, device, train_loader):
    """eval_* metrics on held-out (validation-split) windows; on the training stream only when the store has no
    held-out row (``source`` says which)."""
    from ecgmodel.data.loader import InMemoryLoader

    rows = selection["eval_rows"]
    if len(rows) == 0:
        return {**evaluate(model, train_loader, cfg, device), "source": "train"}
    batch = min(cfg.data.batch_size, len(rows))
    held = InMemoryLoader(store, batch, device, rows=rows, seed=cfg.run.seed, device_resident=True)
    return {**evaluate(model, held, cfg, device, batches=max(1, len(rows) // batch)), "source": "val"}


@torch.no_grad()
def evaluate(model, loader, cfg: PretrainConfig, device: torch.device, batches: int = 4) -> dict[str, Any]:
    """Deterministic pretext evaluation (centre crop, every sample shuffled, fixed mask seed). With a
    reconstruction head, ``eval_recon_time`` is the error under a same-time mask whatever the training mask,
    so runs with different mask modes compare on the task lead algebra cannot solve."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(12345)
    cm = np.zeros((cfg.encoder.n_leads, cfg.encoder.n_leads), dtype=np.int64)
    sums: dict[str, float] = {}
    first = None
    for _ in range(batches):
        b = loader.next()
        out = pretext_step(model, b.signal, b.lead_present, b.valid_length, cfg, gen, "center", shuffle_prob=1.0)
        for k in ("loss", "recon_loss", "lead_ce", "lead_acc"):
            if k in out:
                sums[k] = sums.get(k, 0.0) + float(out[k]) / batches
        if "logits" in out:
            pred = out["logits"].argmax(-1)[out["weight"] > 0].cpu().numpy()
            true = out["lead_target"][out["weight"] > 0].cpu().numpy()
            np.add.at(cm, (true, pred), 1)
        if first is None:
            first = out
        if cfg.ssl.mode != "shuffle":
            tout = pretext_step(model, b.signal, b.lead_present, b.valid_length, cfg, gen, "center",
                                shuffle_prob=1.0, mask_mode="time")
            sums["recon_time"] = sums.get("recon_time", 0.0) + float(tout["recon_loss"]) / batches
    model.train()
    return {"metrics": {f"eval_{k}": v for k, v in sums.items()}, "confusion": cm, "example": first}


def train(
    cfg: PretrainConfig,
    store: str | Path,
    out: str | Path,
    resume: bool = True,
    flow_run_id: str | None = None,
    tracking_uri: str | None = None,
    stop_after: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Pretrain on ``store``; checkpoints and the encoder go to ``out``. ``stop_after`` ends this call after that
    many steps (as an interruption would) without the end-of-run artifacts. ``on_progress(step, max_steps)`` is
    called on the main process at the start and after every step (an orchestrator throttles and shows it).
    Returns a summary dict."""
    info = distributed.setup(cfg.run.device)
    device = info.device
    out = Path(out)
    ckpt_path = out / CKPT_FILE
    out.mkdir(parents=True, exist_ok=True)
    if cfg.run.threads and device.type == "cpu":
        torch.set_num_threads(cfg.run.threads)
    if cfg.data.batch_size % info.world_size:
        raise ValueError(f"data.batch_size {cfg.data.batch_size} is not divisible by {info.world_size} processes")
    torch.manual_seed(cfg.run.seed)  # same init on every rank (DDP broadcasts rank 0's anyway)
    np.random.seed(cfg.run.seed + info.rank)
    gen = torch.Generator(device=device).manual_seed(cfg.run.seed * 7919 + info.rank)  # pretext randomness

    # One view of the store, pinned to the commit it was opened at: the rows read, the split, the recorded hash and
    # the MLflow tag all describe that commit even if an ingest commits more rows meanwhile.
    from ecgmodel.data.store import open_store

    pinned = open_store(store)
    selection = select_rows(pinned, cfg)
    if info.is_main:
        write_seen(out, selection["seen"], selection["info"])
    loader = make_loader(
        pinned, cfg.data.loader, cfg.data.batch_size // info.world_size, device, info.rank, info.world_size,
        cfg.run.seed, cfg.data.buffer_chunks, cfg.data.prefetch, cfg.data.device_resident, rows=selection["rows"],
        extra=selection["extra"] or None,
    )
    raw = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode).to(device)
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(cfg.optim.warmup_steps, cfg.optim.max_steps, cfg.optim.min_lr / cfg.optim.lr)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling; kept for fp16 configs
    step, run_id = 0, None
    result_path = out / RESULT_FILE
    code = code_digest()
    stale = finished_run_stale(result_path, code, cfg, tracking_uri) if resume and ckpt_path.exists() else None
    if stale:  # a finished run from other code or another tracking store is not this run's result: redo it
        print(f"pretrain: {out} holds a finished run that {stale}; training again from scratch", flush=True)
        resume = False
    if resume and ckpt_path.exists():
        # on the CPU: RNG states must stay CPU byte tensors; weights and optimizer state are copied to the device
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        saved = PretrainConfig.model_validate(ckpt["config"])
        if saved.encoder != cfg.encoder or saved.ssl != cfg.ssl:
            raise ValueError(f"{ckpt_path}: checkpoint was trained with another encoder/ssl config; "
                             "use a new --out or --no-resume")
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, run_id = int(ckpt["step"]), ckpt.get("mlflow_run_id") or None
        rng = ckpt["rng"][info.rank] if info.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        set_rng_state(rng, {"pretext": gen})
        loader.load_state_dict(ckpt["loader"][min(info.rank, len(ckpt["loader"]) - 1)])
    if info.is_main:  # keep the logged curve consistent with the state we (re)start from
        metrics_path = out / METRICS_FILE
        kept = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln)["step"] <= step] \
            if metrics_path.exists() and step > 0 else []
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
    if step >= cfg.optim.max_steps and result_path.exists():  # already finished (same code, run in the store)
        loader.close()
        distributed.cleanup()
        return {**json.loads(result_path.read_text()), "history": []}
    if info.is_main:
        result_path.unlink(missing_ok=True)
    unused = cfg.ssl.mode == "shuffle" or cfg.ssl.mask_fill == "zero"  # mask token then gets no gradient
    model = distributed.wrap_model(raw, info, compile=cfg.run.compile, find_unused_parameters=unused)

    mlflow_run = None
    if cfg.run.mlflow and info.is_main:
        mlflow_run = _mlflow_start(cfg, str(store), pinned.hash, run_id, flow_run_id, tracking_uri)
        run_id = mlflow_run.info.run_id
    buf = None
    if mlflow_run is not None:
        from ecgmodel.tracking import MetricBuffer

        buf = MetricBuffer(run_id)

    def checkpoint() -> None:
        # every rank's RNG and loader position are gathered so a DDP run resumes exactly too
        state = {"rng": rng_state({"pretext": gen}), "loader": loader.state_dict()}
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, state)
        else:
            gathered = [state]
        if info.is_main:
            save_checkpoint(
                ckpt_path, model=raw.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), step=step,
                rng=[g["rng"] for g in gathered], loader=[g["loader"] for g in gathered],
                config=cfg.model_dump(mode="json"), mlflow_run_id=run_id or "",
            )
        distributed.barrier(info)

    end = cfg.optim.max_steps if stop_after is None else min(cfg.optim.max_steps, step + stop_after)
    history: list[dict[str, float]] = []
    keys = [k for k, on in (("loss", True), ("recon_loss", cfg.ssl.mode != "shuffle"),
                            ("recon_alllead", cfg.ssl.mode != "shuffle" and cfg.ssl.mask_mode != "lead"),
                            ("lead_ce", cfg.ssl.mode != "mask"), ("lead_acc", cfg.ssl.mode != "mask")) if on]
    acc = torch.zeros(len(keys), device=device)
    n_acc, t_data, t_last = 0, 0.0, time.perf_counter()
    pbar = None
    if cfg.run.progress and info.is_main:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.optim.max_steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True)
    if on_progress is not None and info.is_main:
        on_progress(step, cfg.optim.max_steps)
    raw.train()
    while step < end:
        t0 = time.perf_counter()
        batch = loader.next()
        t_data += time.perf_counter() - t0
        out_ = pretext_step(model, batch.signal, batch.lead_present, batch.valid_length, cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out_["loss"]).backward()
        if cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        acc += torch.stack([out_[k].detach().float() for k in keys])
        n_acc += 1
        if step % cfg.run.log_every == 0 or step == end:
            vals = distributed.all_reduce_mean(acc / n_acc, info).tolist()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            metrics = dict(zip(keys, vals, strict=True))
            metrics["lr"] = scheduler.get_last_lr()[0]
            metrics["samples_per_s"] = n_acc * cfg.data.batch_size / (now - t_last)
            metrics["data_wait_frac"] = t_data / (now - t_last)
            metrics["epoch"] = loader.epoch
            history.append({"step": step, **metrics})
            if info.is_main:  # the loss curve next to the checkpoint (appended across resumes)
                with open(out / METRICS_FILE, "a") as fh:
                    fh.write(json.dumps(history[-1]) + "\n")
            if buf is not None:
                buf.add(metrics, step)
                buf.flush()
            if pbar is not None:
                pbar.set_postfix({k: f"{metrics[k]:.3f}" for k in keys})
            acc.zero_()
            n_acc, t_data, t_last = 0, 0.0, time.perf_counter()
        if pbar is not None:
            pbar.update(1)
        if on_progress is not None and info.is_main:
            on_progress(step, cfg.optim.max_steps)
        if step % cfg.run.ckpt_every == 0 or step == end:
            checkpoint()
    if pbar is not None:
        pbar.close()

    result: dict[str, Any] = {"checkpoint": str(ckpt_path), "step": step, "run_id": run_id, "history": history,
                              "metrics": {k: v for k, v in (history[-1] if history else {}).items() if k != "step"}}
    finished = step >= cfg.optim.max_steps
    if finished and info.is_main:
        encoder_path = save_encoder(out / ENCODER_FILE, raw.encoder, cfg.encoder)
        result["encoder_path"] = str(encoder_path)
        ev = evaluate_held_out(raw, pinned, selection, cfg, device, loader)
        result["metrics"].update(ev["metrics"])
        if mlflow_run is not None:
            result.update(_log_artifacts(cfg, ev, encoder_path, run_id, out, store=str(store)))
    if finished and info.is_main:
        result["code_digest"] = code
        result["tracking_uri"] = _uri_in_force(tracking_uri) if mlflow_run is not None else None
        result_path.write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, default=str))
    if mlflow_run is not None:
        import mlflow

        if buf is not None:
            buf.flush()
        mlflow.end_run(status="FINISHED" if finished else "KILLED")
    loader.close()
    distributed.barrier(info)
    distributed.cleanup()
    return result


def _uri_in_force(tracking_uri: str | None) -> str:
    from ecgmodel.tracking import tracking_uri as default_uri

    return tracking_uri or default_uri()


def finished_run_stale(result_path: Path, code: str, cfg: PretrainConfig, tracking_uri: str | None) -> str | None:
    """Why the finished run recorded in ``result_path`` must not be reused (``None``: it may be).

    Reused only when it was trained by the same code (:func:`ecgmodel.code_digest.code_digest`) and, when this
    run logs to MLflow, its run (and its registered encoder version) exist in the tracking store in force: a
    checkpoint found on disk whose run lives in another store would hand out links that lead nowhere there.
    """
    if not result_path.is_file():
        return None
    try:
        done = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return "has an unreadable result.json"
    if done.get("code_digest") != code:
        return f"was trained by other code (code digest {done.get('code_digest') or 'unknown'}, now {code})"
    if not cfg.run.mlflow:
        return None
    uri = _uri_in_force(tracking_uri)
    run_id = done.get("run_id")
    if not run_id:
        return f"has no MLflow run (now logging to {uri})"
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        if client.get_run(run_id).info.lifecycle_stage == "deleted":
            return f"has its MLflow run {run_id} deleted in {uri}"
    except MlflowException:
        return f"has its MLflow run {run_id} in another tracking store than the one in force ({uri})"
    model = str(done.get("encoder_uri") or "")
    if model.startswith("models:/") and "/" in model[len("models:/"):]:
        name, version = model[len("models:/"):].rsplit("/", 1)
        try:
            client.get_model_version(name, version)
        except MlflowException:
            return f"registered {model}, which is not in the registry of {uri}"
    return None


def _log_artifacts(cfg: PretrainConfig, ev: dict[str, Any], encoder_path: Path, run_id: str, out: Path,
                   store: str | None = None) -> dict:
    import matplotlib.pyplot as plt
    import mlflow

    from ecgmodel import plots
    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    mlflow.log_metrics(ev["metrics"], step=cfg.optim.max_steps)
    ex = ev["example"]
    if "recon" in ex:
        lead_names = [plots.LEADS[i] for i in ex["lead_target"][0].tolist()] if "lead_target" in ex else plots.LEADS
        fig = plots.plot_reconstruction(ex["input"][0].float().cpu().numpy(), ex["recon"][0].float().cpu().numpy(),
                                        ex["mask"][0].cpu().numpy(), leads=lead_names)
        mlflow.log_figure(fig, "plots/reconstruction.png")
        plt.close(fig)
    if "logits" in ex:
        fig = plots.plot_lead_confusion(ev["confusion"])
        mlflow.log_figure(fig, "plots/lead_confusion.png")
        plt.close(fig)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    extra = [out / "config.json"] + [out / n for n in (SEEN_FILE, SEEN_INFO) if (out / n).is_file()]
    try:  # the encoder as an MLflow pyfunc model (MLmodel, signature, real input example, contract) ...
        from ecgmodel.serving.log import log_model_folder, save_encoder_model

        folder, _ = save_encoder_model(out / "mlflow-model" / "encoder", encoder_path, store=store,
                                       extra_files=extra)  # fmt: skip
        log_model_folder(run_id, folder, "encoder")
    except Exception as e:  # noqa: BLE001 - ... or, failing that, the plain files load_encoder reads
        import logging

        logging.getLogger(__name__).warning("encoder not logged as an MLflow model (%s: %s); logging its files",
                                            type(e).__name__, e)  # fmt: skip
        with MLFLOW_WRITE_LOCK:
            for path in [encoder_path, *extra]:  # what the encoder saw travels with it (the ablation's leak check)
                mlflow.log_artifact(str(path), artifact_path="encoder")
    with MLFLOW_WRITE_LOCK:
        mlflow.set_tag("ecgssl.pretrain_splits", ",".join(cfg.data.splits))
        mlflow.set_tag("ecgssl.eval_source", ev.get("source", ""))
    result = {"encoder_uri": f"runs:/{run_id}/encoder"}
    name = encoder_registry_name(cfg)
    if cfg.run.register_model and name:
        tags = mlflow.get_run(run_id).data.tags
        meta = encoder_version_metadata(cfg, tags.get("ecgssl.store_hash"), ev["metrics"], run_id)
        result["encoder_uri"] = register_encoder(run_id, name, **meta)
        result["registered_model"] = name
    return result


#: Runs shorter than this (plumbing checks such as the tests' few-step runs) never become ``ecgssl-encoder``.
SMOKE_STEPS = 100


def encoder_registry_name(cfg: PretrainConfig) -> str:
    """The registered name of a run's encoder (docs/use.md "Registry"):

    * ``run.registered_model`` when it is set to something other than ``ecgssl-encoder`` (the pipeline's pretext
      arms: ``ecgssl-encoder-<arm>``);
    * ``ecgssl-encoder-smoke`` for runs of fewer than :data:`SMOKE_STEPS` steps;
    * else ``ecgssl-encoder`` (main runs). Only the pipeline moves the ``champion`` alias, after its gate.
    """
    name = cfg.run.registered_model
    if name != "ecgssl-encoder":
        return name
    if cfg.optim.max_steps < SMOKE_STEPS:
        return "ecgssl-encoder-smoke"
    return name


def encoder_version_metadata(
    cfg: PretrainConfig, store_hash: str | None, metrics: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """Description and tags of a registered encoder version: what it was trained on, how, and how well."""
    finite = {k: float(v) for k, v in metrics.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}  # fmt: skip
    pretext = {"joint": "masked reconstruction + lead-order prediction", "mask": "masked reconstruction",
               "shuffle": "lead-order prediction"}.get(cfg.ssl.mode, cfg.ssl.mode)  # fmt: skip
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(finite.items())) or "-"
    description = (
        f"Self-supervised ECG encoder ({pretext}), {cfg.optim.max_steps} steps on store {store_hash or 'unknown'}; "
        f"config {config_hash(cfg)}, MLflow run {run_id}. Final metrics: {shown}. "
        "An MLflow pyfunc model (mlflow.pyfunc.load_model: one embedding per record, docs/use.md); "
        "ecgmodel.train.checkpoint.load_encoder reads the same version as an Encoder."
    )
    tags = {"ecgssl.store_hash": store_hash or "unknown", "ecgssl.config_hash": config_hash(cfg),
            "ecgssl.pretext": cfg.ssl.mode, "ecgssl.steps": str(cfg.optim.max_steps),
            "ecgssl.d_model": str(cfg.encoder.d_model)}  # fmt: skip
    tags.update({f"ecgssl.metric.{k}": f"{v:.6g}" for k, v in finite.items()})
    return {"description": description, "tags": tags}


def register_encoder(
    run_id: str, name: str = "ecgssl-encoder", description: str | None = None, tags: dict[str, str] | None = None
) -> str:
    """Register the run's ``encoder/`` artifact directory as a new version of model ``name`` (with ``description``
    and ``tags``); returns ``models:/<name>/<version>`` (``load_encoder`` reads it back as an :class:`Encoder`)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ecgmodel.tracking import MLFLOW_WRITE_LOCK

    client = MlflowClient()
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/encoder"
    with MLFLOW_WRITE_LOCK:
        try:
            client.create_registered_model(name, description="ecgssl self-supervised ECG encoder (MLflow pyfunc "
                                           "model: embeddings; or ecgmodel.train.checkpoint.load_encoder)")
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)
    return f"models:/{name}/{mv.version}"


def build_config(preset_name: str = "smoke", overrides: list[str] | dict | None = None) -> PretrainConfig:
    return apply_overrides(preset(preset_name), overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecgmodel.train.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="ecgssl Zarr store")
    parser.add_argument("--preset", default="smoke", help="smoke (CPU) or base (GPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. optim.lr=3e-4 (repeatable)")
    parser.add_argument("--out", default="runs/pretrain", help="checkpoint directory")
    parser.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (resume later)")
    args = parser.parse_args(argv)
    cfg = build_config(args.preset, args.overrides)
    res = train(cfg, args.store, args.out, resume=not args.no_resume, stop_after=args.stop_after)
    if res.get("run_id") is not None or res["step"]:
        summary = {k: v for k, v in res.items() if k != "history"}
        if int(__import__("os").environ.get("RANK", "0")) == 0:
            print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
