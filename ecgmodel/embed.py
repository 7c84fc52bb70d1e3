"""One embedding per record from a frozen encoder: the interface for outside benchmarks and for users.

    >>> table = embed_store("data/store.zarr", encoder="models:/ecgssl-encoder/3")      # doctest: +SKIP
    >>> write_embeddings(table, "embeddings.parquet")                                   # doctest: +SKIP

Every window of a record is cut into crops of the encoder's ``input_samples`` that cover its whole valid
(unpadded) part: ``ceil(valid / input_samples)`` crops, evenly spaced from the first to the last possible start
(the last crop ends on the last valid sample, so crops overlap slightly when the length is not a multiple).
Each crop is standardised per lead like the training input (``to_model_input``), encoded, and pooled to one
vector; a record's vector is the mean over all crops of all its windows.

Pooling (``pooling``), chosen by a linear probe on validation records (docs/evidence.md):

* ``mean``: mean over all tokens of the present leads, ``d`` values (what fine-tuning uses);
* ``mean-max``: mean and max over those tokens, ``2 d`` values;
* ``lead-mean``: the mean over time of every lead slot, concatenated, ``12 d`` values (absent leads give 0).

The output table has one row per record: ``record``, ``source``, ``database``, ``split`` (PTB-XL's official
split from ``strat_fold``: 1-8 train, 9 val, 10 test; ``""`` for records without a fold), ``fold``,
``patient_id``, ``dx`` (codes as the store holds them), ``n_windows``, ``n_crops`` and ``vector`` (float32).
``encoder`` is anything :func:`ecgmodel.train.checkpoint.load_encoder` resolves (a path, a run id,
``runs:/...``, ``models:/ecgssl-encoder/N``), or ``None`` with ``random_arch`` for a seeded random encoder of
the same architecture (the baseline of a linear probe).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ecgmodel.data.store import open_store
from ecgmodel.data.transforms import standardize
from ecgmodel.models.encoder import Encoder, EncoderConfig, build_encoder

Pooling = Literal["mean", "mean-max", "lead-mean"]
POOLINGS: tuple[str, ...] = ("mean", "mean-max", "lead-mean")
DEFAULT_POOLING: Pooling = "mean-max"
COLUMNS = ["record", "source", "database", "split", "fold", "patient_id", "dx", "n_windows", "n_crops", "vector"]


def ptbxl_split(fold: int) -> str:
    """PTB-XL's recommended split of a ``strat_fold`` (1-8 train, 9 val, 10 test); ``""`` without a fold."""
    if 1 <= fold <= 8:
        return "train"
    return {9: "val", 10: "test"}.get(int(fold), "")


def crop_starts(valid_length: int, window: int, length: int) -> list[int]:
    """Starts of the crops that cover ``[0, valid_length)`` (at least one crop; within the window)."""
    if length > window:
        raise ValueError(f"the encoder's crop ({length} samples) is longer than the store's windows ({window})")
    valid = int(min(max(valid_length, length), window))
    n = max(1, math.ceil(valid / length))
    if n == 1:
        return [0]
    last = valid - length
    return [round(i * last / (n - 1)) for i in range(n)]


