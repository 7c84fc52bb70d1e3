"""Outside-style linear-probe benchmark of frozen embeddings, plus the held-out split it needs.

Two subcommands:

``split-mirror``: hard-link a PhysioNet-shaped mirror into two mirrors laid out the same way, ``<out>/pretrain``
(everything except the held-out PTB-XL records and every Challenge copy of a PTB-XL record) and
``<out>/heldout`` (PTB-XL records of the held-out ``strat_fold`` values only). ``RECORDS`` and
``SHA256SUMS.txt`` are rewritten to list exactly what is present; no file of the source mirror is written.
PTB-XL's ``strat_fold`` is patient-wise, so no patient is on both sides.

    python bench/linear_probe.py split-mirror --mirror ../shared/physionet --out /tmp/split --holdout-folds 8 9 10

``probe``: given two embedding files of the same records (``ecgssl embed`` output: SSL encoder and random
encoder), fit one-vs-rest logistic regression (standardised features, ``C`` chosen on the validation records)
on nested, seeded label fractions of the training records and score macro AUROC over the PTB-XL diagnostic
superclasses on the test records, with a paired bootstrap 95 % CI of SSL - random. Prints JSON.

    python bench/linear_probe.py probe --ssl ssl.parquet --random random.parquet \\
        --train-folds 1 2 3 4 5 6 --val-folds 7 --test-folds 8 9 10 --fractions 0.1 0.6 1.0 --seeds 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PTBXL = ("ptb-xl", "1.0.3")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _link_subset(src: Path, dst: Path, records: list[str], extra: list[str]) -> int:
    """Hard-link ``records``' files and ``extra`` files from ``src`` into ``dst``; write RECORDS and SHA256SUMS."""
    sums = {}
    for line in (src / "SHA256SUMS.txt").read_text().splitlines():
        if line.strip():
            sha, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = sha
    keep = set(records)
    names = [n for n in sums if n.rsplit(".", 1)[0] in keep or n in extra]  # a record's files, plus extras
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(src / name, target)
    (dst / "RECORDS").write_text("".join(r + "\n" for r in records))
    lines = [f"{sums[n]} {n}" for n in names if n != "RECORDS"]
    lines.append(f"{_sha256(dst / 'RECORDS')} RECORDS")
    (dst / "SHA256SUMS.txt").write_text("\n".join(sorted(lines, key=lambda s: s.split(" ", 1)[1])) + "\n")
    return len(records)


def split_mirror(mirror: Path, out: Path, holdout_folds: list[int]) -> dict:
    """See the module docstring. Returns counts per side."""
    if out.exists():
        shutil.rmtree(out)
    ptb_src = mirror.joinpath(*PTBXL)
    db = pd.read_csv(ptb_src / "ptbxl_database.csv")
    held = db[db.strat_fold.isin(holdout_folds)]
    rest = db[~db.strat_fold.isin(holdout_folds)]
    listed = set((ptb_src / "RECORDS").read_text().split())
    meta = ["ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt"]
    counts = {"heldout": {}, "pretrain": {}, "holdout_folds": holdout_folds}
    counts["heldout"]["ptb-xl"] = _link_subset(
        ptb_src, out.joinpath("heldout", *PTBXL), sorted(r for r in held.filename_hr if r in listed), meta)
    counts["pretrain"]["ptb-xl"] = _link_subset(
        ptb_src, out.joinpath("pretrain", *PTBXL), sorted(r for r in rest.filename_hr if r in listed), meta)
    for slug_dir in sorted(p for p in mirror.iterdir() if p.is_dir() and p.name != PTBXL[0]):
        for ver in sorted(p for p in slug_dir.iterdir() if p.is_dir()):
            recs = [r for r in (ver / "RECORDS").read_text().split() if "/ptb-xl/" not in r]
            sums = [ln.split(maxsplit=1)[1] for ln in (ver / "SHA256SUMS.txt").read_text().splitlines() if ln.strip()]
            extra = [n for n in sums if "/" not in n and n != "RECORDS"]  # licence, metadata tables
            counts["pretrain"][slug_dir.name] = _link_subset(ver, out / "pretrain" / slug_dir.name / ver.name,
                                                             recs, extra)
    return counts


def _cmd_split(args: argparse.Namespace) -> int:
    print(json.dumps(split_mirror(Path(args.mirror), Path(args.out), args.holdout_folds), indent=2))
    return 0


# ---- probe --------------------------------------------------------------------------------------------------
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def superclass_table(files: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """PTB-XL records of the embedding files that have a diagnostic superclass: table (record, fold, y) and X."""
    from ecgmodel.data.ptbxl import superclass_matrix
    from ecgmodel.embed import read_embeddings

    tables, mats = [], []
    for f in files:
        t, X, _ = read_embeddings(f)
        tables.append(t)
        mats.append(X)
    t = pd.concat(tables, ignore_index=True)
    X = np.concatenate(mats)
    keep = (t["source"] == "ptb-xl").to_numpy()
    t, X = t[keep].reset_index(drop=True), X[keep]
    if t["record"].duplicated().any():
        raise ValueError(f"{files}: a record appears twice across the embedding files")
    Y = superclass_matrix([[c for c in dx.split(",") if c] for dx in t["dx"]])
    has = Y.sum(axis=1) > 0
    t = t[has].reset_index(drop=True)
    t["y"] = list(Y[has])
    order = np.argsort(t["record"].to_numpy(), kind="stable")
    return t.iloc[order].reset_index(drop=True), X[has][order]


def auroc_matrix(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC per class by rank statistic, batched: y bool (..., n, C), p (..., n, C) -> (..., C)."""
    from scipy.stats import rankdata

    r = rankdata(p, axis=-2)
    pos = y.sum(axis=-2)
    neg = y.shape[-2] - pos
    u = (r * y).sum(axis=-2) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (pos * neg)


def fit_predict(Xtr, Ytr, Xva, Yva, Xte) -> tuple[np.ndarray, float]:
    """One-vs-rest logistic regression on standardised features; C by macro AUROC on the validation records.
    Returns test probabilities and the chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = (-1.0, None, None)
    for C in C_GRID:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=3000)))
        model.fit(Xtr, Ytr)
        score = float(np.nanmean(auroc_matrix(Yva.astype(bool), model.predict_proba(Xva))))
        if score > best[0]:
            best = (score, C, model)
    return best[2].predict_proba(Xte), float(best[1])


