"""Caches that know the code: the digest changes with an edit of library code, and a stage keyed on it re-runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from ecgmodel.code_digest import REPO_ROOT, code_digest
from tasks.pipeline import STAGE_CACHE, CodeDigest


def _copy_packages(tmp_path: Path) -> list[Path]:
    roots = []
    for name in ("ecgmodel", "tasks"):
        dst = tmp_path / name
        shutil.copytree(REPO_ROOT / name, dst, ignore=shutil.ignore_patterns("__pycache__"))
        roots.append(dst)
    return roots


def test_digest_changes_with_an_edit_of_library_code(tmp_path):
    roots = _copy_packages(tmp_path)
    before = code_digest(roots)
    assert before == code_digest(roots)  # deterministic
    assert code_digest() == code_digest(REPO_ROOT / n for n in ("ecgmodel", "flows", "tasks"))
    finetune = tmp_path / "ecgmodel" / "downstream" / "finetune.py"
    finetune.write_text(finetune.read_text() + "\nHALVED = 0.5\n")
    edited = code_digest(roots)
    assert edited != before
    (tmp_path / "ecgmodel" / "aux_data" / "weights.csv").write_text("changed\n")  # a table the metric reads
    assert code_digest(roots) not in (before, edited)
    (tmp_path / "ecgmodel" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "ecgmodel" / "__pycache__" / "x.py").write_text("junk")  # caches do not count
    assert code_digest(roots) == code_digest(roots)


def test_stage_cache_policy_carries_the_code_digest():
    assert any(isinstance(p, CodeDigest) for p in STAGE_CACHE.policies)


def test_a_cached_stage_reruns_after_a_library_edit(tmp_path):
    roots = _copy_packages(tmp_path)
    calls = tmp_path / "calls.txt"

    @task(cache_policy=INPUTS + TASK_SOURCE + CodeDigest(roots=[str(r) for r in roots]),
          persist_result=True)
    def stage(x: int, tag: str) -> int:
        with open(calls, "a") as fh:
            fh.write(f"{x}\n")
        return x * 2

    @flow
    def run(tag: str) -> str:
        return stage(3, tag, return_state=True).name

    tag = tmp_path.name  # a key of this test's own
    assert run(tag) == "Completed"
    assert run(tag) == "Cached"  # same code: the stage is not run again
    pretrain = tmp_path / "ecgmodel" / "train" / "pretrain.py"
    pretrain.write_text(pretrain.read_text().replace("def train(", "def train(  ", 1))
    assert run(tag) == "Completed"  # library code changed: the stage runs again
    assert run(tag) == "Cached"
    assert calls.read_text().splitlines() == ["3", "3"]
