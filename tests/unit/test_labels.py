"""Label definitions: the 27 scored codes, multi-hot encoding, PTB-XL MI location, rare-class merging."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgmodel.data import labels as L


def test_label_definition_table_follows_official_order_and_groups():
    table = L.label_definition_table()
    assert list(table.columns) == ["index", "code", "abbreviation", "name", "equivalence_group", "source"]
    assert len(table) == 27 and table["code"].is_unique
    assert table["code"].tolist() == L.scored_codes()
    assert table.loc[table.code == "59118001", "equivalence_group"].item() == "713427006=59118001"
    assert table.loc[table.code == "426783006", "abbreviation"].item() == "NSR"
    assert (table["equivalence_group"] != "").sum() == 6
    assert "BSD-2-Clause" in table["source"].iloc[0]


def test_encode_snomed_ignores_unscored_and_keeps_equivalent_codes_apart():
    codes = L.scored_codes()
    y = L.encode_snomed(["164889003,59118001", "", "195042002", " 426783006 , 426783006"])
    assert y.shape == (4, 27)
    assert y[0, codes.index("164889003")] and y[0, codes.index("59118001")]
    assert not y[0, codes.index("713427006")]
    assert not y[1].any() and not y[2].any()  # unlabelled / unscored-only
    assert y[3].sum() == 1  # repeated code counted once


@pytest.mark.parametrize(
    ("dx", "expected"),
    [
        ("IMI,NORM", "inferior"),
        ("ILMI,IPMI", "inferior"),
        ("ASMI", "anterior"),
        ("ALMI,AMI", "anterior"),
        ("LMI", "lateral"),
        ("PMI,SR", "posterior"),
        ("IMI,ASMI", None),  # two locations -> excluded
        ("NORM,SR", None),
        ("", None),
    ],
)
def test_mi_location(dx, expected):
    assert L.mi_location(dx) == expected
    assert L.localization_label(dx, L.PTBXL_SYSTEM, "mi_location") == expected
    assert L.localization_label(dx, L.SNOMED_SYSTEM, "mi_location") is None


def test_merge_rare_rule():
    labels = pd.Series(["a"] * 10 + ["b"] * 9 + ["c"] * 2)
    merged, rule = L.merge_rare(labels, 10)
    assert merged.value_counts().to_dict() == {"a": 10, "other": 11}
    assert "b, c" in rule and "< 10" in rule
    same, rule = L.merge_rare(labels, 1)
    assert same.equals(labels) and "none" in rule


def test_localization_target_resolution():
    systems = {"ptb-xl": "ptbxl-scp", "zheng-2020": "va-origin", "challenge-2020": "snomed-ct"}
    assert L.localization_target_of(systems, ["ptb-xl"]) == "mi_location"
    assert L.localization_target_of(systems, ["ptb-xl", "zheng-2020"]) == "va_site"
    assert L.localization_target_of(systems, ["ptb-xl"], "va_side") == "va_side"
    with pytest.raises(ValueError, match="no localization labels"):
        L.localization_target_of(systems, ["challenge-2020"])
    with pytest.raises(ValueError, match="unknown localization target"):
        L.localization_target_of(systems, ["ptb-xl"], "apex")
    table = L.localization_definition_table(["anterior", "inferior", "other"], "mi_location", "rule text")
    assert table["equivalence_group"].tolist() == ["ASMI+AMI+ALMI", "IMI+ILMI+IPMI+IPLMI", "rule text"]
    assert np.array_equal(table["index"], [0, 1, 2])
