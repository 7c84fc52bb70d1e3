import torch

from ecgmodel.ssl.shuffle import apply_lead_permutation, random_lead_permutation, shuffle_leads


def _is_perm(src: torch.Tensor) -> bool:
    return bool((src.sort(dim=1).values == torch.arange(src.shape[1])).all())


def test_target_is_inverse_of_the_move():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(12).float()[None, :, None].expand(64, 12, 7) + torch.randn(64, 12, 7) * 0.01
    xs, target = shuffle_leads(x, p=1.0, generator=g)
    assert _is_perm(target)
    # slot s holds original lead target[s]
    assert torch.equal(xs, apply_lead_permutation(x, target))
    assert torch.equal(xs[:, :, 0].round().long(), target)
    # dest[i] = slot of lead i; target is its inverse permutation
    dest = torch.stack([(xs[b, :, 0].round().long()[None] == torch.arange(12)[:, None]).float().argmax(1)
                        for b in range(64)])
    assert torch.equal(target, dest.argsort(dim=1))
    assert torch.equal(target.gather(1, dest), torch.arange(12).expand(64, 12))


def test_probability_and_identity():
    g = torch.Generator().manual_seed(1)
    src = random_lead_permutation(4000, 12, p=0.3, generator=g)
    moved = (src != torch.arange(12)).any(dim=1).float().mean()
    assert 0.26 < moved < 0.34
    assert torch.equal(random_lead_permutation(10, 12, p=0.0, generator=g), torch.arange(12).expand(10, 12))


def test_subset_mode_moves_only_a_subset():
    g = torch.Generator().manual_seed(2)
    src = random_lead_permutation(2000, 12, p=1.0, mode="subset", subset_range=(2, 4), generator=g)
    assert _is_perm(src)
    n_moved = (src != torch.arange(12)).sum(dim=1)
    assert n_moved.max() <= 4
    assert (n_moved >= 2).float().mean() > 0.6  # a random permutation of k >= 2 leads rarely fixes all


def test_all_mode_is_uniform_over_slots():
    g = torch.Generator().manual_seed(3)
    src = random_lead_permutation(6000, 12, p=1.0, generator=g)
    counts = torch.zeros(12, 12)
    counts.index_put_((torch.arange(12).expand(6000, 12).flatten(), src.flatten()), torch.ones(72000), accumulate=True)
    freq = counts / 6000
    assert (freq - 1 / 12).abs().max() < 0.03
