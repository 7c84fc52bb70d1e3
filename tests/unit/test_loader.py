import numpy as np
import pytest
import torch

from ecgmodel.data.loader import InMemoryLoader, StreamingLoader, make_loader
from ecgmodel.data.store import open_store
from ecgmodel.data.transforms import crop_starts, to_model_input
from ecgmodel.train.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 60 windows in chunks of 8 (the last chunk is partial)
    return make_synthetic_store(tmp_path_factory.mktemp("loader") / "store", n=60, window_samples=400, chunk_windows=8)


def _row_ids(batch, signals: np.ndarray) -> list[int]:
    """Identify rows by content (windows are all different)."""
    flat = signals.reshape(len(signals), -1)
    got = batch.signal.reshape(batch.signal.shape[0], -1).numpy()
    return [int(np.flatnonzero((flat == g).all(axis=1))[0]) for g in got]


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_one_epoch_sees_every_row_once_and_shards_are_disjoint(store, kind):
    signals = open_store(store).load_signal()
    seen = []
    for rank in range(2):
        loader = make_loader(store, kind, batch_size=6, rank=rank, world_size=2, seed=3, buffer_chunks=2)
        ids = []
        for _ in range(loader.n // 6):
            b = loader.next()
            assert b.signal.dtype == torch.int16 and b.signal.shape == (6, 12, 400)
            assert b.lead_present.shape == (6, 12) and b.valid_length.tolist() == [400] * 6
            ids += _row_ids(b, signals)
        loader.close()
        assert len(set(ids)) == len(ids)  # no repeats within an epoch
        seen.append(set(ids))
    assert not seen[0] & seen[1]  # distinct shards
    assert len(seen[0] | seen[1]) >= 60 - 2 * 6  # everything but the tail of each epoch


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_order_changes_per_epoch_and_resume_is_exact(store, kind):
    a = make_loader(store, kind, batch_size=7, seed=1)
    seq = [a.next().signal.clone() for _ in range(20)]  # ~2.3 epochs, batches crossing epoch boundaries
    state = None
    b = make_loader(store, kind, batch_size=7, seed=1)
    for i in range(9):
        assert torch.equal(b.next().signal, seq[i])
        if i == 4:
            state = b.state_dict()
    c = make_loader(store, kind, batch_size=7, seed=1)
    c.load_state_dict(state)
    for i in range(5, 20):
        assert torch.equal(c.next().signal, seq[i])
    # epoch 2 is not a repeat of epoch 1
    assert not torch.equal(torch.cat(seq[:8]), torch.cat(seq[8:16]))
    for loader in (a, b, c):
        loader.close()
    other = make_loader(store, kind, batch_size=7, seed=2)
    assert not torch.equal(other.next().signal, seq[0])
    other.close()
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_streaming_reads_whole_chunks_only(store):
    s = open_store(store)

    class CountingSignal:
        def __init__(self, arr):
            self.arr, self.calls = arr, []

        def __getitem__(self, key):
            self.calls.append(key)
            return self.arr[key]

    s.signal = CountingSignal(s.signal)
    loader = StreamingLoader(s, batch_size=10, seed=0, buffer_chunks=3)
    for _ in range(6):  # one full epoch
        loader.next()
    loader.close()
    bounds = {(a, min(a + 8, 60)) for a in range(0, 60, 8)}
    got = [(k.start, k.stop) for k in s.signal.calls]
    assert set(got) == bounds and len(got) >= len(bounds)  # whole chunks only, every chunk read


def test_in_memory_reads_whole_chunks_only(store):
    s = open_store(store)
    calls = []
    orig = s.load_signal
    s.load_signal = lambda rows=None: calls.append(rows) or orig(rows)
    InMemoryLoader(s, batch_size=4)
    assert len(calls) == 1  # one bulk chunk-wise load, no per-sample reads


def test_errors_name_the_problem(store):
    with pytest.raises(ValueError, match="fewer than the per-rank batch size"):
        InMemoryLoader(store, batch_size=100)
    with pytest.raises(ValueError, match="not enough for rank"):
        StreamingLoader(store, batch_size=2, rank=9, world_size=10)
    with pytest.raises(ValueError, match="unknown loader kind"):
        make_loader(store, "disk", 4)


def test_to_model_input_crops_inside_valid_part_and_standardises():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 12, 1000) * 500 + 300).to(torch.int16)
    valid = torch.full((64,), 600)
    starts = crop_starts(64, 1000, 500, "random", valid, g)
    assert starts.min() >= 0 and starts.max() <= 100 and starts.unique().numel() > 10
    y = to_model_input(x, 500, "random", valid, g)
    assert y.shape == (64, 12, 500) and y.dtype == torch.float32
    assert y.mean(-1).abs().max() < 1e-4 and (y.std(-1, correction=0) - 1).abs().max() < 1e-3
    # statistics come from each sample itself: scaling one sample's lead does not change its input
    x2 = x.clone()
    x2[0, 3] = (x2[0, 3].float() * 0.5).to(torch.int16)
    y2 = to_model_input(x2, 500, "start")
    assert torch.allclose(y2[0, 3], to_model_input(x, 500, "start")[0, 3], atol=0.02)
    # flat (absent) leads stay at zero instead of amplifying nothing
    flat = torch.zeros(1, 12, 500, dtype=torch.int16)
    assert to_model_input(flat).abs().max() == 0
    with pytest.raises(ValueError, match="longer than the window"):
        to_model_input(x, 2000)
