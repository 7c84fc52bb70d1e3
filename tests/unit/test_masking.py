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


# --- placement modes: per lead, same time in every lead, mixed -------------------------------------------------

from ecgmodel.ssl.losses import masked_mse  # noqa: E402
from ecgmodel.ssl.masking import all_lead_mask, span_mask  # noqa: E402


def test_lead_mode_is_the_per_lead_mask():
    a = span_mask(8, 12, 50, mode="lead", generator=torch.Generator().manual_seed(5))
    b = random_span_mask(8, 12, 50, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_time_mode_hides_the_same_spans_in_every_lead():
    g = torch.Generator().manual_seed(6)
    m = span_mask(64, 12, 50, (0.3, 0.7), 5, mode="time", generator=g)
    assert torch.equal(m, m[:, :1].expand_as(m))
    frac = m[:, 0].float().mean(dim=1)
    assert (frac >= 0.3 - 1e-6).all() and (frac <= 0.7 + 1e-6).all() and frac.unique().numel() > 2
    assert torch.equal(all_lead_mask(m), m)  # every hidden patch is hidden in all leads


def test_mixed_mode_has_common_and_per_lead_spans():
    g = torch.Generator().manual_seed(7)
    m = span_mask(256, 12, 50, (0.4, 0.6), 5, mode="mixed", time_share=0.5, generator=g)
    common = all_lead_mask(m).float().mean(dim=(1, 2))
    total = m.float().mean(dim=(1, 2))
    assert (common > 0).all()  # some instants hidden everywhere in every sample
    assert (total > common + 0.05).all()  # and per-lead spans on top
    # roughly half of the masked fraction is common (per-lead spans rarely coincide in all 12 leads)
    assert 0.35 < float((common / total).mean()) < 0.65
    assert (total <= 0.6 + 1e-6).all()
    # per-lead mode almost never hides an instant in all 12 leads
    lead = span_mask(256, 12, 50, (0.4, 0.6), 5, mode="lead", generator=g)
    assert all_lead_mask(lead).float().mean() < 0.01


def test_mixed_share_extremes_match_pure_modes():
    m1 = span_mask(32, 12, 50, (0.5, 0.5), 5, mode="mixed", time_share=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(m1, m1[:, :1].expand_as(m1)) and abs(m1.float().mean() - 0.5) < 1e-6
    m0 = span_mask(32, 12, 50, (0.5, 0.5), 5, mode="mixed", time_share=0.0, generator=torch.Generator().manual_seed(8))
    assert abs(m0.float().mean() - 0.5) < 1e-6 and all_lead_mask(m0).float().mean() < 0.01


def test_all_lead_mask_ignores_absent_leads_and_scores_only_those_spans():
    m = torch.zeros(1, 3, 4, dtype=torch.bool)
    m[0, 0, 1] = m[0, 1, 1] = True  # instant 1 hidden in leads 0, 1; lead 2 absent
    m[0, 0, 2] = True  # instant 2 hidden in lead 0 only
    present = torch.tensor([[True, True, False]])
    a = all_lead_mask(m, present)
    assert a[0, :, 1].tolist() == [True, True, False] and not a[0, :, 2].any()
    assert not all_lead_mask(m).any()  # with lead 2 counted as visible nothing is hidden everywhere
    target = torch.zeros(1, 3, 8)
    recon = torch.zeros(1, 3, 8)
    recon[0, 0, 4:6] = 2.0  # error only on the lead-0-only patch
    assert float(masked_mse(recon, target, a, present.float())) == 0.0
    assert float(masked_mse(recon, target, m, present.float())) > 0.0


def test_bad_mode_and_share_raise():
    with pytest.raises(ValueError, match="mask mode"):
        span_mask(2, 12, 50, mode="diagonal")
    with pytest.raises(ValueError, match="time_share"):
        span_mask(2, 12, 50, mode="mixed", time_share=1.5)
