"""``ecgssl sweep`` on a tiny store (smoke-sized model, a handful of steps): it writes its table, plot and results
page, chooses by the stated rule, and never reads a test record (signal rows of test-split records)."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data.store import Store, StoreWriter, WindowBatch
from ecgmodel.train.sweep import RULE, choose_length, score_by_step
from flows.cli import main

T = 1250  # one smoke-preset crop per window


def _store(path, ptbxl_root) -> str:
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv", keep_default_na=False)
    pick = pd.concat([db[db["strat_fold"] <= 8].head(40), db[db["strat_fold"] == 9].head(12),
                      db[db["strat_fold"] == 10].head(8)])  # fmt: skip
    batches = []
    for i, r in enumerate(pick.itertuples()):
        sig = np.random.default_rng(i).normal(0, 200, (1, 12, T)).astype(np.int16)
        batches.append(WindowBatch.for_record(
            sig, np.ones(12, bool), np.zeros(1, np.int64), np.full(1, T), np.zeros(1, np.uint8),
            record=f"{r.ecg_id:05d}_hr", source="ptb-xl", database="ptb-xl", dx=list(ast.literal_eval(r.scp_codes)),
            patient_id=f"{float(r.patient_id):.0f}", fold=int(r.strat_fold)))
    with StoreWriter(path, fs=500, window_samples=T, chunk_windows=16, durable=False) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"ptb-xl": {"version": "1.0.3", "base_url": str(ptbxl_root)}},
                 dx_systems={"ptb-xl": "ptbxl-scp"})
    return str(path)


def test_choose_length_rule():
    t = pd.DataFrame({"seed": [0, 1] * 4, "step": [0, 0, 100, 100, 200, 200, 400, 400],
                      "val_auroc_100": [0.99, 0.99, 0.80, 0.82, 0.85, 0.83, 0.8502, 0.8298],
                      "val_auroc_10": [0.99, 0.99, 0.70, 0.70, 0.75, 0.75, 0.75, 0.75]})
    s = score_by_step(t).set_index("step")["score"]
    assert s[200] == pytest.approx((0.84 + 0.75) / 2)
    assert choose_length(t) == 200  # step 0 is a reference; 400 ties 200 at 3 decimals -> fewer steps
    t.loc[t["step"] == 400, "val_auroc_100"] += 0.01
    assert choose_length(t) == 400
    assert "ties go to fewer steps" in RULE


@pytest.mark.slow  # ~15 s of CPU, up to ~70 s wall on two busy cores
def test_sweep_writes_table_plot_page_and_never_reads_test(tmp_path, physionet_mirror, monkeypatch, capsys):
    store = _store(tmp_path / "store.zarr", physionet_mirror / "ptb-xl" / "1.0.3")
    read: list[int] = []
    orig = Store.load_signal

    def spy(self, rows, *a, **k):
        if rows is None or isinstance(rows, slice):  # a whole-store read counts as reading every row
            read.extend(range(self.n))
        else:
            read.extend(int(r) for r in np.asarray(rows).ravel())
        return orig(self, rows, *a, **k)

    monkeypatch.setattr(Store, "load_signal", spy)
    out, page = tmp_path / "sweep", tmp_path / "docs" / "length.md"
    argv = ["sweep", "--store", store, "--preset", "smoke", "--seeds", "0", "1", "--steps", "0", "2", "4",
            "--set", "optim.warmup_steps=1", "--set", "data.batch_size=8", "--set", "data.eval_windows=8",
            "--threads", "1", "--no-mlflow", "--out", str(out), "--markdown", str(page)]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(out / "sweep.csv")
    assert sorted(zip(table["seed"], table["step"], strict=True)) == [(s, p) for s in (0, 1) for p in (0, 2, 4)]
    for col in ("val_auroc_100", "val_auroc_10", "eval_recon_loss", "eval_lead_ce", "train_recon_loss"):
        assert col in table.columns
    assert table["val_auroc_100"].between(0, 1).all()
    assert (table["eval_source"] == "val").all()
    assert (out / "sweep.png").stat().st_size > 1000
    chosen = choose_length(table)
    assert chosen in (2, 4) and f'"chosen_steps": {chosen}' in capsys.readouterr().out
    text = page.read_text()
    assert f"**Chosen length: {chosen} steps.**" in text and RULE in text
    assert (page.with_suffix(".png")).exists() and "length.png" in text
    # test-split records were never read (the store's persisted split: fold 10 -> test)
    from ecgmodel.data.split_assignment import SplitConfig, ensure_assignment
    from ecgmodel.data.store import open_store

    st = open_store(store)
    assign, _ = ensure_assignment(st, SplitConfig())
    meta = st.meta()
    test_recs = set(assign.loc[assign["split"] == "test", "record"].astype(str))
    assert test_recs and read
    assert not set(meta.iloc[sorted(set(read))]["record"].astype(str)) & test_recs
    # re-running resumes (every (seed, step) is already scored) and logs one MLflow parent with a child per seed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main([a for a in argv if a != "--no-mlflow"] + ["--compare", f"again={out}"]) == 0
    assert len(pd.read_csv(out / "sweep.csv")) == 6
    assert "| again | 0 | 2 |" in page.read_text()  # another sweep's rows listed beside this one's
    import mlflow

    runs = mlflow.search_runs(experiment_names=["ecgssl-sweep"], output_format="list")
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2
    assert parent[0].data.metrics["chosen_steps"] == chosen
    assert all("val_auroc_100" in c.data.metrics and "eval_lead_ce" in c.data.metrics for c in children)


def test_sweep_bad_compare_is_one_line(tmp_path, capsys):
    argv = ["sweep", "--store", str(tmp_path), "--out", str(tmp_path / "o"), "--compare", f"x={tmp_path / 'none'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--compare" in err and "ecgssl sweep" in err and "Traceback" not in err