def random_encoder(arch: EncoderConfig | dict | str | Path, seed: int = 0) -> tuple[Encoder, EncoderConfig]:
    """A freshly initialised encoder (``torch.manual_seed(seed)``) with the architecture ``arch``: a config,
    or an encoder reference whose architecture is copied (weights are not used)."""
    if isinstance(arch, (str, Path)):
        from ecgmodel.train.checkpoint import load_encoder

        _, arch = load_encoder(arch)
    cfg = arch if isinstance(arch, EncoderConfig) else EncoderConfig.model_validate(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = build_encoder(cfg)
    return enc, cfg


def default_batch_size(device: str) -> int:
    """Crops per forward pass: 32 on a CPU, where a batch's activations then stay in the caches (256 was half
    as fast per crop on two cores: ``bench/embed.py --batch-sizes``, docs/performance.md); 256 on a GPU."""
    return 32 if torch.device(device).type == "cpu" else 256


def pool(tok: torch.Tensor, lead_present: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Tokens (B, L, P, d) -> (B, k) features, absent leads excluded (see module docstring)."""
    w = lead_present.to(tok.dtype)[:, :, None, None]
    n = (w.sum(dim=(1, 2)) * tok.shape[2]).clamp_min(1)
    mean = (tok * w).sum(dim=(1, 2)) / n
    if pooling == "mean":
        return mean
    if pooling == "mean-max":
        mx = tok.masked_fill(w == 0, float("-inf")).amax(dim=(1, 2))
        return torch.cat([mean, torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))], dim=1)
    if pooling == "lead-mean":
        return (tok.mean(dim=2) * lead_present.to(tok.dtype)[:, :, None]).flatten(1)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")


@torch.no_grad()
def embed_store(
    store: str | Path,
    encoder: str | Path | None = None,
    *,
    random_arch: EncoderConfig | dict | str | Path | None = None,
    seed: int = 0,
    pooling: Pooling | Sequence[Pooling] = DEFAULT_POOLING,
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    min_std_uv: float = 10.0,
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """One row per record of ``store`` (module docstring). Give ``encoder`` (a reference) or ``random_arch``.
    With a sequence of poolings the encoder runs once and a ``{pooling: table}`` dict comes back.
    ``batch_size``: crops per forward pass; None = :func:`default_batch_size` of the device."""
    if (encoder is None) == (random_arch is None):
        raise ValueError("give exactly one of encoder (a trained encoder reference) or random_arch (--random)")
    pools = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    for p in pools:
        if p not in POOLINGS:
            raise ValueError(f"unknown pooling {p!r}; choose one of {list(POOLINGS)}")
    if threads:
        torch.set_num_threads(threads)
    batch_size = batch_size or default_batch_size(device)
    if encoder is not None:
        from ecgmodel.train.checkpoint import load_encoder

        enc, cfg = load_encoder(encoder, map_location=device)
    else:
        enc, cfg = random_encoder(random_arch, seed)
    enc = enc.to(device).eval()
    st = open_store(store)
    meta = st.meta()
    if st.n == 0:
        raise ValueError(f"{store}: the store holds no committed windows")
    present = st.lead_present()
    length, window = cfg.input_samples, st.window_samples
    # every (window, start) crop, in store order; crops are cut from whole chunks as they are read
    starts_of = [crop_starts(int(v), window, length) for v in meta["valid_length"].to_numpy()]
    crop_row = np.repeat(np.arange(st.n), [len(s) for s in starts_of])
    feats: np.ndarray | None = None
    done = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (int16 crops, rows) waiting for a full batch

    def flush(final: bool) -> None:
        nonlocal feats, done, pending
        while pending and (final or sum(len(r) for _, r in pending) >= batch_size):
            xs = np.concatenate([x for x, _ in pending])
            rows = np.concatenate([r for _, r in pending])
            take = len(rows) if final else batch_size
            x = standardize(torch.from_numpy(xs[:take]).to(device), min_std_uv)
            lp = torch.from_numpy(present[rows[:take]]).to(device)
            tok = enc(x)
            f = torch.cat([pool(tok, lp, p) for p in pools], dim=1).float().cpu().numpy()
            if feats is None:
                feats = np.empty((len(crop_row), f.shape[1]), dtype=np.float32)
            feats[done : done + take] = f
            done += take
            pending = [(xs[take:], rows[take:])] if take < len(rows) else []

    for start, stop, block in st.iter_chunks():
        rows, cuts = [], []
        for i in range(start, stop):
            for s in starts_of[i]:
                cuts.append(block[i - start, :, s : s + length])
                rows.append(i)
        pending.append((np.stack(cuts), np.asarray(rows)))
        flush(final=False)
    flush(final=True)
    assert feats is not None and done == len(crop_row)
    # mean over the crops of each record (all its windows)
    keys = meta["source"].astype(str) + "\x00" + meta["record"].astype(str)
    rec_code, rec_keys = pd.factorize(keys, sort=False)
    crop_rec = rec_code[crop_row]
    n_rec = len(rec_keys)
    counts = np.bincount(crop_rec, minlength=n_rec)
    sums = np.zeros((n_rec, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, crop_rec, feats)
    vectors = (sums / counts[:, None]).astype(np.float32)
    _, first_row = np.unique(rec_code, return_index=True)  # codes are 0..n_rec-1, so this is in code order
    first = meta.iloc[first_row].reset_index(drop=True)
    fold = first["fold"].astype(int).to_numpy()
    table = pd.DataFrame({
        "record": first["record"].astype(str).to_numpy(),
        "source": first["source"].astype(str).to_numpy(),
        "database": first["database"].astype(str).to_numpy(),
        "split": [ptbxl_split(f) for f in fold],
        "fold": fold,
        "patient_id": first["patient_id"].astype(str).to_numpy(),
        "dx": first["dx"].astype(str).to_numpy(),
        "n_windows": np.bincount(rec_code, minlength=n_rec),
        "n_crops": counts,
    })
    if isinstance(pooling, str):
        return table.assign(vector=list(vectors))
    dims = np.cumsum([0] + [_pool_dim(p, cfg) for p in pools])
    return {p: table.assign(vector=list(vectors[:, dims[i] : dims[i + 1]])) for i, p in enumerate(pools)}


@torch.no_grad()
def embed_windows(
    encoder: Encoder,
    input_samples: int,
    signal: np.ndarray,
    lead_present: np.ndarray,
    valid_length: np.ndarray,
    record_index: np.ndarray,
    n_records: int,
    *,
    pooling: Pooling = DEFAULT_POOLING,
    batch_size: int = 32,
    device: str = "cpu",
    min_std_uv: float = 10.0,
) -> np.ndarray:
    """float32 (n_records, dim) from in-memory windows: int16 ``signal`` (W, 12, T), ``lead_present`` (W, 12),
    ``valid_length`` (W,), ``record_index`` (W,) -> the same crops, standardisation, pooling and mean over a
    record's crops as :func:`embed_store` (used for files that are not in a store: ``ecgssl embed --input``)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    window = signal.shape[-1]
    crops = [(w, s) for w in range(len(signal)) for s in crop_starts(int(valid_length[w]), window, input_samples)]
    feats = []
    for begin in range(0, len(crops), batch_size):
        part = crops[begin : begin + batch_size]
        xs = np.stack([signal[w, :, s : s + input_samples] for w, s in part])
        x = standardize(torch.from_numpy(xs).to(device), min_std_uv)
        lp = torch.from_numpy(np.asarray(lead_present)[[w for w, _ in part]]).to(device)
        feats.append(pool(encoder(x), lp, pooling).float().cpu().numpy())
    f = np.concatenate(feats)
    owner = np.asarray(record_index)[[w for w, _ in crops]]
    sums = np.zeros((n_records, f.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, f)
    counts = np.bincount(owner, minlength=n_records)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _pool_dim(pooling: str, cfg: EncoderConfig) -> int:
    return {"mean": 1, "mean-max": 2, "lead-mean": cfg.n_leads}[pooling] * cfg.d_model


def write_embeddings(table: pd.DataFrame, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``table`` as Parquet (``vector`` as a fixed-size list of float32); ``metadata`` goes into the
    file's key-value metadata (encoder reference, pooling, ...). Atomic (temp file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dim = len(table["vector"].iloc[0]) if len(table) else 0
    flat = np.concatenate(table["vector"].to_list()).astype(np.float32) if len(table) else np.zeros(0, np.float32)
    cols = {c: pa.array(table[c].to_numpy()) for c in table.columns if c != "vector"}
    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    tbl = pa.table(cols)
    tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}),
                                       **{f"ecgssl.{k}": str(v) for k, v in (metadata or {}).items()}})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(tbl, tmp)
    tmp.replace(path)
    return path


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, str]]:
    """(table without ``vector``, float32 matrix (n_records, dim), ``ecgssl.*`` metadata) of an embedding file."""
    import pyarrow.parquet as pq

    tbl = pq.read_table(path)
    vec = tbl.column("vector").combine_chunks()
    dim = vec.type.list_size
    X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    meta = {k.decode()[len("ecgssl."):]: v.decode() for k, v in (tbl.schema.metadata or {}).items()
            if k.decode().startswith("ecgssl.")}
    return tbl.drop(["vector"]).to_pandas(), X, meta


