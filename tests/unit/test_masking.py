import numpy as np
import pytest
import torch

from ecgmodel.ssl.masking import random_span_mask


def _runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[0], row.astype(int), [0]])
    d = np.diff(padded)
    return list(np.flatnonzero(d == -1) - np.flatnonzero(d == 1))


@pytest.mark.parametrize("span,P,lo,hi", [(5, 50, 0.3, 0.7), (2, 100, 0.15, 0.5), (1, 20, 0.5, 0.5)])
def test_fraction_within_range_and_spans_contiguous(span, P, lo, hi):
    g = torch.Generator().manual_seed(0)
    m = random_span_mask(64, 12, P, (lo, hi), span, g)
    assert m.shape == (64, 12, P) and m.dtype == torch.bool
    frac = m.float().mean(dim=2)
    assert (frac >= lo - 1e-6).all() and (frac <= hi + 1e-6).all()
    # same drawn fraction for every lead of a sample, varying across samples when the range allows
    assert torch.allclose(frac, frac[:, :1].expand_as(frac))
    if hi > lo:
        assert frac[:, 0].unique().numel() > 2
    # masks are unions of whole spans: every run of masked patches is a multiple of `span` (a span may wrap
    # around the end of the row, so the first and last run together count as one)
    for row in m.reshape(-1, P).numpy():
        runs = _runs(row)
        if row[0] and row[-1] and len(runs) > 1:
            runs = [runs[0] + runs[-1], *runs[1:-1]]
        assert all(r % span == 0 for r in runs)


def test_independent_per_lead():
    g = torch.Generator().manual_seed(1)
    m = random_span_mask(256, 12, 50, (0.3, 0.7), 5, g).float()
    # leads of a sample get different masks...
    assert (m[:, 0] != m[:, 1]).any(dim=1).float().mean() > 0.95
    # ...and co-masking of an instant in two leads is what independence predicts (not 1 as with shared masks)
    both = (m[:, 0] * m[:, 1]).mean(dim=1)
    expected = m[:, 0].mean(dim=1) * m[:, 1].mean(dim=1)
    assert abs(both.mean() - expected.mean()) < 0.03
    visible_elsewhere = (1 - m).amax(dim=1)  # instant visible in at least one lead
    assert visible_elsewhere.mean() > 0.99


def test_new_mask_each_draw_and_reproducible_with_seed():
    g = torch.Generator().manual_seed(2)
    a = random_span_mask(8, 12, 50, generator=g)
    b = random_span_mask(8, 12, 50, generator=g)
    assert not torch.equal(a, b)
    c = random_span_mask(8, 12, 50, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, c)


def test_positions_cover_the_grid_uniformly():
    g = torch.Generator().manual_seed(3)
    m = random_span_mask(2000, 12, 50, (0.4, 0.4), 5, g).float()
    per_pos = m.mean(dim=(0, 1))
    assert (per_pos - 0.4).abs().max() < 0.03  # every position equally likely to be masked


def test_bad_range_raises():
    with pytest.raises(ValueError, match="mask ratio"):
        random_span_mask(2, 12, 50, (0.8, 0.2))
