"""Label definitions of the downstream tasks.

* **arrhythmia27** - the 27 SNOMED CT codes scored by the PhysioNet/CinC Challenge 2020, in the order of the
  official ``dx_mapping_scored.csv`` (embedded in ``ecgmodel/aux_data`` with its licence and provenance). Columns
  of every arrhythmia27 model, threshold vector and metric follow that order. Challenge records carry the codes;
  PTB-XL records get them from their statements and heart axis (``ecgmodel.data.ptbxl.snomed_codes``).
* **localization** - one class per record, from whichever labelling the store's source carries:

  - ``mi_location``: PTB-XL myocardial infarction location from ``scp_codes`` keys (the public stand-in);
  - ``va_site`` / ``va_side``: Zheng et al. 2020 idiopathic VA origin (sub-location / left-right outflow tract);
  - ``site``: a private site-labelled database (``labels.csv`` with ``record,site``).

The store keeps labels exactly as the source gives them (``dx`` column, see ``docs/store.md``); this module turns
them into targets and documents each class in a *label definition table* that is logged with every model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

AUX_PACKAGE = "ecgmodel"
AUX_DIR = "aux_data"
CHALLENGE_SOURCE = "physionetchallenges/evaluation-2020 (BSD-2-Clause)"

#: Codes scored as one class by the official scorer; the first code of each pair represents it.
EQUIVALENT_CLASSES: tuple[tuple[str, str], ...] = (
    ("713427006", "59118001"),
    ("284470004", "63593006"),
    ("427172004", "17338001"),
)
#: Sinus rhythm: the "inactive" reference prediction of the Challenge metric.
NORMAL_CLASS = "426783006"

#: PTB-XL scp_codes keys of each myocardial infarction location (stand-in localization task).
MI_LOCATIONS: dict[str, tuple[str, ...]] = {
    "inferior": ("IMI", "ILMI", "IPMI", "IPLMI"),
    "anterior": ("ASMI", "AMI", "ALMI"),
    "lateral": ("LMI",),
    "posterior": ("PMI",),
}

#: ``dx_systems`` values (store attribute) and the label systems they hold.
SNOMED_SYSTEM = "snomed-ct"
PTBXL_SYSTEM = "ptbxl-scp"
VA_ORIGIN_SYSTEM = "va-origin"  # Zheng 2020 adapter: "side=<LeftRight>,site=<Sublocation>,type=<Type>"
SITE_SYSTEM = "site-label"  # private adapter: "site=<site>"

LOCALIZATION_TARGETS = ("auto", "mi_location", "va_site", "va_side", "site")


def aux_path(name: str) -> Path:
    """Path of an embedded official table (``dx_mapping_scored.csv``, ``weights.csv``, ...)."""
    path = Path(str(resources.files(AUX_PACKAGE).joinpath(AUX_DIR, name)))
    if not path.is_file():
        raise FileNotFoundError(f"embedded table {name!r} missing from {path.parent} (broken installation)")
    return path


@lru_cache(maxsize=1)
def _scored_mapping() -> pd.DataFrame:
    return pd.read_csv(aux_path("dx_mapping_scored.csv"), dtype={"SNOMED CT Code": str})


def scored_codes() -> list[str]:
    """The 27 scored SNOMED CT codes in official scoring order."""
    return _scored_mapping()["SNOMED CT Code"].astype(str).tolist()


def merged_scored_codes() -> list[str]:
    """The 24 classes arrhythmia27 trains on: the scored codes in official order, each equivalent pair
    (RBBB/CRBBB, PAC/SVPB, PVC/VPB) as one output named by its representative code. Training the pairs as
    separate outputs would teach each source's coding convention instead of the finding."""
    return [c for c in scored_codes() if representative(c) == c]


def representative(code: str) -> str:
    """The code that represents ``code``'s equivalence group (``code`` itself when it has none)."""
    for group in EQUIVALENT_CLASSES:
        if code in group:
            return group[0]
    return code


def label_definition_table(merged: bool = False) -> pd.DataFrame:
    """index, code, abbreviation, name, equivalence_group, source: one row per arrhythmia27 output column
    (``merged``: the 24 outputs of :func:`merged_scored_codes`, abbreviations of a pair joined by '/')."""
    df = _scored_mapping()
    if merged:
        df = df.copy()
        df["SNOMED CT Code"] = df["SNOMED CT Code"].astype(str)
        abbr = df.groupby(df["SNOMED CT Code"].map(representative))["Abbreviation"].agg("/".join)
        df = df[df["SNOMED CT Code"].map(representative) == df["SNOMED CT Code"]].reset_index(drop=True)
        df["Abbreviation"] = df["SNOMED CT Code"].map(abbr)
    return pd.DataFrame(
        {
            "index": np.arange(len(df)),
            "code": df["SNOMED CT Code"].astype(str),
            "abbreviation": df["Abbreviation"],
            "name": df["Dx"],
            "equivalence_group": [
                "=".join(g) if (g := next((g for g in EQUIVALENT_CLASSES if c in g), None)) else ""
                for c in df["SNOMED CT Code"].astype(str)
            ],
            "source": CHALLENGE_SOURCE,
        }
    )


