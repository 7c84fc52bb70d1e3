"""The ``cpu`` preset: valid, distinct from ``smoke``, trains with the mixed mask and resumes exactly; its length is
the one the pretraining-length sweep chose on validation."""

import json
import re
from pathlib import Path

import pytest
import torch
from helpers_store import bundled_store

from ecgmodel.train.checkpoint import load_checkpoint
from ecgmodel.train.config import PRESETS, preset
from ecgmodel.train.pretrain import CKPT_FILE, METRICS_FILE, build_config, train

TINY = {"optim.max_steps": 4, "optim.warmup_steps": 1, "data.batch_size": 4, "run.ckpt_every": 2, "run.log_every": 1,
        "run.mlflow": False, "run.progress": False, "run.device": "cpu", "run.threads": 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return bundled_store(tmp_path_factory.mktemp("cpu") / "store")


def test_cpu_preset_is_its_own():
    cpu, smoke = preset("cpu"), preset("smoke")
    assert cpu.encoder != smoke.encoder and cpu.ssl.mask_mode != "lead"
    assert smoke.ssl.mask_mode == "lead"  # smoke keeps the behaviour tests and the demo were written for
    assert set(PRESETS) >= {"smoke", "cpu", "base"}


def test_cpu_preset_length_is_the_one_validation_chose():
    page = Path(__file__).resolve().parents[2] / "docs" / "results" / "pretraining-length.md"
    chosen = re.search(r"\*\*Chosen length: (\d+) steps\.\*\*", page.read_text())
    assert chosen, f"{page}: no 'Chosen length' line (regenerate it: ecgssl sweep ... --markdown {page})"
    assert preset("cpu").optim.max_steps == int(chosen.group(1))
    assert "Preset `cpu`" in page.read_text()


def test_cpu_preset_resumes_exactly(store, tmp_path):
    cfg = build_config("cpu", TINY)
    whole = train(cfg, store, tmp_path / "whole")
    part = train(cfg, store, tmp_path / "split", stop_after=2)
    assert part["step"] == 2 and "encoder_path" not in part
    resumed = train(cfg, store, tmp_path / "split")
    assert resumed["step"] == 4 and "encoder_path" in resumed
    a = load_checkpoint(tmp_path / "whole" / CKPT_FILE)["model"]
    b = load_checkpoint(tmp_path / "split" / CKPT_FILE)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "split" / METRICS_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all("recon_alllead" in x and x["recon_alllead"] > 0 for x in lines)  # mixed mask: spans in every lead
    assert whole["metrics"]["eval_recon_time"] > 0
