"""bench/linear_probe.py: the held-out mirror split (no held-out record in the pretraining copy, listings that
verify) and the batched AUROC the bootstrap uses."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data.download import download_source

ROOT = Path(__file__).resolve().parents[2]
MIRROR = ROOT / "tests" / "data" / "physionet"


def _load():
    spec = importlib.util.spec_from_file_location("linear_probe", ROOT / "bench" / "linear_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lp = _load()


def test_split_mirror_holds_out_whole_folds_and_verifies(tmp_path):
    db = pd.read_csv(MIRROR / "ptb-xl" / "1.0.3" / "ptbxl_database.csv")
    held_fold = int(db["strat_fold"].iloc[-1])
    counts = lp.split_mirror(MIRROR, tmp_path / "split", [held_fold])
    held = (tmp_path / "split/heldout/ptb-xl/1.0.3/RECORDS").read_text().split()
    pre = (tmp_path / "split/pretrain/ptb-xl/1.0.3/RECORDS").read_text().split()
    fold_of = dict(zip(db["filename_hr"], db["strat_fold"], strict=True))
    assert held and all(fold_of[r] == held_fold for r in held)
    assert all(fold_of[r] != held_fold for r in pre) and not set(held) & set(pre)
    assert counts["heldout"]["ptb-xl"] == len(held)
    # Challenge copies of PTB-XL records never reach the pretraining side
    for slug in ("challenge-2020", "challenge-2021"):
        recs = (tmp_path / "split/pretrain" / slug).glob("*/RECORDS")
        assert not any("/ptb-xl/" in r for f in recs for r in f.read_text().split())
    # each side is a valid mirror: every listed file is present with the listed checksum
    for side, slug in (("heldout", "ptb-xl"), ("pretrain", "ptb-xl"), ("pretrain", "ludb")):
        res = download_source(slug, tmp_path / "split" / side, tmp_path / "raw" / side, progress=False, workers=1)
        assert not res.failures and len(res.records) > 0
    # the source mirror is untouched (hard links only)
    assert (MIRROR / "ptb-xl/1.0.3/RECORDS").read_text().split().count("records500/00000/00001_hr") == 1


def test_auroc_matrix_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random((200, 3)) < 0.3
    p = rng.random((200, 3)) + 0.4 * y
    p[:20] = p[20:40]  # ties
    got = lp.auroc_matrix(y, p)
    want = [roc_auc_score(y[:, c], p[:, c]) for c in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    boot = rng.integers(0, 200, size=(4, 200))
    np.testing.assert_allclose(lp.auroc_matrix(y[boot], p[boot])[2],
                               [roc_auc_score(y[boot[2], c], p[boot[2], c]) for c in range(3)], rtol=1e-12)


def test_nested_subsets():
    a, b = lp.nested_subset(100, 0.1, 3), lp.nested_subset(100, 0.6, 3)
    assert len(a) == 10 and len(b) == 60 and set(a) <= set(b)
    assert not np.array_equal(a, lp.nested_subset(100, 0.1, 4))


if __name__ == "__main__":
    pytest.main([__file__])
