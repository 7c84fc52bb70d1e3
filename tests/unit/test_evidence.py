"""The evidence protocol's rules, each pinned on small synthetic inputs (docs/evidence.md).

* fair baselines: each init gets the schedule it chose on validation;
* no leaks: the split assignment keeps patients (PTB, INCART, PTB-XL copies) and copies of one recording in one
  split, counts copies once, and pretraining never reads a val/test row;
* statistics: the paired bootstrap covers a known difference; a non-monotone curve gives "not reached".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ecgmodel.data import labels as L
from ecgmodel.data.split_assignment import (
    SplitConfig,
    assign,
    canonical_copies,
    ensure_assignment,
    rows_of,
    seen_overlap,
)
from ecgmodel.data.store import StoreWriter, WindowBatch
from ecgmodel.downstream.ablation import cell_config, choose_schedule
from ecgmodel.downstream.config import FinetuneConfig, Schedule
from ecgmodel.metrics.bootstrap import Predictions, fast_macro_auroc, labels_to_match, paired_bootstrap

CODES = L.scored_codes()


# ------------------------------------------------------------------------------------------ fair baselines
def test_each_init_runs_with_the_schedule_it_chose_on_validation():
    grid = [Schedule(lr=1e-3, encoder_lr_scale=0.1), Schedule(lr=1e-3, encoder_lr_scale=1.0, warmup_fraction=0.1)]
    rows = []
    for init, scores in (("ssl", [0.6, 0.5]), ("random", [0.3, 0.45])):
        for g, score in zip(grid, scores, strict=True):
            rows.append({"init": init, "mode": "full", **g.model_dump(), "best_val_accuracy": score})
    rows.append({"init": "random", "mode": "full", "lr": 9.0, "encoder_lr_scale": 9.0, "warmup_fraction": 0.0,
                 "best_val_accuracy": math.nan})  # a failed tuning run never wins
    chosen = choose_schedule(pd.DataFrame(rows), "best_val_accuracy")
    assert chosen[("ssl", "full")] == {"lr": 1e-3, "encoder_lr_scale": 0.1, "warmup_fraction": 0.0}
    assert chosen[("random", "full")] == {"lr": 1e-3, "encoder_lr_scale": 1.0, "warmup_fraction": 0.1}
    base = FinetuneConfig(task="localization", store="s")
    cfg = FinetuneConfig.model_validate(
        cell_config(base, "random", "full", 0.2, 3, Schedule(**chosen[("random", "full")])))
    assert (cfg.init, cfg.fraction, cfg.seed) == ("random", 0.2, 3)
    assert (cfg.optim.lr, cfg.optim.encoder_lr_scale, cfg.optim.warmup_fraction) == (1e-3, 1.0, 0.1)
    with pytest.raises(ValueError, match="no run produced a finite"):
        choose_schedule(pd.DataFrame([{**rows[-1], "init": "ssl"}]), "best_val_accuracy")


def test_warmup_fraction_sets_the_warmup_of_a_run():
    from ecgmodel.downstream.model import DownstreamModel
    from ecgmodel.models.encoder import EncoderConfig, build_encoder

    model = DownstreamModel(build_encoder(EncoderConfig(d_model=16, n_layers=1, n_heads=2, input_samples=500,
                                                         patch_size=50)), 3)  # fmt: skip
    groups = model.param_groups(1e-3, 1.0, 0.01)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name in ("pos_embed", "slot_embed", "mask_token"):  # excluded from decay, as in pretraining
        assert id(getattr(model.encoder, name)) in no_decay
    assert {g["lr"] for g in groups} == {1e-3}  # from scratch: the encoder at the full lr when chosen


# ------------------------------------------------------------------------------------------ split assignment
def _records() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    # PTB: 30 records, patients are runs of equal (age, sex): 3 records each
    for i in range(1, 31):
        p = (i - 1) // 3
        rows.append(("challenge-2020", f"S{i:04d}", "ptb", "164865005", "", 40 + p, "male" if p % 2 else "female"))
    # INCART: 20 records of 2 records each
    for i in range(1, 21):
        p = (i - 1) // 2
        rows.append(("challenge-2020", f"I{i:04d}", "st_petersburg_incart", "427172004", "", 50 + p, "male"))
    # PTB-XL copies in the Challenge (2020 and 2021 copies of the same HR records); patients from PTB-XL metadata
    for i in range(1, 41):
        for src in ("challenge-2020", "challenge-2021"):
            rows.append((src, f"HR{i:05d}", "ptb-xl", "426783006" if i % 2 else "164889003", "", 60, "female"))
    # Georgia copies in both Challenge releases, with a stripped label in one of them
    for i in range(1, 41):
        rows.append(("challenge-2020", f"E{i:05d}", "georgia", "" if i % 4 == 0 else "426783006", "", 30, "male"))
        rows.append(("challenge-2021", f"E{i:05d}", "georgia", "426783006", "", 30, "male"))
    records = pd.DataFrame(rows, columns=["source", "record", "database", "dx", "patient_id", "age", "sex"])
    records["fold"] = -1
    # PTB-XL: 4 records per patient; folds by patient
    ptbxl = pd.DataFrame({"ecg_id": range(1, 41), "patient_id": [f"{(i - 1) // 4 + 1000}" for i in range(1, 41)],
                          "strat_fold": [1 + ((i - 1) // 4) % 10 for i in range(1, 41)]})  # fmt: skip
    return records, ptbxl


def test_patients_and_copies_never_straddle_splits():
    records, ptbxl = _records()
    table = assign(records, SplitConfig(val_fraction=0.2, test_fraction=0.2), ptbxl)
    assert set(table["split"]) <= {"train", "val", "test"}
    # PTB / INCART patients inferred from consecutive numbers with equal age and sex
    ptb = table[table["database"] == "ptb"]
    assert ptb["patient_id"].nunique() == 10
    assert ptb.groupby("patient_id")["split"].nunique().eq(1).all()
    incart = table[table["database"] == "st_petersburg_incart"]
    assert incart["patient_id"].nunique() == 10
    assert incart.groupby("patient_id")["split"].nunique().eq(1).all()
    # PTB-XL copies: PTB-XL's patient and its official fold (1-8 train, 9 val, 10 test)
    hr = table[table["database"] == "ptb-xl"]
    assert hr["patient_id"].nunique() == 10
    assert hr.groupby("patient_id")["split"].nunique().eq(1).all()
    fold = hr["fold"].to_numpy()
    expect = np.where(fold <= 8, "train", np.where(fold == 9, "val", "test"))
    assert (hr["split"].to_numpy() == expect).all()
    # every copy of a recording in one split, exactly one canonical copy (2021 preferred over 2020)
    assert table.groupby("recording_key")["split"].nunique().eq(1).all()
    assert table.groupby("recording_key")["canonical"].sum().eq(1).all()
    canon = table[table["canonical"]]
    assert (canon.loc[canon["database"].isin(["ptb-xl", "georgia"]), "source"] == "challenge-2021").all()
    # patientwise alternative: folds ignored, still patient-complete
    pw = assign(records, SplitConfig(ptbxl_split="patientwise", val_fraction=0.2, test_fraction=0.2), ptbxl)
    assert pw.groupby("group")["split"].nunique().eq(1).all()
    assert not (pw.loc[pw["database"] == "ptb-xl", "split"].to_numpy() == expect).all()


def test_canonical_copy_is_chosen_among_the_labelled_ones():
    records, _ = _records()
    g = records[records["database"] == "georgia"].reset_index(drop=True)
    labelled = (g["dx"] != "").to_numpy()
    canon = canonical_copies(g, labelled)
    keys = g["record"][canon]
    assert keys.is_unique and len(keys) == 40  # every recording counted once
    assert labelled[canon].all()


def _store(path, records: pd.DataFrame, windows: int = 2) -> str:
    batches = []
    for i, r in enumerate(records.itertuples(index=False)):
        sig = np.full((windows, 12, 500), i, dtype=np.int16)  # the signal value names the record
        batches.append(WindowBatch.for_record(
            sig, np.ones(12, bool), np.arange(windows) * 500, np.full(windows, 500), np.zeros(windows, np.uint8),
            record=r.record, source=r.source, database=r.database, dx=r.dx, patient_id=r.patient_id,
            age=float(r.age), sex=r.sex))  # fmt: skip
    with StoreWriter(path, fs=500, window_samples=500, chunk_windows=16) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"challenge-2020": {"version": "t"}, "challenge-2021": {"version": "t"}},
                 dx_systems={"challenge-2020": "snomed-ct", "challenge-2021": "snomed-ct"})  # fmt: skip
    return str(path)


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_pretraining_on_a_split_store_never_reads_a_val_or_test_row(tmp_path, kind):
    from ecgmodel.data.loader import make_loader
    from ecgmodel.data.store import open_store
    from ecgmodel.train.config import preset
    from ecgmodel.train.pretrain import select_rows

    records, _ = _records()
    path = _store(tmp_path / "store", records)
    cfg = preset("smoke")
    sel = select_rows(path, cfg)
    table, apath = ensure_assignment(path, cfg.data.split)
    assert apath.is_file() and ensure_assignment(path, cfg.data.split)[0].equals(table)  # persisted, reread
    meta = open_store(path).meta()
    allowed = set(rows_of(meta, table, ["train"]).tolist())
    assert set(sel["rows"].tolist()) == allowed and len(allowed) < len(meta)
    train_ids = {i for i, r in enumerate(records.itertuples(index=False))
                 if table.loc[(table.source == r.source) & (table.record == r.record), "split"].item() == "train"
                 and table.loc[(table.source == r.source) & (table.record == r.record), "canonical"].item()}  # fmt: skip
    loader = make_loader(path, kind, 8, rows=sel["rows"], seed=0)
    seen = set()
    for _ in range(3 * len(allowed) // 8):
        seen |= set(loader.next().signal[:, 0, 0].tolist())
    loader.close()
    assert seen == train_ids  # every train recording, nothing else (no val/test, no second copy)
    assert set(sel["seen"]["split"]) == {"train"} and sel["info"]["n_windows"] == len(allowed)
    assert len(sel["eval_rows"]) and set(sel["eval_rows"].tolist()).isdisjoint(allowed)  # eval_* held out
    # the ablation's leak check: an encoder that saw every recording overlaps the val/test ones
    clean = seen_overlap(sel["seen"], table)
    leaky = seen_overlap(table.assign(split="train"), table)
    assert clean["known"] and clean["n_overlap"] == 0
    assert leaky["n_overlap"] == int(table["split"].isin(["val", "test"]).sum())
    assert not seen_overlap(None, table)["known"]


# ------------------------------------------------------------------------------------------ statistics
def _accuracy_arm(correct: np.ndarray) -> Predictions:
    n = len(correct)
    y = np.zeros(n, np.int64)
    return Predictions(np.array([f"r{i}" for i in range(n)]), y, np.zeros((n, 2)), np.where(correct, 0, 1), ["a", "b"])


def test_paired_bootstrap_ci_covers_a_known_difference():
    rng = np.random.default_rng(0)
    n = 600
    base = rng.random(n)
    # SSL is right on 80 % of the records, random on 60 %, strongly correlated per record (paired design)
    a = [_accuracy_arm(base + rng.normal(0, 0.02, n) < 0.8) for _ in range(3)]
    b = [_accuracy_arm(base + rng.normal(0, 0.02, n) < 0.6) for _ in range(3)]
    acc = lambda p: float(np.mean(p.outputs == p.y))  # noqa: E731
    res = paired_bootstrap(a, b, acc, n_boot=400, seed=1)
    assert res["ci_low"] <= 0.2 <= res["ci_high"]
    assert res["ci_low"] > 0.1 and res["ci_high"] < 0.3  # tight thanks to the pairing
    assert res["estimate"] == pytest.approx(0.2, abs=0.03) and res["n_records"] == n
    null = paired_bootstrap(a, a, acc, n_boot=200, seed=2)
    assert null["ci_low"] <= 0.0 <= null["ci_high"]


def test_fast_macro_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.random((200, 5)) < 0.3
    s = rng.random((200, 5)) + 0.5 * y
    s[:, 2] = np.round(s[:, 2], 1)  # ties
    ref = np.mean([roc_auc_score(y[:, k], s[:, k]) for k in range(5)])
    assert fast_macro_auroc(y, s) == pytest.approx(ref)


def test_labels_to_match_needs_an_unbroken_run_to_the_full_set():
    lower = {0.05: -0.2, 0.1: -0.005, 0.2: 0.01, 0.4: -0.05, 0.6: 0.0, 0.8: -0.009, 1.0: 0.02}
    assert labels_to_match(lower, margin=0.01) == 0.6  # 0.2 passes but 0.4 does not: 0.2 does not count
    non_monotone = {**lower, 1.0: -0.5}  # fails at 100 %: not reached, whatever happens below
    assert math.isnan(labels_to_match(non_monotone, margin=0.01))
    assert math.isnan(labels_to_match({0.5: 0.1, 1.0: math.nan}, margin=0.01))
    assert labels_to_match({0.1: -0.03, 1.0: 0.0}, margin=0.05) == 0.1
    with pytest.raises(ValueError, match="margin"):
        labels_to_match(lower, margin=-1)


def test_demo_style_means_cannot_claim_a_match_the_cis_do_not_support():
    """The old rule (first fraction whose mean reaches random at 100 %) said 0.25 on gains 0 / -0.5 / 0;
    the non-inferiority rule says not reached when the lower bounds are that wide."""
    lower = {0.25: -0.4, 0.5: -0.9, 1.0: -0.4}
    assert math.isnan(labels_to_match(lower, margin=0.05))


# ------------------------------------------------------------------------------------------ labels, metric, eval
def test_equivalent_codes_train_one_output():
    merged = L.merged_scored_codes()
    assert len(merged) == 24 and all(L.representative(c) == c for c in merged)
    y = L.encode_snomed(["59118001", "713427006", "63593006,17338001"], merged)
    assert y[0].tolist() == y[1].tolist() and y[0].sum() == 1
    assert y[2, merged.index("284470004")] and y[2, merged.index("427172004")]
    table = L.label_definition_table(merged=True)
    assert table["code"].tolist() == merged and "CRBBB/RBBB" in set(table["abbreviation"])


def test_challenge_score_is_nan_where_the_official_scorer_divides_by_zero():
    from ecgmodel.metrics.challenge2020 import challenge_score

    labels = np.zeros((3, 27), bool)
    labels[:, CODES.index(L.NORMAL_CLASS)] = True  # correct == inactive
    assert math.isnan(challenge_score(labels, labels, CODES))


def test_whole_record_crops_cover_every_sample():
    from ecgmodel.downstream.evaluate import tile_starts

    for valid in (500, 1000, 1234, 4999, 5000):
        starts = tile_starts(valid, 5000, 1000)
        covered = np.zeros(5000, bool)
        for s in starts:
            covered[s : s + 1000] = True
        assert covered[: max(valid, 1000)].all() and starts.max() + 1000 <= max(valid, 1000)


def test_resnet_mask_is_applied_before_the_convolutions():
    from ecgmodel.models.encoder import EncoderConfig, build_encoder

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="resnet1d", d_model=8, n_layers=1, input_samples=500, patch_size=50))
    enc.eval()
    x = torch.randn(1, 12, 500)
    mask = torch.zeros(1, 12, 10, dtype=torch.bool)
    mask[:, :, 4] = True
    y = x.clone()
    y[:, :, 200:250] += 5 * torch.randn(1, 12, 50)  # change only the hidden samples
    with torch.no_grad():
        assert torch.allclose(enc(x, mask), enc(y, mask), atol=1e-5)  # no token sees them, not even neighbours


def test_flat_leads_get_no_lead_number_target():
    from ecgmodel.models.encoder import build_encoder
    from ecgmodel.models.heads import PretrainModel
    from ecgmodel.train.config import preset
    from ecgmodel.train.pretrain import pretext_step

    cfg = preset("smoke")
    model = PretrainModel(build_encoder(cfg.encoder), cfg.ssl.mode)
    sig = torch.randint(-800, 800, (2, 12, cfg.encoder.input_samples), dtype=torch.int16)
    sig[0, 3] = 17  # lead aVR of sample 0 is flat
    out = pretext_step(model, sig, torch.ones(2, 12, dtype=torch.bool), torch.full((2,), sig.shape[-1]), cfg,
                       torch.Generator().manual_seed(0), shuffle_prob=1.0)  # fmt: skip
    slot = (out["lead_target"][0] == 3).nonzero().item()  # the slot the flat lead was moved to
    assert out["weight"][0, slot] == 0 and out["weight"][0].sum() == 11 and out["weight"][1].sum() == 12


def test_ptbxl_superclass_labels_leave_out_records_without_a_diagnostic_statement():
    from ecgmodel.data.ptbxl import SUPERCLASSES
    from ecgmodel.downstream.dataset import _labels

    records = pd.DataFrame({"source": ["ptb-xl"] * 4 + ["challenge-2020"],
                            "dx": ["NORM,SR", "IMI,LVH", "SR", "CLBBB,NDT", "426783006"]})  # fmt: skip
    cfg = FinetuneConfig(task="ptbxl-superclass", store="s")
    keep, y, classes, definitions, target, _ = _labels(cfg, records, {"ptb-xl": "ptbxl-scp",
                                                                      "challenge-2020": "snomed-ct"}, "s")  # fmt: skip
    assert keep.tolist() == [True, True, False, True, False]  # SR alone is not diagnostic; SNOMED rows are out
    assert classes == list(SUPERCLASSES) and definitions["code"].tolist() == list(SUPERCLASSES)
    assert y.tolist() == [[True, False, False, False, False], [False, True, False, False, True],
                          [False, False, True, True, False]]  # fmt: skip
    assert cfg.primary_metric == "macro_auroc" and cfg.multilabel and target == "ptbxl-scp"


def test_external_pretraining_stores_are_read_and_count_as_seen(tmp_path):
    from ecgmodel.config import apply_overrides
    from ecgmodel.data.loader import make_loader
    from ecgmodel.train.config import preset
    from ecgmodel.train.pretrain import select_rows

    records, _ = _records()
    path = _store(tmp_path / "store", records)
    ext = _store(tmp_path / "ext", records.iloc[:40])  # an outside store holding copies of 40 of the recordings
    cfg = apply_overrides(preset("smoke"), {"data.extra_stores": [ext]})
    sel = select_rows(path, cfg)
    loader = make_loader(path, "memory", 8, rows=sel["rows"], extra=sel["extra"])
    assert loader.n == len(sel["rows"]) + 2 * 40  # two windows per external record
    table, _ = ensure_assignment(path, cfg.data.split)
    external = sel["seen"][sel["seen"]["split"] == "external"]
    assert len(external) == 40 and sel["info"]["extra_stores"] == [ext]
    expected = int(table.iloc[:40]["split"].isin(["val", "test"]).sum())
    assert seen_overlap(sel["seen"], table)["n_overlap"] >= expected > 0  # the leak check sees the copies
    with pytest.raises(ValueError, match="in-memory loader"):
        make_loader(path, "stream", 8, rows=sel["rows"], extra=sel["extra"])


def test_weighted_replicates_equal_scoring_the_drawn_records():
    from ecgmodel.metrics.bootstrap import metric_function, prepare

    rng = np.random.default_rng(5)
    merged = L.merged_scored_codes()
    y = rng.random((120, len(merged))) < 0.15
    out = rng.random((120, len(merged))) < 0.15
    p = prepare(Predictions(np.array([f"r{i}" for i in range(120)]), y, out.astype(float), out, merged),
                "test_challenge_score")  # fmt: skip
    fn = metric_function("arrhythmia27", "test_challenge_score")
    idx = rng.integers(0, 120, 120)
    assert fn.weighted(p, np.bincount(idx, minlength=120)) == pytest.approx(fn(p.take(idx)))
    acc = metric_function("localization", "test_accuracy")
    q = _accuracy_arm(rng.random(120) < 0.7)
    assert acc.weighted(q, np.bincount(idx, minlength=120)) == pytest.approx(acc(q.take(idx)))


def test_pretraining_selection_stays_on_the_commit_it_opened(tmp_path):
    """An ingest committing more rows while pretraining starts changes neither the rows read nor the hash
    recorded: both come from one view pinned to the commit it was opened at."""
    from ecgmodel.data.store import open_store
    from ecgmodel.train.config import preset
    from ecgmodel.train.pretrain import select_rows

    records, _ = _records()
    first, later = records.iloc[:60], records.iloc[60:]
    path = _store(tmp_path / "store", first)
    pinned = open_store(path)
    before = pinned.hash
    batches = [WindowBatch.for_record(
        np.full((2, 12, 500), 1000 + i, dtype=np.int16), np.ones(12, bool), np.arange(2) * 500, np.full(2, 500),
        np.zeros(2, np.uint8), record=r.record, source=r.source, database=r.database, dx=r.dx,
        patient_id=r.patient_id, age=float(r.age), sex=r.sex) for i, r in enumerate(later.itertuples(index=False))]  # fmt: skip
    with StoreWriter(path, fs=500, window_samples=500, create=False) as w:
        w.append(WindowBatch.concat(batches))
        w.commit(sources={"challenge-2020": {"version": "t"}, "challenge-2021": {"version": "t"}},
                 dx_systems={"challenge-2020": "snomed-ct", "challenge-2021": "snomed-ct"})  # fmt: skip
    assert open_store(path).hash != before and open_store(path).n > pinned.n
    sel = select_rows(pinned, preset("smoke"))
    assert sel["info"]["store_hash"] == before
    assert sel["rows"].max() < pinned.n  # nothing of the later commit


def test_pretext_arms_are_compared_head_to_head(tmp_path):
    """arm_contrasts: joint right on 85 % of the records, mask on 60 %, shuffle like joint: joint - mask is
    significant and near +0.25, joint - shuffle is not; the report lists both."""
    from ecgmodel.ablation.report import Cells, arm_contrasts, contrasts_markdown, evidence

    rng = np.random.default_rng(5)
    n = 400
    base = rng.random(n)
    rate = {"ssl-joint": 0.85, "ssl-shuffle": 0.85, "ssl-mask": 0.6}
    rows = []
    for init, r in rate.items():
        for seed in range(2):
            out = tmp_path / f"{init}-{seed}"
            out.mkdir()
            correct = base + rng.normal(0, 0.02, n) < r
            np.savez(out / "test_predictions.npz", keys=np.array([f"r{i}" for i in range(n)]), y=np.zeros(n, np.int64),
                     probs=np.zeros((n, 2)), outputs=np.where(correct, 0, 1), classes=np.array(["a", "b"]))  # fmt: skip
            rows.append({"mode": "linear", "init": init, "fraction": 1.0, "seed": seed, "out_dir": str(out)})
    cells = Cells(pd.DataFrame(rows).assign(test_accuracy=0.0), tmp_path, "test_accuracy")
    info = {"task": "localization", "metric": "test_accuracy", "modes": ["linear"], "margin": 0.0}
    table = arm_contrasts(cells, info, ["ssl-joint", "ssl-mask", "ssl-shuffle"], n_boot=300)
    pairs = {(r.a, r.b): r for r in table.itertuples(index=False)}
    assert set(pairs) == {("ssl-joint", "ssl-mask"), ("ssl-joint", "ssl-shuffle"), ("ssl-mask", "ssl-shuffle")}
    jm = pairs[("ssl-joint", "ssl-mask")]
    assert jm.significant and jm.ci_low > 0.15 and jm.diff == pytest.approx(0.25, abs=0.04)
    js = pairs[("ssl-joint", "ssl-shuffle")]
    assert not js.significant and js.ci_low <= 0 <= js.ci_high
    assert pairs[("ssl-mask", "ssl-shuffle")].diff < 0
    md = contrasts_markdown(table)
    assert "| ssl-joint - ssl-mask | linear | 1 |" in md and md.count("\n| ssl-") == 3
    assert arm_contrasts(cells, info, ["ssl-joint"], n_boot=10).empty
    # a contrast reads only the pooled gains, and they are the very intervals the full evidence computes
    full, _ = evidence(cells, info, "ssl-joint", "ssl-mask", n_boot=300, seed=101)
    lean, _ = evidence(cells, info, "ssl-joint", "ssl-mask", n_boot=300, seed=101, gains_only=True)
    cols = ["fraction", "gain", "gain_ci_low", "gain_ci_high", "gain_significant"]
    pd.testing.assert_frame_equal(lean[cols], full[full["pretrain"] == "pooled"][cols].reset_index(drop=True))
    assert lean["vs_full"].isna().all() and (lean["pretrain"] == "pooled").all()
    assert (jm.diff, jm.ci_low, jm.ci_high) == tuple(full.loc[0, ["gain", "gain_ci_low", "gain_ci_high"]])


def test_a_piece_without_the_reference_at_full_labels_still_reports_its_gains(tmp_path):
    """Fractions 0.05 and 0.1 only (a piece sized to its budget): SSL - random at each fraction is computed and
    significant; the comparison with random at 100 % and labels_to_match say "not run", not "too few records"."""
    from ecgmodel.ablation.report import NO_FULL_REFERENCE, build_report

    rng = np.random.default_rng(9)
    n = 300
    base = rng.random(n)
    rows = []
    for init, rate in {"random": 0.55, "ssl": 0.85}.items():
        for f in (0.05, 0.1):
            for seed in range(2):
                out = tmp_path / f"{init}-{f}-{seed}"
                out.mkdir()
                correct = base + rng.normal(0, 0.02, n) < rate
                np.savez(out / "test_predictions.npz", keys=np.array([f"r{i}" for i in range(n)]),
                         y=np.zeros(n, np.int64), probs=np.zeros((n, 2)), outputs=np.where(correct, 0, 1),
                         classes=np.array(["a", "b"]))  # fmt: skip
                rows.append({"mode": "full", "init": init, "fraction": f, "seed": seed, "out_dir": str(out),
                             "pretrain_id": "p0" if init == "ssl" else "", "test_accuracy": float(correct.mean())})  # fmt: skip
    info = {"task": "localization", "metric": "test_accuracy", "modes": ["full"], "margin": 0.01,
            "bootstrap_samples": 200, "bootstrap_seed": 0, "ssl_arms": ["ssl"], "base_dir": str(tmp_path)}  # fmt: skip
    res = build_report(pd.DataFrame(rows), info, tmp_path / "report", plot=False)
    not_run = NO_FULL_REFERENCE.format(reference="random")
    assert res["significant"] == {"0.05": True, "0.1": True}
    assert res["gains"]["0.1"] == pytest.approx(0.30, abs=0.05)
    assert res["labels_to_match_status"] == {"ssl/full|random": not_run}
    assert math.isnan(res["labels_to_match"])
    assert "too few test records" not in res["markdown"]
    assert f"| {not_run} | - |" in res["markdown"] and f"| full | {not_run} |" in res["markdown"]
    assert res["metrics"]["gain_ci_low_at_0.1"] > 0.2
