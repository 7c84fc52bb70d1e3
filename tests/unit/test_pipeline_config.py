"""PipelineConfig, the CLI's config assembly, the report helpers, the fingerprints, and the bundled sample."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from ecgmodel.config import config_hash
from ecgmodel.pipeline_config import ALL_SOURCES, SAMPLE_MIRROR, PipelineConfig, build_config, load_config
from ecgmodel.report import mlflow_run_link, numeric_items, render_summary, table_records
from tasks.pipeline import file_fingerprint, mirror_fingerprint, store_fingerprint

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ config
def test_the_demo_preset_is_a_base_that_keys_override():
    demo = PipelineConfig.demo()
    assert demo.preset == "demo" and PipelineConfig.model_validate({"preset": "demo"}) == demo
    small = PipelineConfig.model_validate({"preset": "demo", "ablation": {"seeds": 1}})
    assert small.ablation.seeds == 1 and small.ablation.fractions == demo.ablation.fractions
    assert small.ingest == demo.ingest and small.pretrain == demo.pretrain
    assert PipelineConfig.model_validate(demo.model_dump()) == demo  # a dump round-trips
    assert build_config(overrides=["preset=demo", "ablation.seeds=1"]) == small
    with pytest.raises(ValidationError, match="preset"):
        PipelineConfig.model_validate({"preset": "huge"})


def test_a_config_file_can_name_the_preset(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("preset: demo\nablation:\n  seeds: 1\n")
    cfg = load_config(path)
    assert cfg.preset == "demo" and cfg.ingest.store == PipelineConfig.demo().ingest.store and cfg.ablation.seeds == 1


def test_defaults_and_demo_preset():
    full, demo = PipelineConfig(), PipelineConfig.demo()
    assert full.ingest.sources == ALL_SOURCES and full.pretrain.preset == "base"
    assert full.ablation.tasks == ["arrhythmia27", "localization", "ptbxl-superclass"]
    assert Path(demo.ingest.mirror) == SAMPLE_MIRROR and SAMPLE_MIRROR.is_dir()
    assert demo.pretrain.preset == "smoke" and demo.ingest.store.startswith(".demo/")
    assert config_hash(full) != config_hash(demo)
    assert config_hash(PipelineConfig.demo()) == config_hash(demo)  # stable


def test_every_key_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                walk(field.annotation)

    walk(PipelineConfig)


def test_set_overrides_and_validation():
    cfg = build_config(demo=True, overrides=["ablation.seeds=2", "ingest.workers=1", "pretrain.preset=smoke"])
    assert (cfg.ablation.seeds, cfg.ingest.workers) == (2, 1)
    with pytest.raises(KeyError, match="ablation.sedes"):
        build_config(overrides=["ablation.sedes=2"])
    with pytest.raises(ValidationError, match="fractions"):
        build_config(overrides=["ablation.fractions=[0.5, 1.5]"])
    with pytest.raises(ValidationError):
        build_config(overrides=["ablation.tasks=[\"nope\"]"])
    # fractions are de-duplicated and sorted (nested subsets are built smallest first)
    assert build_config(overrides=["ablation.fractions=[1.0, 0.1, 0.1]"]).ablation.fractions == [0.1, 1.0]


def test_config_file_merges_over_the_base(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("ingest:\n  store: /x/store.zarr\nablation:\n  seeds: 5\n  overrides: {optim.epochs: 2}\n")
    cfg = load_config(path, base=PipelineConfig.demo())
    assert cfg.ingest.store == "/x/store.zarr" and cfg.ingest.mirror == str(SAMPLE_MIRROR)  # rest kept
    assert cfg.ablation.seeds == 5 and cfg.ablation.overrides == {"optim.epochs": 2}
    as_json = tmp_path / "cfg.json"
    as_json.write_text(json.dumps({"pretrain": {"out": "o"}}))
    assert build_config(config_file=str(as_json)).pretrain.out == "o"
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  stor: typo\n")
    with pytest.raises(ValidationError, match="stor"):
        load_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")


# ------------------------------------------------------------------------------------------ reporting
def test_numeric_items_flattens_nested_results():
    got = numeric_items({"gains": {"0.1": 0.05, "1": float("nan")}, "best": {"score": 0.4, "init": "ssl"}, "n": 3})
    assert got == {"gains.0.1": 0.05, "best.score": 0.4, "n": 3.0}
    assert numeric_items(0.25, "labels_to_match") == {"labels_to_match": 0.25}
    assert numeric_items(math.nan, "x") == {} and numeric_items(True, "x") == {}


def test_run_links_open_the_model_training_view():
    view = "?workflowType=machine_learning"
    assert mlflow_run_link("http://h:5000/", "abc", "7") == f"[abc](http://h:5000/#/experiments/7/runs/abc{view})"
    local = mlflow_run_link("sqlite:///m.db", "abc", "7")
    assert f"http://127.0.0.1:5000/#/experiments/7/runs/abc{view}" in local and "ecgssl ui" in local
    assert mlflow_run_link("sqlite:///m.db", None) == "-"


def test_render_summary_has_headlines_links_and_a_noise_warning(tmp_path):
    cfg = PipelineConfig.demo()
    abl = {"parent_run_id": "p1", "labels_to_match": 0.5, "gains": {"0.5": 0.1}, "best": {"init": "ssl"},
           "summary_csv": "s.csv", "plot": "p.png", "experiment": "ecgssl-ablation-localization"}
    md = render_summary(cfg, "http://127.0.0.1:5000", {"store_hash": "h1"}, {"run_id": "r1", "encoder_path": "e"},
                        {"localization": abl}, n_windows=120, flow_run_id="fr", experiment_ids={"p1": "3"})
    assert "## localization" in md and "| 0.5 |" in md and "0.5: 0.1" in md
    assert "http://127.0.0.1:5000/#/experiments/3/runs/p1" in md and "`h1`" in md and "`fr`" in md
    assert "only 120 windows" in md and "noisy" in md
    big = render_summary(cfg, "sqlite:///x", {}, {}, {}, n_windows=50_000, flow_run_id=None)
    assert "noisy" not in big and "failed" not in big
    failed = render_summary(cfg, "sqlite:///x", {}, {}, {}, n_windows=50, flow_run_id=None,
                            failures=["ablation `localization`: 2 of 2 fine-tuning cells failed"])
    head = failed.split("## ")[0]
    assert "**The run failed:**" in head and "2 of 2 fine-tuning cells failed" in head


def test_failure_lines_name_the_setting_that_decides_them(tmp_path):
    from flows.pipeline import cell_failures, source_failures

    cfg = PipelineConfig.demo()
    (tmp_path / "cells.csv").write_text(
        "mode,init,fraction,seed,error\nfull,ssl,1.0,0,\"ValueError('1 class(es) after merging rare ones')\"\n"
        "full,random,1.0,0,\"ValueError('1 class(es) after merging rare ones')\"\n"
    )
    line = cell_failures("localization", {"n_failed": 2, "n_cells": 2, "summary_csv": str(tmp_path / "summary.csv")})
    assert "2 of 2 fine-tuning cells failed" in line and "min_class_records" in line and "merging rare" in line
    assert cell_failures("localization", {"n_failed": 0, "n_cells": 2}) is None
    lines = source_failures({"failed_sources": {"ludb": "RECORDS: 404"}}, cfg)
    assert len(lines) == 1 and "ludb" in lines[0] and "404" in lines[0] and "ingest.mirror" in lines[0]
    assert source_failures({"failed_sources": {}}, cfg) == []


def test_table_records_from_summary_csv(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("mode,init,fraction,mean\nfull,ssl,0.5,0.31\nfull,random,0.5,\n")
    rows = table_records(str(path))
    assert rows == [{"mode": "full", "init": "ssl", "fraction": 0.5, "mean": 0.31},
                    {"mode": "full", "init": "random", "fraction": 0.5, "mean": None}]
    assert table_records(str(tmp_path / "missing.csv")) == [] and table_records(None) == []
    # floats to 4 significant digits, the statistics named after the metric
    path.write_text("mode,init,fraction,n,mean,std\nfull,ssl,0.25,2,0.31234567890123456,0.012345678901234567\n")
    (row,) = table_records(str(path), metric="test_accuracy")
    assert row == {"mode": "full", "init": "ssl", "fraction": 0.25, "n": 2, "test_accuracy mean": 0.3123,
                   "test_accuracy std": 0.01235}


# ------------------------------------------------------------------------------------------ fingerprints
def test_ingest_folders_validate_and_a_bare_path_is_a_folder(tmp_path):
    cfg = build_config(overrides=['ingest.folders=["/data/a", {"path": "/data/b", "labels": "/data/b.csv"}]'])
    first, second = cfg.ingest.folders
    assert (first.path, first.labels, first.label_system, first.slug()) == ("/data/a", None, "user-label", "folder-a")
    assert (second.path, second.labels) == ("/data/b", "/data/b.csv")
    assert PipelineConfig.model_validate(cfg.model_dump()) == cfg  # a dump round-trips
    assert build_config().ingest.folders == []
    with pytest.raises(ValidationError, match="given twice"):  # two folders named alike need their own slugs
        build_config(overrides=['ingest.folders=["/data/a", "/other/a"]'])
    assert len(build_config(overrides=['ingest.folders=["/data/a", {"path": "/other/a", "source": "site-b"}]'])
               .ingest.folders) == 2  # fmt: skip
    with pytest.raises(ValidationError, match="given twice"):  # a slug equal to a catalog source
        build_config(overrides=['ingest.folders=[{"path": "/data/a", "source": "ludb"}]'])
    with pytest.raises(ValidationError, match="labls"):  # keys of a folder entry are checked
        build_config(overrides=['ingest.folders=[{"path": "/data/a", "labls": "x.csv"}]'])
    with pytest.raises(ValidationError):
        build_config(overrides=['ingest.folders=[{"path": ""}]'])


def test_folder_fingerprint_follows_the_files_and_labels(tmp_path):
    from ecgmodel.data.folder import fingerprint

    (tmp_path / "a.hea").write_text("a 12 500 5000\n")
    labels = tmp_path.parent / f"{tmp_path.name}-labels.csv"
    labels.write_text("record,label\na,NORM\n")
    first = fingerprint(tmp_path, labels)
    assert first == fingerprint(tmp_path, labels) != fingerprint(tmp_path)
    (tmp_path / "a.dat").write_bytes(b"\0" * 10)  # a signal file counts too
    second = fingerprint(tmp_path, labels)
    assert second != first
    labels.write_text("record,label\na,NORM;LVH\n")
    assert fingerprint(tmp_path, labels) != second


def test_cli_rejects_a_folder_without_records_before_running(capsys, tmp_path):
    from flows.cli import main

    base = ["pipeline", "--demo", "--set", f"ingest.store={tmp_path / 's.zarr'}"]
    assert main([*base, "--set", f'ingest.folders=["{tmp_path / "nope"}"]']) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err and "fix: ecgssl pipeline --set 'ingest.folders=" in err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--set", f'ingest.folders=["{tmp_path / "empty"}"]']) == 2
    assert "no .hea or .edf file" in capsys.readouterr().err
    (tmp_path / "empty" / "x.hea").write_text("x 12 500 5000\n")
    folder = json.dumps([{"path": str(tmp_path / "empty"), "labels": str(tmp_path / "missing.csv")}])
    assert main([*base, "--set", f"ingest.folders={folder}"]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_mirror_fingerprint_follows_the_listings(tmp_path):
    mirror = tmp_path / "m"
    shutil.copytree(SAMPLE_MIRROR / "ludb", mirror / "ludb")
    before = mirror_fingerprint.fn(str(mirror), ["ludb"])
    assert before == mirror_fingerprint.fn(str(mirror), ["ludb"])
    sums = mirror / "ludb" / "1.0.1" / "SHA256SUMS.txt"
    sums.write_text(sums.read_text() + "0" * 64 + " data/999.hea\n")
    assert mirror_fingerprint.fn(str(mirror), ["ludb"]) != before
    assert mirror_fingerprint.fn(str(mirror), ["ptb-xl"]) != before  # absent source still fingerprints
    url = mirror_fingerprint.fn("https://physionet.org/files/", ["ludb"])
    assert url == mirror_fingerprint.fn("https://physionet.org/files/", ["ludb"]) != before


def test_file_and_store_fingerprints(tmp_path):
    f = tmp_path / "enc.pt"
    f.write_bytes(b"weights-1")
    first = file_fingerprint.fn(str(f))
    assert first == hashlib.sha256(b"weights-1").hexdigest()[:16]
    f.write_bytes(b"weights-2")
    assert file_fingerprint.fn(str(f)) != first
    f.unlink()
    assert file_fingerprint.fn(str(f)) is None and file_fingerprint.fn(None) is None
    assert store_fingerprint.fn(str(tmp_path / "no-store.zarr")) is None


# ------------------------------------------------------------------------------------------ sample
SAMPLE_SLUGS = ["challenge-2020/1.0.2", "challenge-2021/1.0.3", "ptb-xl/1.0.3", "ludb/1.0.1"]


@pytest.mark.parametrize("slug", SAMPLE_SLUGS)
def test_sample_is_a_consistent_mirror(slug):
    root = SAMPLE_MIRROR / slug
    sums = {}
    for line in (root / "SHA256SUMS.txt").read_text().splitlines():
        digest, rel = line.split(" ", 1)
        sums[rel] = digest
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"SHA256SUMS.txt"}
    assert set(sums) == on_disk
    for rel, digest in sums.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, f"{slug}/{rel}"
    records = [r for r in (root / "RECORDS").read_text().splitlines() if r]
    assert records
    for rec in records:
        assert (root / f"{rec}.hea").is_file(), f"{slug}: RECORDS lists {rec} but its header is missing"


def test_sample_content_and_size():
    total = sum(p.stat().st_size for p in SAMPLE_MIRROR.rglob("*") if p.is_file())
    assert total < 8.5e6
    # PTB-XL metadata rows = exactly the bundled records, with MI locations for the localization task
    root = SAMPLE_MIRROR / "ptb-xl" / "1.0.3"
    rows = list(csv.DictReader(open(root / "ptbxl_database.csv")))
    bundled = {r for r in (root / "RECORDS").read_text().split() if r.startswith("records500")}
    assert {r["filename_hr"] for r in rows} == bundled
    codes = " ".join(r["scp_codes"] for r in rows)
    for key in ("'IMI'", "'ASMI'", "'LMI'", "'NORM'"):
        assert key in codes
    # labelled Challenge records covering many of the 27 scored classes
    scored = set(_scored_codes())
    found = set()
    for hea in (SAMPLE_MIRROR / "challenge-2020" / "1.0.2").rglob("*.hea"):
        for line in hea.read_text().splitlines():
            if line.replace(" ", "").startswith("#Dx:"):
                found |= {c.strip() for c in line.split(":", 1)[1].split(",")} & scored
    assert len(found) >= 15
    assert (SAMPLE_MIRROR / "ATTRIBUTION.md").is_file() and (SAMPLE_MIRROR / "LICENSES" / "CC-BY-4.0.txt").is_file()


def _scored_codes():
    from ecgmodel.data.labels import scored_codes

    return scored_codes()


def test_ui_points_at_a_tracking_server_instead_of_starting_one(monkeypatch, capsys):
    import argparse

    from flows.ui import _cmd_ui

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    assert _cmd_ui(argparse.Namespace(host="127.0.0.1", port=5000)) == 0
    assert "http://10.0.0.5:5000" in capsys.readouterr().out


def test_ui_refuses_a_busy_port_with_a_nonzero_exit(monkeypatch, capsys, tmp_path):
    import argparse
    import socket

    from flows.ui import _cmd_ui

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert _cmd_ui(argparse.Namespace(host="127.0.0.1", port=port)) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is already in use" in err and "--port" in err


def test_cli_registers_pipeline_and_ui():
    from flows.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["pipeline", "--demo", "--set", "ablation.seeds=2", "--set", "ingest.workers=1"])
    assert args.demo and args.overrides == ["ablation.seeds=2", "ingest.workers=1"] and callable(args.func)
    assert parser.parse_args(["ui"]).port == 5000 and parser.parse_args(["ui"]).host == "127.0.0.1"


def test_cli_rejects_a_bad_config_before_running(capsys):
    from flows.cli import main

    assert main(["pipeline", "--demo", "--set", "ablation.fractions=[2.0]"]) == 2
    assert "fractions" in capsys.readouterr().err


def test_demo_overrides_are_valid_keys_of_the_stage_configs():
    """The demo's --set style overrides must name real keys of PretrainConfig / FinetuneConfig."""
    from ecgmodel.config import apply_overrides
    from ecgmodel.downstream.config import FinetuneConfig
    from ecgmodel.train.pretrain import build_config as pretrain_config

    demo = PipelineConfig.demo()
    assert pretrain_config(demo.pretrain.preset, demo.pretrain.overrides).run.ckpt_every == 50
    for task in demo.ablation.tasks:
        assert apply_overrides(FinetuneConfig(task=task), demo.ablation.overrides).optim.epochs == 12
        ft = apply_overrides(FinetuneConfig(task=task), demo.ablation.overrides)
        assert ft.optim.patience < ft.optim.epochs  # else every demo cell would be flagged budget-limited
