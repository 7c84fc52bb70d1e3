"""PTB-XL diagnostic superclasses (NORM, MI, STTC, CD, HYP): the standard PTB-XL benchmark labelling.

A record's superclasses are the ``diagnostic_class`` of every key of its ``scp_codes`` that PTB-XL's
``scp_statements.csv`` marks diagnostic, whatever the statement's likelihood; records with none are left out of
the benchmark. This is the aggregation of the PTB-XL authors' example code and of the published benchmarks
(Strodthoff et al. 2021, helme/ecg_ptbxl_benchmarking), so numbers computed with it sit beside theirs.

The 44 diagnostic statements are embedded in ``ecgmodel/aux_data/ptbxl_diagnostic_classes.csv`` (extracted
unchanged from PTB-XL 1.0.3 ``scp_statements.csv``, CC BY 4.0; provenance in ``aux_data/README.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import pandas as pd

#: The five diagnostic superclasses, in the column order of every ptbxl-superclass model and metric.
SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")


@lru_cache(maxsize=1)
def diagnostic_statements() -> pd.DataFrame:
    """The embedded table: index ``scp_code``; columns diagnostic_class, diagnostic_subclass, description."""
    from ecgmodel.data.labels import aux_path

    return pd.read_csv(aux_path("ptbxl_diagnostic_classes.csv"), index_col="scp_code", keep_default_na=False)


def superclasses(scp_codes: Iterable[str]) -> list[str]:
    """The diagnostic superclasses of one record's ``scp_codes`` keys, in ``SUPERCLASSES`` order."""
    table = diagnostic_statements()["diagnostic_class"]
    found = {table[c] for c in scp_codes if c in table.index}
    return [c for c in SUPERCLASSES if c in found]


def superclass_matrix(records_codes: Iterable[Iterable[str]]) -> np.ndarray:
    """Multi-hot ``(n_records, 5)`` float32 matrix; an all-zero row means "no diagnostic statement"."""
    rows = [superclasses(codes) for codes in records_codes]
    out = np.zeros((len(rows), len(SUPERCLASSES)), dtype=np.float32)
    for i, found in enumerate(rows):
        for c in found:
            out[i, SUPERCLASSES.index(c)] = 1.0
    return out
