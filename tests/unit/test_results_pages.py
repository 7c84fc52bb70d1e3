"""Every results page under docs/results/ is exactly what its committed report folder re-derives (no hand-copied
numbers): the page's markdown and the parent run's logged metrics are recomputed from the folder's files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecgmodel.ablation.report import rederive
from flows.report import compare

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
FOLDERS = sorted(p.parent for p in RESULTS.glob("*/spec.json"))


def test_there_is_a_generated_results_page():
    assert FOLDERS, "docs/results/ holds no report folder"
    for folder in FOLDERS:
        assert folder.with_suffix(".md").is_file(), f"{folder.name}: no generated page {folder.name}.md beside it"


@pytest.mark.slow  # each page re-runs its report's hierarchical bootstrap (1,000 replicates per comparison)
@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_results_page_is_what_its_report_folder_rederives(folder, tmp_path):
    res = rederive(folder, tmp_path, plot=False)
    assert folder.with_suffix(".md").read_text() == res["markdown"] + "\n"
    assert compare(json.loads((folder / "metrics.json").read_text()), res["metrics"]) == []