def nested_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """First ceil(fraction * n) of a seeded permutation: the subsets of one seed are nested."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: max(1, int(np.ceil(fraction * n)))])


def probe(ssl_files, random_files, train_folds, val_folds, test_folds, fractions, seeds, n_boot=2000) -> dict:
    t0 = time.perf_counter()
    arms = {"ssl": superclass_table(ssl_files), "random": superclass_table(random_files)}
    recs = arms["ssl"][0]["record"].tolist()
    if recs != arms["random"][0]["record"].tolist():
        raise ValueError("the SSL and random embedding files must hold the same PTB-XL records")
    t = arms["ssl"][0]
    Y = np.stack(t["y"].to_list()).astype(int)
    folds = t["fold"].to_numpy()
    tr, va, te = (np.flatnonzero(np.isin(folds, f)) for f in (train_folds, val_folds, test_folds))
    if min(len(tr), len(va), len(te)) == 0:
        raise ValueError(f"empty split: train {len(tr)}, val {len(va)}, test {len(te)} records")
    Yte = Y[te].astype(bool)
    rng = np.random.default_rng(12345)
    boot = rng.integers(0, len(te), size=(n_boot, len(te)))
    rows = []
    for frac in fractions:
        probs = {a: [] for a in arms}
        chosen = {a: [] for a in arms}
        for seed in range(seeds):
            sub = tr[nested_subset(len(tr), frac, seed)]
            for a, (_, X) in arms.items():
                p, C = fit_predict(X[sub], Y[sub], X[va], Y[va], X[te])
                probs[a].append(p)
                chosen[a].append(C)
        auc = {a: np.array([np.nanmean(auroc_matrix(Yte, p)) for p in probs[a]]) for a in arms}
        # paired bootstrap over test records of the seed-averaged macro AUROC
        Yb = Yte[boot]
        bs = {a: np.mean([np.nanmean(auroc_matrix(Yb, p[boot]), axis=-1) for p in probs[a]], axis=0)
              for a in arms}
        diff = bs["ssl"] - bs["random"]
        row = {"fraction": frac, "n_train": int(np.ceil(frac * len(tr))), "seeds": seeds}
        for a in arms:
            row[f"{a}_auroc"] = round(float(auc[a].mean()), 4)
            row[f"{a}_auroc_seed_sd"] = round(float(auc[a].std(ddof=1)) if seeds > 1 else 0.0, 4)
            row[f"{a}_ci95"] = [round(float(v), 4) for v in np.percentile(bs[a], [2.5, 97.5])]
            row[f"{a}_C"] = chosen[a]
        row["diff"] = round(float(auc["ssl"].mean() - auc["random"].mean()), 4)
        row["diff_ci95"] = [round(float(v), 4) for v in np.percentile(diff, [2.5, 97.5])]
        row["diff_p_le_0"] = round(float((diff <= 0).mean()), 4)
        row["significant"] = bool(row["diff_ci95"][0] > 0)
        rows.append(row)
    full_random = next((r["random_auroc"] for r in rows if r["fraction"] == 1.0), None)
    return {
        "records": {"train": len(tr), "val": len(va), "test": len(te)},
        "folds": {"train": train_folds, "val": val_folds, "test": test_folds},
        "class_counts_test": dict(zip(["NORM", "MI", "STTC", "CD", "HYP"], Yte.sum(axis=0).tolist(), strict=True)),
        "ssl_files": ssl_files, "random_files": random_files, "C_grid": list(C_GRID), "bootstrap": n_boot,
        "results": rows,
        "ssl_at_0.1_vs_random_at_1.0": None if full_random is None else next(
            (round(r["ssl_auroc"] - full_random, 4) for r in rows if r["fraction"] == 0.1), None),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _cmd_probe(args: argparse.Namespace) -> int:
    res = probe(args.ssl, args.random, args.train_folds, args.val_folds, args.test_folds, args.fractions,
                args.seeds, args.bootstrap)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split-mirror", help="hard-linked pretraining / held-out mirrors")
    s.add_argument("--mirror", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--holdout-folds", type=int, nargs="+", default=[8, 9, 10])
    s.set_defaults(func=_cmd_split)
    p = sub.add_parser("probe", help="linear probe SSL vs random on PTB-XL superclasses")
    p.add_argument("--ssl", nargs="+", required=True, help="embedding file(s) of the SSL encoder")
    p.add_argument("--random", nargs="+", required=True, help="embedding file(s) of the random encoder")
    p.add_argument("--train-folds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--val-folds", type=int, nargs="+", default=[7])
    p.add_argument("--test-folds", type=int, nargs="+", default=[8, 9, 10])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.6, 1.0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.set_defaults(func=_cmd_probe)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
