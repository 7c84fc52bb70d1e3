"""Too few classes to fine-tune: ``ecgssl finetune`` prints one line naming the task, the record counts per label
and the ``--set min_class_records=N`` that fixes it, exits 2, before Prefect or MLflow start; the ablation's cell
failure text still names ``min_class_records``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ecgmodel.data.site_labels import SiteLabelsConfig, ingest_site_labels
from ecgmodel.downstream.config import FinetuneConfig
from ecgmodel.downstream.dataset import TooFewClasses, check_classes
from flows.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_store import DATA  # noqa: E402


@pytest.fixture(scope="module")
def site_store(tmp_path_factory) -> Path:
    """Three real PTB-XL records labelled with sites (RVOT x2, LVOT x1) in a store."""
    folder = tmp_path_factory.mktemp("sites")
    heads = sorted((DATA / "ptb-xl" / "1.0.3").rglob("*.hea"))[:3]
    assert len(heads) == 3
    for h in heads:
        for f in h.parent.glob(f"{h.stem}.*"):
            shutil.copy(f, folder / f.name)
    labels = ["RVOT", "RVOT", "LVOT"]
    (folder / "labels.csv").write_text("record,site,patient_id\n" + "".join(
        f"{h.stem},{lab},p{i}\n" for i, (h, lab) in enumerate(zip(heads, labels, strict=True))))
    store = folder.parent / f"{folder.name}.zarr"
    res = ingest_site_labels(SiteLabelsConfig(root=str(folder), max_windows=1), store)
    assert res["written"] == 3, res
    return store


def test_finetune_too_few_classes_is_one_line_with_the_fix(site_store, capsys):
    code = main(["finetune", "--task", "localization", "--store", str(site_store), "--init", "random",
                 "--set", "encoder.d_model=16"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ecgssl finetune: error: ") and "localization" in err
    assert "RVOT 2, LVOT 1" in err and "min_class_records=10" in err
    assert f"fix: ecgssl finetune --task localization --store {site_store} ... --set min_class_records=2" in err


def test_the_suggested_value_fixes_it_and_the_cell_text_names_the_key(site_store):
    cfg = FinetuneConfig(task="localization", store=str(site_store), min_class_records=10)
    with pytest.raises(TooFewClasses) as info:
        check_classes(cfg)
    assert isinstance(info.value, ValueError) and "min_class_records" in str(info.value)  # ablation cell failures
    assert info.value.counts == {"RVOT": 2, "LVOT": 1} and info.value.suggested == 2
    check_classes(cfg.model_copy(update={"min_class_records": info.value.suggested}))  # two classes: no error
    with pytest.raises(TooFewClasses):  # both labels rare: one class ("other") is left
        check_classes(cfg.model_copy(update={"min_class_records": 3}))
