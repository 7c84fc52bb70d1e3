"""Expected CLI failures are caught before Prefect or MLflow start: one line naming the problem and the ecgssl
command that fixes it, exit 2. Disk full / read-only failures are final, not retried."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ecgmodel.errors import UserError
from flows.cli import main
from tasks.retry import is_permanent, retry_unless_permanent, user_facing_os_errors

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from helpers_store import DATA, bundled_store  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return bundled_store(tmp_path_factory.mktemp("checks") / "store", max_windows=1)


def run(capsys, *argv: str) -> str:
    """The one stderr line of a refused command (exit 2, no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert " - fix: " in err and "ecgssl" in err.split(" - fix: ")[1], err
    return err


def test_ingest_refuses_bad_arguments_naming_the_fix(tmp_path, capsys):
    file = tmp_path / "store.txt"
    file.write_text("x")
    mirror = str(DATA)
    assert "is a file; a store is a folder" in run(capsys, "ingest", "--store", str(file), "--mirror", mirror)
    err = run(capsys, "ingest", "--store", str(tmp_path / "s"), "--source", "ptb-xxl", "--mirror", mirror)
    assert "unknown source 'ptb-xxl'" in err
    err = run(capsys, "ingest", "--store", str(tmp_path / "s"), "--mirror", str(tmp_path / "nope"))
    assert "no such folder" in err
    err = run(capsys, "ingest", "--store", str(tmp_path / "s"), "--source", "ludb", "--mirror", str(tmp_path))
    assert "has no ludb/" in err
    t0 = time.perf_counter()
    err = run(capsys, "ingest", "--store", str(tmp_path / "s"), "--mirror", "http://127.0.0.1:9/files/")
    assert "unreachable" in err and time.perf_counter() - t0 < 10
    assert not (tmp_path / "s").exists()  # nothing was created


def test_store_without_commit_names_recover_command(store, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    (damaged / "commit.json").unlink()
    shutil.copyfile(store / "commit.json", damaged / "commit.prev.json")
    assert f"fix: ecgssl inspect {damaged} --recover" in run(capsys, "inspect", str(damaged))
    err = run(capsys, "ingest", "--store", str(damaged), "--mirror", str(DATA), "--source", "ludb")
    assert f"ecgssl inspect {damaged} --recover" in err
    assert main(["inspect", str(damaged), "--recover", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] > 0
    assert "is a file" in run(capsys, "inspect", str(store / "commit.json"))
    assert "does not exist" in run(capsys, "inspect", str(tmp_path / "missing"))


def test_pretrain_refuses_bad_set_key_and_missing_store(store, tmp_path, capsys):
    err = run(capsys, "pretrain", "--store", str(store), "--set", "optim.nope=1", "--out", str(tmp_path / "o"))
    assert "unknown config key 'optim.nope'" in err
    err = run(capsys, "pretrain", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert "does not exist" in err and "ecgssl ingest --store" in err
    assert not (tmp_path / "o").exists()


def test_finetune_refuses_bad_fraction_and_non_checkpoints(store, tmp_path, capsys):
    base = ["finetune", "--task", "arrhythmia27", "--store", str(store)]
    assert "must be in (0, 1]" in run(capsys, *base, "--fraction", "1.5", "--arch-from", "x")
    corrupt = tmp_path / "encoder.pt"
    corrupt.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a zip header, then garbage
    err = run(capsys, *base, "--init", str(corrupt))
    assert "not a checkpoint of this project" in err and "weights_only" not in err
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    assert "not a torch file" in run(capsys, *base, "--init", str(text))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)  # a torch file of something else
    assert "not an ecgssl encoder" in run(capsys, *base, "--init", str(other))
    assert "unknown config key" in run(capsys, *base, "--arch-from", "random", "--set", "optim.nope=1")


def test_pipeline_refuses_bad_config_before_prefect(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run(capsys, "pipeline", "--demo", "--set", "ablation.fractions=[1.5]")
    assert "invalid configuration" in err and "fractions" in err
    assert "nope" in run(capsys, "pipeline", "--demo", "--set", "nope.x=1")
    assert "no such file" in run(capsys, "pipeline", "--config", "missing.yaml")
    err = run(capsys, "pipeline", "--demo", "--set", 'pretrain.overrides={"optim.nope": 1}')
    assert "pretrain.overrides" in err and "optim.nope" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".demo").exists()


def test_the_real_cli_fails_before_prefect_and_mlflow_with_one_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "ecgssl"), "pipeline", "--demo", "--set",
                           "ablation.fractions=[1.5]"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ecgssl pipeline: error: invalid configuration: ablation.fractions")
    # no Prefect server was started (its database would be in PREFECT_HOME) and no MLflow store was created
    assert not list((tmp_path / "prefect").rglob("*.db")) and not (tmp_path / "mlflow.db").exists()


def test_disk_full_and_read_only_are_final():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/store.zarr/signal/c/0")
    assert is_permanent(full) and is_permanent(OSError(errno.EROFS, "Read-only file system"))
    assert not is_permanent(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_permanent(UserError("x")) and not is_permanent(RuntimeError("x"))

    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=False):
            return self.exc

    retry = retry_unless_permanent(ValueError)
    assert not retry(None, None, State(full)) and not retry(None, None, State(ValueError()))
    assert retry(None, None, State(TimeoutError("slow")))
    from tasks.convert import _retry_unless_permanent as convert_retry
    from tasks.fetch import _retry_unless_permanent as fetch_retry

    assert not convert_retry(None, None, State(full)) and not fetch_retry(None, None, State(full))
    with pytest.raises(UserError, match=r"cannot write /data/store.zarr/signal/c/0: No space left.*fix: free"):
        with user_facing_os_errors("free disk space: ecgssl ingest --store OTHER"):
            raise full
    with pytest.raises(FileNotFoundError):  # not every OSError is final
        with user_facing_os_errors("x"):
            raise FileNotFoundError("gone")


def test_demo_hint_names_a_ui_command_that_works_without_the_venv(monkeypatch, tmp_path):
    from flows import cli_pipeline

    exe = Path(sys.executable).parent / "ecgssl"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # venv not activated
    monkeypatch.chdir(tmp_path)
    assert cli_pipeline.ui_command() == f"{exe} ui"
    monkeypatch.chdir(exe.parents[2])  # the checkout: the path as typed there
    assert cli_pipeline.ui_command() == f"{exe.relative_to(exe.parents[2])} ui"
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")  # venv activated
    assert cli_pipeline.ui_command() == "ecgssl ui"


def test_local_mirror_is_verified_in_place_not_copied(tmp_path):
    from ecgmodel.data.download import download_source

    mirror = tmp_path / "mirror"
    shutil.copytree(DATA / "ludb", mirror / "ludb")
    dats = sorted((mirror / "ludb").rglob("*.dat"))
    bad = dats[0]
    bad.write_bytes(bad.read_bytes()[:-2] + b"\0\0")  # one record's signal file no longer matches SHA256SUMS
    res = download_source("ludb", mirror, tmp_path / "raw", progress=False, in_place=True)
    assert res.root == mirror / "ludb" / "1.0.1" and res.files_downloaded == 0
    failed = {f["record"]: f["reason"] for f in res.failures}
    assert any("sha256 differs" in reason for reason in failed.values()), failed
    assert len(res.records) == len(dats) - 1
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.suffix in (".dat", ".hea")]  # nothing copied
    copied = download_source("ludb", mirror, tmp_path / "copy", progress=False)
    assert copied.records == res.records and (tmp_path / "copy" / "ludb" / "1.0.1").is_dir()


def test_second_pipeline_training_into_the_same_folder_is_refused(tmp_path, capsys, monkeypatch):
    from ecgmodel.config import config_hash
    from ecgmodel.data.store import content_hash
    from ecgmodel.pipeline_config import PipelineConfig
    from ecgmodel.train.out_lock import training_lock

    monkeypatch.chdir(tmp_path)
    cfg = PipelineConfig.demo()
    bundled_store(Path(cfg.ingest.store), max_windows=1)
    busy = Path(cfg.pretrain.out) / f"{content_hash(cfg.ingest.store)}-{config_hash(cfg.pretrain, 8)}"
    with training_lock(busy):  # another pipeline is pretraining there
        err = run(capsys, "pipeline", "--demo")
    assert "being trained into by another process" in err and "pretrain.out=OTHER_DIR" in err
    assert not (tmp_path / "mlflow.db").exists()
