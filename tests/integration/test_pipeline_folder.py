"""Your own folder as a pipeline source: ``ingest.folders`` goes through the pipeline's ingest stage into the
pipeline's store, with its labels and the quarantine rules, and the stage's key follows the folder's files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ecgmodel.data.store import content_hash, open_store
from ecgmodel.pipeline_config import build_config
from flows.pipeline import ingest_state
from flows.stages import ingest_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_store import DATA  # noqa: E402


def _copy_record(hea: Path, dest: Path) -> None:
    for f in hea.parent.glob(f"{hea.stem}.*"):
        shutil.copy(f, dest / f.name)


def test_the_ingest_stage_ingests_a_folder_and_re_ingests_when_it_gains_a_file(tmp_path):
    folder = tmp_path / "my_ecgs"
    folder.mkdir()
    heads = sorted((DATA / "ptb-xl" / "1.0.3" / "records500").rglob("*.hea"))
    extra = next(DATA.glob("challenge-2020/*/training/georgia/*/E00001.hea"))
    _copy_record(heads[0], folder)
    _copy_record(heads[1], folder)
    (folder / "broken.hea").write_text("this is not a header\n")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"record,label\n{heads[0].stem},NORM\n")
    store = tmp_path / "store.zarr"
    cfg = build_config(overrides=[f"ingest.store={store}", "ingest.sources=[]", "ingest.max_windows_per_record=1",
                                  "ingest.folders=" + json.dumps([{"path": str(folder), "labels": str(labels)}])])  # fmt: skip
    state = ingest_state(cfg)

    summary = ingest_stage.fn(cfg.ingest.model_dump(), state)
    assert summary["store_hash"] == content_hash(store) and summary["failed_sources"] == {}
    assert summary["sources"] == {"folder-my_ecgs": 2} and summary["run"]["folder-my_ecgs"]["written"] == 2
    assert [q["record"] for q in summary["quarantined"]] == ["broken"]  # the ingest's quarantine rules
    dx = open_store(store).meta().drop_duplicates("record").set_index("record")["dx"]
    assert dx[heads[0].stem] == "NORM" and dx[heads[1].stem] == ""

    assert ingest_state(cfg) == state  # unchanged folder: same key, the stage's cache holds
    _copy_record(extra, folder)
    assert ingest_state(cfg) != state  # a new file: a new key, the stage runs again
    again = ingest_stage.fn(cfg.ingest.model_dump(), ingest_state(cfg))
    assert again["sources"] == {"folder-my_ecgs": 3} and again["run"]["folder-my_ecgs"]["written"] == 1
    assert again["store_hash"] == content_hash(store) != summary["store_hash"]
