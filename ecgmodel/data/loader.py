"""Training input from the store, never from per-sample zarr reads.

Two loaders with the same interface (``next() -> Batch``, ``state_dict()``, ``load_state_dict()``, ``close()``):

* :class:`InMemoryLoader` - the store's int16 signal (this rank's shard of rows) is read whole-chunk into RAM
  once, or straight onto the GPU when it fits; batches are gathered by index on the device.
* :class:`StreamingLoader` - for stores larger than memory: this rank's chunks are read whole, in random order,
  ``buffer_chunks`` at a time; rows are shuffled inside that buffer; a background thread reads ahead.

Both take ``rows``: the store rows they may deliver (pretraining passes the rows of the train split of the
store's split assignment, so no validation or test recording is ever read into a batch); None = every row.

Batches stay int16 microvolts; crops, standardisation, masking and shuffling happen on the device in the
training step (``ecgmodel.data.transforms``, ``ecgmodel.ssl``).

Order is a pure function of ``(seed, rank, epoch)``, so the loader state is just the number of batches
delivered: a resumed run sees exactly the batches an uninterrupted run would have seen. The row stream is
endless (epoch after epoch) and batches are cut from it, so every batch is full.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    signal: torch.Tensor  # int16 (B, 12, T) microvolts
    lead_present: torch.Tensor  # bool (B, 12)
    valid_length: torch.Tensor  # long (B,)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.signal, self.lead_present, self.valid_length)))


def _epoch_generator(seed: int, rank: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + rank * 10_007 + epoch * 101 + salt)


def _open(store: Any) -> Any:
    if isinstance(store, str) or hasattr(store, "__fspath__"):
        from ecgmodel.data.store import open_store

        return open_store(store)
    return store


def _row_arrays(store: Any) -> tuple[np.ndarray, np.ndarray]:
    """lead_present (n, 12) and valid_length (n,) for the committed rows."""
    lead_present = np.asarray(store.lead_present(), dtype=bool)
    valid_length = np.asarray(store.meta()["valid_length"], dtype=np.int64)
    return lead_present, valid_length


class _ResumableLoader:
    """Iteration and resume state shared by the loaders: batches are a pure function of (seed, rank, step)."""

    step: int
    batch_size: int
    n: int
    seed: int
    rank: int

    def __next__(self) -> Batch:
        return self.next()  # each loader defines next()

    def __iter__(self):
        return self

    @property
    def epoch(self) -> float:
        return self.step * self.batch_size / self.n

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed, "rank": self.rank, "n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise ValueError(
                f"loader state does not match this data (n={state['n']} seed={state['seed']} vs "
                f"n={self.n} seed={self.seed}): was the store or the seed changed?"
            )
        self.close()
        self.step = int(state["step"])

    def close(self) -> None:
        pass


class InMemoryLoader(_ResumableLoader):
    """Whole shard in memory (CPU, pinned when a GPU is used; or resident on the GPU)."""

    def __init__(
        self,
        store: Any,
        batch_size: int,
        device: torch.device | str = "cpu",
        rows: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device_resident: bool | None = None,
        extra: list[tuple[Any, np.ndarray | None]] | None = None,
    ):
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        parts = []
        for st, st_rows in [(store, rows), *(extra or [])]:  # further stores' rows follow the main store's
            st = _open(st)
            all_rows = np.arange(st.n) if st_rows is None else np.sort(np.asarray(st_rows, dtype=np.int64))
            mine = all_rows[rank::world_size]  # distinct shard per rank
            lead_present, valid_length = _row_arrays(st)
            parts.append((np.ascontiguousarray(st.load_signal(mine)), lead_present[mine], valid_length[mine]))
        my_rows = np.arange(sum(len(p[0]) for p in parts))
        if len(my_rows) < self.batch_size:
            raise ValueError(
                f"store {getattr(_open(store), 'path', '')}: rank {rank} has {len(my_rows)} windows, fewer than the "
                f"per-rank batch size {self.batch_size}"
            )
        signal = torch.from_numpy(np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0])
        lp = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        vl = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        if device_resident is None:  # on the GPU when the shard takes under half of the free memory
            device_resident = self.device.type == "cuda" and (
                signal.numel() * 2 < 0.5 * torch.cuda.mem_get_info(self.device)[0]
            )
        self.device_resident = bool(device_resident) or self.device.type == "cpu"
        if self.device_resident:
            self._data = Batch(signal, lp, vl).to(self.device)
        else:
            pin = self.device.type == "cuda"
            self._data = Batch(*(t.pin_memory() if pin else t for t in (signal, lp, vl)))
        self.n = len(my_rows)
        self.batches_per_epoch = self.n // self.batch_size
        self.step = 0  # batches delivered
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _row_stream_index(self, start: int, count: int) -> torch.Tensor:
        """Indices (into the shard) of rows [start, start + count) of the endless shuffled row stream."""
        out = []
        while count > 0:
            epoch, pos = divmod(start, self.n)
            if epoch != self._perm_epoch:
                # drawn on the CPU (same order on every device), moved once per epoch: no host sync per batch
                perm = torch.randperm(self.n, generator=_epoch_generator(self.seed, self.rank, epoch))
                self._perm = perm.to(self._data.signal.device)
                self._perm_epoch = epoch
            take = min(count, self.n - pos)
            out.append(self._perm[pos : pos + take])
            start, count = start + take, count - take
        return torch.cat(out)

    def next(self) -> Batch:
        idx = self._row_stream_index(self.step * self.batch_size, self.batch_size)
        self.step += 1
        b = Batch(*(t.index_select(0, idx) for t in (self._data.signal, self._data.lead_present, self._data.valid_length)))
        return b if self.device_resident else b.to(self.device, non_blocking=True)



class StreamingLoader(_ResumableLoader):
    """Whole chunks in random order, shuffled within a buffer of ``buffer_chunks`` chunks, read ahead by a
    background thread (zarr decompression releases the GIL, so reading overlaps the training step)."""

    def __init__(
        self,
        store: Any,
        batch_size: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        buffer_chunks: int = 4,
        prefetch: int = 4,
        rows: np.ndarray | None = None,
    ):
        store = _open(store)
        self.store = store
        self._allowed = None
        if rows is not None:
            self._allowed = np.zeros(store.n, dtype=bool)
            self._allowed[np.asarray(rows, dtype=np.int64)] = True
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.prefetch = max(1, int(prefetch))
        cw = int(store.chunk_windows)
        n_chunks = -(-store.n // cw)
        chunks = [(c * cw, min((c + 1) * cw, store.n)) for c in range(n_chunks)]
        if self._allowed is not None:  # only chunks holding an allowed row are read
            chunks = [(a, b) for a, b in chunks if self._allowed[a:b].any()]
        self.chunks = chunks[rank::world_size]
        if not self.chunks:
            raise ValueError(
                f"store {getattr(store, 'path', '')} has {n_chunks} chunks: not enough for rank {rank} of "
                f"{world_size}; use the in-memory loader or fewer processes"
            )
        self.n = sum(self._size(a, b) for a, b in self.chunks)
        if self.n < self.batch_size:
            raise ValueError(f"rank {rank} has {self.n} windows, fewer than the per-rank batch size {batch_size}")
        self._lead_present, self._valid_length = _row_arrays(store)
        self.step = 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def _size(self, a: int, b: int) -> int:
        return b - a if self._allowed is None else int(self._allowed[a:b].sum())

    # ---- the deterministic row stream -------------------------------------------------------------
    def _epoch_groups(self, epoch: int) -> list[list[tuple[int, int]]]:
        order = torch.randperm(len(self.chunks), generator=_epoch_generator(self.seed, self.rank, epoch)).tolist()
        chunks = [self.chunks[i] for i in order]
        return [chunks[i : i + self.buffer_chunks] for i in range(0, len(chunks), self.buffer_chunks)]

    def _read_group(self, epoch: int, gi: int, group: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
        sig = np.concatenate([np.asarray(self.store.signal[a:b]) for a, b in group])  # whole-chunk reads
        rows = np.concatenate([np.arange(a, b) for a, b in group])
        if self._allowed is not None:
            keep = self._allowed[rows]
            sig, rows = sig[keep], rows[keep]
        perm = torch.randperm(len(rows), generator=_epoch_generator(self.seed, self.rank, epoch, salt=gi + 1)).numpy()
        rows = rows[perm]
        return sig[perm], self._lead_present[rows], self._valid_length[rows]

    def _produce(self, start_step: int) -> None:
        B = self.batch_size
        offset = start_step * B  # row offset in the endless stream
        epoch, pos = divmod(offset, self.n)
        pending: list[tuple[np.ndarray, ...]] = []
        have = 0
        try:
            while not self._stop.is_set():
                for gi, group in enumerate(self._epoch_groups(epoch)):
                    size = sum(self._size(a, b) for a, b in group)
                    if pos >= size:  # fast-forward: skip groups already consumed without reading them
                        pos -= size
                        continue
                    arrays = self._read_group(epoch, gi, group)
                    pending.append(tuple(a[pos:] for a in arrays))
                    have += size - pos
                    pos = 0
                    while have >= B:
                        cat = [np.concatenate([p[i] for p in pending]) for i in range(3)]
                        out = [c[:B] for c in cat]
                        pending = [tuple(c[B:] for c in cat)]
                        have -= B
                        item = Batch(torch.from_numpy(out[0]), torch.from_numpy(out[1]), torch.from_numpy(out[2]))
                        if self.device.type == "cuda":  # pinned here, off the training thread
                            item = Batch(*(t.pin_memory() for t in (item.signal, item.lead_present, item.valid_length)))
                        while not self._stop.is_set():
                            try:
                                self._queue.put(item, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if self._stop.is_set():
                            return
                epoch += 1
        except BaseException as exc:  # surface reader errors in the training loop
            self._queue.put(exc)

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self.step,), daemon=True, name="ecg-stream")
        self._thread.start()

    def next(self) -> Batch:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"streaming reader failed on store {getattr(self.store, 'path', '')}") from item
        self.step += 1
        return item.to(self.device, non_blocking=True)


    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None


def make_loader(
    store: Any,
    kind: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    buffer_chunks: int = 4,
    prefetch: int = 4,
    device_resident: bool | None = None,
    rows: np.ndarray | None = None,
    extra: list[tuple[Any, np.ndarray | None]] | None = None,
) -> InMemoryLoader | StreamingLoader:
    """``kind``: ``memory`` or ``stream``; ``rows``: the store rows it may deliver (None: all); ``extra``: further
    ``(store, rows)`` read after the main store's (unlabelled external stores; in-memory loader only)."""
    if kind == "memory":
        return InMemoryLoader(store, batch_size, device, rows=rows, rank=rank, world_size=world_size, seed=seed,
                              device_resident=device_resident, extra=extra)
    if extra:
        raise ValueError("external pretraining stores (data.extra_stores) need the in-memory loader (data.loader=memory)")
    if kind == "stream":
        return StreamingLoader(store, batch_size, device, rank=rank, world_size=world_size, seed=seed,
                               buffer_chunks=buffer_chunks, prefetch=prefetch, rows=rows)
    raise ValueError(f"unknown loader kind {kind!r} (use 'memory' or 'stream')")
