"""Adapter for the Zheng et al. 2020 idiopathic ventricular-arrhythmia database -> an ecgssl store.

Zheng J, Fu G, Abudayyeh I, et al. "A 12-lead ECG database to identify origins of idiopathic ventricular
arrhythmia containing 334 patients". Scientific Data 7, 98 (2020). Figshare, CC BY 4.0 (cite it when you use it).
Not redistributable here and not downloadable offline; point ``root`` at the unpacked figshare folder:

* ``PVCVTRawECGData/<HospitalID>.csv`` - one file per patient, 12 columns in ALPHABETICAL lead order
  (aVF, aVL, aVR, I, II, III, V1..V6), sampled at 2000 Hz, integer counts without units. A header row with lead
  names is used when present (leads are matched by name); otherwise the alphabetical order above is assumed.
* ``Diagnosis.xlsx`` - one row per patient: HospitalID, Type (PVC/VT), LeftRight (outflow tract side),
  Sublocation (origin site), Gender. Gender is never read into the store or used as an input.

Amplitude scale: the files carry no unit. The default ``uv_per_count`` is ``1000 / 16384`` (16,384 counts per
mV, :data:`DEFAULT_UV_PER_COUNT`), an ESTIMATE from published measurements of the real release (a public
dataset catalogue that recomputed them from the shipped ``Diagnosis.xlsx`` and the 334 CSVs): lead-II R-peak
amplitudes compared sex-matched with a database declared in millivolts give about 16,384 counts per mV
(+-20 %); with it the largest sample of the release is ~9.45 mV, inside the int16 microvolt range. Reading
counts as microvolts (1 uV per count) would saturate every real QRS. The value and its provenance are recorded
in the store's ``sources`` attribute, and a store refuses to mix two scales for this source; set it when you
know the acquisition gain (it only rescales amplitudes; the encoder standardises every lead anyway).

Other facts of the real release the adapter is tested against (on generated files that carry them): records
run 2.9-59.3 s (short ones are kept as one zero-padded window); 40 ``Sublocation`` cells are blank (the paper
files 39 of them as "RVOTOther" and one as "NA"): a blank, "NA" or "nan" sub-site is UNKNOWN (no ``site``
key in ``dx``, so no class of its own), never guessed; ``Type`` reads 329 PVC / 5 VT (the paper says 325 / 9):
stored as the file says; ``Gender`` separates RVOT from LVOT better than chance, which is one more reason it is
never stored; the denoised folder (``PVCVTECGDenoisedData``) is not sample-aligned with the raw one and is
never read.

Store rows: ``source="zheng-2020"``, ``record=<HospitalID>``, ``patient_id=<HospitalID>`` (one record per
patient), ``dx="side=<LeftRight>,site=<Sublocation>,type=<Type>"``, ``dx_systems["zheng-2020"]="va-origin"``.
Targets (``ecgmodel.data.labels``): ``va_side`` (left/right outflow tract) and ``va_site`` (sub-location; sites
with fewer than ``FinetuneConfig.min_class_records`` patients merged into "other").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ecgmodel.data.labels import VA_ORIGIN_SYSTEM
from ecgmodel.data.site_labels import _clean, write_labelled_records

#: column order of the raw CSVs (alphabetical lead names)
ZHENG_LEADS = ("aVF", "aVL", "aVR", "I", "II", "III", "V1", "V2", "V3", "V4", "V5", "V6")
DIAGNOSIS_COLUMNS = ("HospitalID", "Type", "LeftRight", "Sublocation")
CITATION = "Zheng et al., Scientific Data 7, 98 (2020); figshare, CC BY 4.0"
#: 16,384 counts per mV (estimated +-20 %, see the module docstring), in microvolts per count
DEFAULT_UV_PER_COUNT = 1000.0 / 16384.0
UV_PER_COUNT_PROVENANCE = (
    "estimate: ~16,384 counts/mV (+-20 %) from lead-II R-peak amplitudes compared sex-matched with a mV-declared "
    "database, recomputed from the released files by a public dataset catalogue; largest sample ~9.45 mV"
)
#: sub-location cells that mean "not known" (blank cells arrive as NaN)
UNKNOWN_SITES = frozenset({"", "na", "n/a", "nan", "none", "unknown"})


class ZhengConfig(BaseModel):
    """Where the Zheng 2020 files are and how they are converted."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="Folder with Diagnosis.xlsx and PVCVTRawECGData/.")
    data_dir: str = Field("PVCVTRawECGData", description="Sub-folder of the per-patient CSV files.")
    diagnosis_file: str = Field("Diagnosis.xlsx", description="Label table (HospitalID, Type, LeftRight, Sublocation).")
    fs_in: float = Field(2000.0, gt=0, description="Sampling rate of the CSV files, Hz.")
    uv_per_count: float = Field(
        DEFAULT_UV_PER_COUNT, gt=0,
        description="Amplitude scale of the unitless integer counts, microvolts per count (default 1000/16384: "
        "the published estimate of 16,384 counts per mV, see the module docstring).",
    )
    source: str = Field("zheng-2020", description="Source slug written to the store.")
    version: str = Field("1", description="Version recorded in the store's sources attribute.")
    fs: int = Field(500, gt=0, description="Store sampling rate (must match an existing store).")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds (must match an existing store).")
    max_windows: int | None = Field(None, ge=1, description="At most this many windows per record.")
    commit_every: int = Field(50, ge=1, description="Records per commit (what a crash can cost).")