def embed_to_file(
    store: str | Path | None,
    out: str | Path,
    encoder: str | Path | None = None,
    *,
    random: bool = False,
    arch: str | Path | None = None,
    seed: int = 0,
    pooling: Pooling = DEFAULT_POOLING,
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    inputs: Sequence[str | Path] | None = None,
) -> dict:
    """``ecgssl embed``: embed ``store`` (or the WFDB/EDF files, folders and stores of ``inputs``: columns record,
    input, n_windows, warnings, error, vector; see :func:`ecgmodel.predict.embed_inputs`) with ``encoder`` (or, with ``random``, a seeded random encoder of the
    architecture of ``encoder``/``arch``, or of the ``cpu`` preset when neither is given) into ``out``.
    Returns a small summary (records, dim, seconds)."""
    t0 = time.perf_counter()
    if inputs:
        return _embed_inputs_to_file(inputs, out, encoder, random=random, arch=arch, seed=seed, pooling=pooling,
                                     batch_size=batch_size, device=device, threads=threads, t0=t0)  # fmt: skip
    if store is None:
        raise ValueError("give a store or inputs to embed")
    if random:
        ref = arch or encoder
        if ref is None:
            from ecgmodel.train.config import preset

            ref = preset("cpu").encoder
        table = embed_store(store, random_arch=ref, seed=seed, pooling=pooling, batch_size=batch_size,
                            device=device, threads=threads)
        source = f"random(seed={seed}, arch={'cpu preset' if arch is None and encoder is None else ref})"
    else:
        if encoder is None:
            raise ValueError("give --encoder (a path, run id, runs:/ or models:/ URI), or --random")
        table = embed_store(store, encoder, pooling=pooling, batch_size=batch_size, device=device, threads=threads)
        source = str(encoder)
    write_embeddings(table, out, {"encoder": source, "pooling": pooling, "store": str(Path(store).resolve())})
    return {"out": str(out), "records": len(table), "dim": len(table["vector"].iloc[0]),
            "crops": int(table["n_crops"].sum()), "seconds": round(time.perf_counter() - t0, 2), "encoder": source,
            "pooling": pooling}