def localization_definition_table(classes: Sequence[str], target: str, rule: str = "") -> pd.DataFrame:
    """The label definition table of a localization model (index, code, abbreviation, name, group, source)."""
    sources = {
        "mi_location": "PTB-XL scp_codes",
        "va_site": "Zheng et al. 2020 Diagnosis.xlsx Sublocation",
        "va_side": "Zheng et al. 2020 Diagnosis.xlsx LeftRight",
        "site": "labels.csv site",
    }
    groups = {name: "+".join(keys) for name, keys in MI_LOCATIONS.items()} if target == "mi_location" else {}
    return pd.DataFrame(
        {
            "index": np.arange(len(classes)),
            "code": list(classes),
            "abbreviation": list(classes),
            "name": list(classes),
            "equivalence_group": [groups.get(c, rule if c == "other" else "") for c in classes],
            "source": sources.get(target, target),
        }
    )


def split_dx(dx: str) -> list[str]:
    """``"164889003, 59118001"`` -> ``["164889003", "59118001"]`` (empty entries dropped)."""
    return [c.strip() for c in str(dx).split(",") if c.strip()]


def encode_snomed(dx: Iterable[str], classes: Sequence[str] | None = None) -> np.ndarray:
    """Multi-hot bool (n, len(classes)) of the scored codes present in each ``dx`` string.

    A code sets its own column when ``classes`` has one, else the column of its equivalence representative
    (so with :func:`merged_scored_codes` RBBB and CRBBB set the same output). Codes outside ``classes``
    (unscored diagnoses) are ignored, so a labelled record may have an all-zero row.
    """
    classes = list(classes or scored_codes())
    index = {c: i for i, c in enumerate(classes)}
    dx = list(dx)
    out = np.zeros((len(dx), len(classes)), dtype=bool)
    for i, text in enumerate(dx):
        for code in split_dx(text):
            j = index.get(code, index.get(representative(code)))
            if j is not None:
                out[i, j] = True
    return out


def mi_location(dx: str) -> str | None:
    """The MI location of a PTB-XL record (``dx`` = scp_codes keys), None unless exactly one location matches."""
    codes = set(split_dx(dx))
    found = [name for name, keys in MI_LOCATIONS.items() if codes.intersection(keys)]
    return found[0] if len(found) == 1 else None


def parse_keyed_dx(dx: str) -> dict[str, str]:
    """``"side=Left,site=LVOT"`` -> ``{"side": "Left", "site": "LVOT"}`` (the adapters' dx format)."""
    out: dict[str, str] = {}
    for item in split_dx(dx):
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def merge_rare(labels: pd.Series, min_count: int, other: str = "other") -> tuple[pd.Series, str]:
    """Replace classes with fewer than ``min_count`` records by ``other``; returns (labels, rule text).

    Rule (documented on every localization model): a class keeps its name when at least ``min_count`` records
    (= patients in Zheng 2020, one record per patient) carry it, counted on the whole labelled set before splitting.
    """
    counts = labels.value_counts()
    rare = sorted(counts[counts < min_count].index)
    rule = f"classes with < {min_count} records merged into '{other}': {', '.join(map(str, rare)) or 'none'}"
    return labels.where(~labels.isin(rare), other), rule


def localization_target_of(dx_systems: dict[str, str], sources: Iterable[str], target: str = "auto") -> str:
    """Resolve ``target='auto'`` from the store's ``dx_systems`` of the sources present."""
    if target != "auto":
        if target not in LOCALIZATION_TARGETS:
            raise ValueError(f"unknown localization target {target!r}; expected one of {LOCALIZATION_TARGETS}")
        return target
    systems = {dx_systems.get(s, "") for s in sources}
    if VA_ORIGIN_SYSTEM in systems:
        return "va_site"
    if SITE_SYSTEM in systems:
        return "site"
    if PTBXL_SYSTEM in systems:
        return "mi_location"
    raise ValueError(
        f"no localization labels in this store: dx_systems {dx_systems} has none of "
        f"{VA_ORIGIN_SYSTEM!r}, {SITE_SYSTEM!r}, {PTBXL_SYSTEM!r}"
    )


def localization_label(dx: str, system: str, target: str) -> str | None:
    """The class name of one record for a localization ``target`` (None when the record has no such label)."""
    if target == "mi_location":
        return mi_location(dx) if system == PTBXL_SYSTEM else None
    keyed = parse_keyed_dx(dx)
    if target == "va_site" and system == VA_ORIGIN_SYSTEM:
        return keyed.get("site") or None
    if target == "va_side" and system == VA_ORIGIN_SYSTEM:
        return keyed.get("side") or None
    if target == "site" and system in (SITE_SYSTEM, VA_ORIGIN_SYSTEM):
        return keyed.get("site") or None
    return None
