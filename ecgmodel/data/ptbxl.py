"""PTB-XL labels: the diagnostic superclasses (NORM, MI, STTC, CD, HYP) and the Challenge 2020 scored SNOMED codes.

**Superclasses** (the standard PTB-XL benchmark labelling):

A record's superclasses are the ``diagnostic_class`` of every key of its ``scp_codes`` that PTB-XL's
``scp_statements.csv`` marks diagnostic, whatever the statement's likelihood; records with none are left out of
the benchmark. This is the aggregation of the PTB-XL authors' example code and of the published benchmarks
(Strodthoff et al. 2021, helme/ecg_ptbxl_benchmarking), so numbers computed with it sit beside theirs.

The 44 diagnostic statements are embedded in ``ecgmodel/aux_data/ptbxl_diagnostic_classes.csv`` (extracted
unchanged from PTB-XL 1.0.3 ``scp_statements.csv``, CC BY 4.0; provenance in ``aux_data/README.md``).

**Scored SNOMED codes** (arrhythmia27 on PTB-XL records): ``aux_data/ptbxl_to_snomed_scored.csv`` maps PTB-XL
statements (``scp_codes`` keys) and ``heart_axis`` values to the Challenge 2020 scored codes, one row per
(statement, code) with the reason. Rule: a statement counts whatever its likelihood (PTB-XL gives rhythm and form
statements likelihood 0, and the Challenge organisers' per-class PTB-XL counts are the counts of the keys). The
evidence (prevalence test on the mirror, Challenge copies) is in ``aux_data/README.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import pandas as pd

#: The file of the PTB-XL -> scored SNOMED correspondence table in ``ecgmodel/aux_data``.
SNOMED_TABLE = "ptbxl_to_snomed_scored.csv"
#: PTB-XL's metadata file (``ecg_id``, ``scp_codes``, ``heart_axis``, ...) at the root of a PTB-XL copy.
DATABASE_CSV = "ptbxl_database.csv"

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


# ------------------------------------------------------------------------------ Challenge 2020 scored SNOMED codes
@lru_cache(maxsize=1)
def snomed_table() -> pd.DataFrame:
    """The embedded correspondence: ptbxl_field (scp_codes | heart_axis), ptbxl_value, ptbxl_description,
    snomed_code, abbreviation, reason; one row per (PTB-XL statement, scored code)."""
    from ecgmodel.data.labels import aux_path

    return pd.read_csv(aux_path(SNOMED_TABLE), dtype=str, keep_default_na=False)


@lru_cache(maxsize=1)
def _snomed_lookup() -> dict[tuple[str, str], tuple[str, ...]]:
    out: dict[tuple[str, str], list[str]] = {}
    for row in snomed_table().itertuples(index=False):
        out.setdefault((row.ptbxl_field, row.ptbxl_value), []).append(row.snomed_code)
    return {k: tuple(v) for k, v in out.items()}


def snomed_codes(scp_codes: Iterable[str], heart_axis: str | None = None) -> list[str]:
    """The scored SNOMED codes of one PTB-XL record (``scp_codes`` keys, any likelihood; ``heart_axis`` value or
    None), in the order of the table, each once."""
    lookup = _snomed_lookup()
    found: list[str] = []
    keys = [("scp_codes", str(c).strip()) for c in scp_codes]
    if heart_axis is not None and str(heart_axis).strip() not in ("", "nan"):
        keys.append(("heart_axis", str(heart_axis).strip()))
    for key in keys:
        found.extend(lookup.get(key, ()))
    return list(dict.fromkeys(found))


def ecg_id(record: str) -> int | None:
    """PTB-XL's ``ecg_id`` of a record name: ``00599_hr`` / ``00599_lr`` / ``HR00599`` -> 599 (None if not one)."""
    text = str(record).strip()
    if text[:2] == "HR" and text[2:].isdigit():
        return int(text[2:])
    head = text.split("_", 1)[0]
    return int(head) if head.isdigit() else None


@lru_cache(maxsize=8)
def heart_axes(location: str) -> dict[int, str]:
    """``{ecg_id: heart_axis}`` of every row of a ``ptbxl_database.csv`` (path, file:// or http(s) URL), ``""``
    where PTB-XL gives no axis. Raises ValueError naming the location when it cannot be read."""
    try:
        db = pd.read_csv(location.removeprefix("file://"), usecols=["ecg_id", "heart_axis"], dtype=str,
                         keep_default_na=False)  # fmt: skip
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read PTB-XL metadata {location!r} (rule: a {DATABASE_CSV} with ecg_id and "
                         f"heart_axis columns): {e}") from e  # fmt: skip
    return {int(float(i)): a.strip() for i, a in zip(db["ecg_id"], db["heart_axis"], strict=True)}


def metadata_locations(store_sources: dict, explicit: str | None = None) -> list[str]:
    """Where a store's PTB-XL ``ptbxl_database.csv`` may be: ``explicit`` first (e.g. the split settings'
    ``ptbxl_metadata``), then beside the ``base_url`` the store's ``ptb-xl`` source was ingested from."""
    out = [explicit] if explicit else []
    base = str((store_sources or {}).get("ptb-xl", {}).get("base_url", "") or "")
    if base:
        out.append(base.rstrip("/") + "/" + DATABASE_CSV)
    return out


def load_heart_axes(locations: Iterable[str]) -> tuple[dict[int, str], str]:
    """The first readable location's ``{ecg_id: heart_axis}`` and that location; ValueError naming every location
    tried when none can be read."""
    tried: list[str] = []
    for loc in locations:
        try:
            return heart_axes(loc), loc
        except ValueError as e:
            tried.append(str(e))
    raise ValueError("; ".join(tried) or "no location of PTB-XL's ptbxl_database.csv is known")