def _embed_inputs_to_file(inputs, out, encoder, *, random, arch, seed, pooling, batch_size, device, threads,
                          t0) -> dict:
    from ecgmodel.predict import LoadedModel, embed_inputs, load_model
    from ecgmodel.serving.contract import Contract

    if threads:
        torch.set_num_threads(threads)
    if random:
        ref = arch or encoder
        if ref is None:
            from ecgmodel.train.config import preset

            ref = preset("cpu").encoder
        enc, cfg = random_encoder(ref, seed)
        model = LoadedModel("encoder", enc.eval(), Contract(kind="encoder", input_samples=cfg.input_samples,
                                                            pooling=pooling), f"random(seed={seed})")  # fmt: skip
    else:
        if encoder is None:
            raise ValueError("give --encoder (a path, run id, runs:/ or models:/ URI), or --random")
        model = load_model(str(encoder))
    table = embed_inputs(model, [str(p) for p in inputs], pooling, batch_size or default_batch_size(device), device)
    write_embeddings(table, out, {"encoder": model.source, "pooling": pooling,
                                  "inputs": ";".join(str(p) for p in inputs)})  # fmt: skip
    ok = table["error"] == ""
    return {"out": str(out), "records": len(table), "embedded": int(ok.sum()), "unusable": int((~ok).sum()),
            "dim": len(table["vector"].iloc[0]) if len(table) else 0, "seconds": round(time.perf_counter() - t0, 2),
            "encoder": model.source, "pooling": pooling}
