"""PTB-XL diagnostic superclasses: the embedded table and the standard aggregation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecgmodel.data.ptbxl import SUPERCLASSES, diagnostic_statements, superclass_matrix, superclasses


def test_embedded_table_has_the_44_diagnostic_statements():
    table = diagnostic_statements()
    assert len(table) == 44
    assert set(table["diagnostic_class"]) == set(SUPERCLASSES)
    assert table.loc["IMI", "diagnostic_class"] == "MI" and table.loc["NORM", "diagnostic_class"] == "NORM"


def test_aggregation_ignores_non_diagnostic_statements_and_orders_classes():
    # SR (rhythm) and LVOLT (form) are not diagnostic; LVH is HYP, IMI is MI
    assert superclasses(["SR", "LVOLT"]) == []
    assert superclasses(["LVH", "IMI", "SR"]) == ["MI", "HYP"]
    m = superclass_matrix([["NORM", "SR"], [], ["CLBBB", "ISCAL"]])
    np.testing.assert_array_equal(m, [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 1, 0]])


def test_embedded_table_matches_the_mirror(shared):
    statements = pd.read_csv(shared / "physionet" / "ptb-xl" / "1.0.3" / "scp_statements.csv", index_col=0)
    diagnostic = statements[statements["diagnostic"] == 1]
    table = diagnostic_statements()
    assert sorted(diagnostic.index) == sorted(table.index)
    assert (diagnostic["diagnostic_class"] == table.loc[diagnostic.index, "diagnostic_class"]).all()