def read_diagnosis(path: str | Path) -> pd.DataFrame:
    """The label table with the columns the adapter uses (Gender is dropped on read). Raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Zheng 2020 label table not found")
    table = pd.read_excel(path, dtype=str, engine="openpyxl")
    by_lower = {str(c).strip().lower(): c for c in table.columns}
    missing = [c for c in DIAGNOSIS_COLUMNS if c.lower() not in by_lower]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (expected {list(DIAGNOSIS_COLUMNS)})")
    table = table[[by_lower[c.lower()] for c in DIAGNOSIS_COLUMNS]]
    table.columns = list(DIAGNOSIS_COLUMNS)
    table["HospitalID"] = table["HospitalID"].astype(str).str.strip()
    table = table[table["HospitalID"].ne("") & table["HospitalID"].ne("nan")]
    dup = table["HospitalID"][table["HospitalID"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: HospitalID listed twice: {dup[:5]} (rule: one row per patient)")
    return table.reset_index(drop=True)


def site_label(value: object) -> str:
    """The sub-location as stored, or ``""`` when the cell says nothing (blank, NA): unknown, not a class."""
    text = _clean(value)
    return "" if text.lower() in UNKNOWN_SITES else text


def dx_text(side: object, site: object, typ: object) -> str:
    """``side=<LeftRight>,site=<Sublocation>,type=<Type>``; an unknown part is left out."""
    parts = {"side": _clean(side), "site": site_label(site), "type": _clean(typ)}
    return ",".join(f"{k}={v}" for k, v in parts.items() if v and v.lower() not in UNKNOWN_SITES)


def read_patient_csv(path: str | Path, uv_per_count: float = DEFAULT_UV_PER_COUNT) -> tuple[np.ndarray, list[str]]:
    """One patient's CSV -> (signal (12, T) in mV, lead names). Raises naming the file and the rule broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file rule: {path} not found")
    first = path.read_text(errors="replace").splitlines()[:1]
    has_header = bool(first) and any(c.strip().lower() in {n.lower() for n in ZHENG_LEADS} for c in first[0].split(","))
    frame = pd.read_csv(path, header=0 if has_header else None)
    if frame.shape[1] != len(ZHENG_LEADS):
        raise ValueError(f"column rule: {path.name} has {frame.shape[1]} columns, expected 12 leads")
    names = [str(c).strip() for c in frame.columns] if has_header else list(ZHENG_LEADS)
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & frame.notna().to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"value rule: {path.name} row {row + 1} column {names[col]} is not a number")
    if len(values) == 0:
        raise ValueError(f"length rule: {path.name} has no samples")
    return values.T * (uv_per_count / 1000.0), names


def ingest_zheng(cfg: ZhengConfig, store_path: str | Path) -> dict:
    """Ingest the Zheng 2020 database at ``cfg.root`` into the store at ``store_path`` (created if needed).

    Patients without a CSV, CSVs without a label row, and unreadable files are quarantined (reason names the
    record and the rule); the others are written. Re-runs skip committed patients.
    """
    root = Path(cfg.root)
    table = read_diagnosis(root / cfg.diagnosis_file)
    data_dir = root / cfg.data_dir
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: folder of per-patient CSV files not found")
    labelled = set(table["HospitalID"])
    orphans = sorted(p.stem for p in data_dir.glob("*.csv") if p.stem not in labelled)

    def items():
        for row in table.itertuples(index=False):
            hid = row.HospitalID
            dx = dx_text(row.LeftRight, row.Sublocation, row.Type)

            def read(hid=hid):
                sig, names = read_patient_csv(data_dir / f"{hid}.csv", cfg.uv_per_count)
                return sig, names, cfg.fs_in

            csv = data_dir / f"{hid}.csv"
            yield hid, read, {"dx": dx, "patient_id": hid, "database": cfg.source,
                              "record_path": f"{cfg.data_dir}/{hid}.csv", "raw_files": [csv] if csv.is_file() else []}
        for hid in orphans:

            def no_label(hid=hid):
                raise ValueError(f"label rule: {hid}.csv has no row in {cfg.diagnosis_file}")

            yield hid, no_label, {}

    result = write_labelled_records(
        store_path, items(), source=cfg.source, version=cfg.version, dx_system=VA_ORIGIN_SYSTEM, fs=cfg.fs,
        window_s=cfg.window_s, max_windows=cfg.max_windows, commit_every=cfg.commit_every,
        source_info={"base_url": str(root.resolve()), "citation": CITATION, "licence": "CC BY 4.0",
                     "fs_in": cfg.fs_in, "uv_per_count_assumed": cfg.uv_per_count,
                     "uv_per_count_provenance": UV_PER_COUNT_PROVENANCE if cfg.uv_per_count == DEFAULT_UV_PER_COUNT
                     else "set by the user"},
        settings={"uv_per_count": cfg.uv_per_count, "fs_in": cfg.fs_in},
        total=len(table) + len(orphans),
    )  # fmt: skip
    return result
