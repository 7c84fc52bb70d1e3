"""The versioned catalog of ECG databases ecgssl can ingest.

Each :class:`Source` pins one PhysioNet project version and says everything the downloader and the reader need to
know about it without opening a file: where it lives (``<mirror>/<slug>/<version>/``), its licence and citation,
how its folders are laid out, where the labels are and which code system they use, the sampling rate of each
sub-database, which metadata files to fetch, and which ``RECORDS`` entries to ingest.

    >>> src = get_source("ptb-xl")
    >>> src.record_paths(["records100/00000/00001_lr", "records500/00000/00001_hr"])
    ['records500/00000/00001_hr']
    >>> src.database_of("records500/00000/00001_hr"), src.expected_fs("records500/00000/00001_hr")
    ('ptb-xl', 500)
    >>> get_source("challenge-2020").database_of("training/georgia/g1/E00009")
    'georgia'

A source is immutable; choose other record groups with :meth:`Source.select` (e.g. PTB-XL at 100 Hz:
``get_source("ptb-xl").select("records100")``).

``checksums_sha256`` pins the sha256 of a version's published ``SHA256SUMS.txt``: the downloader then refuses a
mirror serving any other listing. The catalog leaves it unset for now: the pinned digest must be taken from
PhysioNet's own file, and partial mirrors (such as the offline test mirror) carry listings of their subset.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Layout = Literal["challenge", "ptbxl", "ludb"]
DxSystem = Literal["snomed-ct", "ptbxl-scp", "ludb-diagnosis"]

DEFAULT_MIRROR = "https://physionet.org/files/"


class UnknownSourceError(KeyError):
    """Raised by :func:`get_source` for a slug that is not in the catalog."""

    def __str__(self) -> str:  # KeyError would print the message repr()-quoted
        return str(self.args[0])


class RecordPathError(ValueError):
    """A RECORDS entry that does not fit the layout of its source (unknown sub-database, wrong folder)."""


class LabelLocation(BaseModel):
    """Where a record's diagnostic labels are stored."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["header-comment", "csv"] = Field(
        description="'header-comment': a comment line of the record's WFDB header; "
        "'csv': a row of a metadata CSV file of the source."
    )
    header_key: str | None = Field(
        None,
        description="For header comments: the comment key (e.g. 'Dx' for a line '#Dx: 164889003,59118001'). "
        "Readers must accept an optional space after '#' ('#Dx:' and '# Dx:' both occur).",
    )
    header_prefix: str | None = Field(
        None, description="For header comments: the prefix as the source's documentation writes it."
    )
    file: str | None = Field(
        None, description="For CSV labels: the metadata file, relative to the source root."
    )
    id_column: str | None = Field(
        None, description="For CSV labels: the column that identifies the record (e.g. 'ecg_id', 'ID')."
    )
    columns: tuple[str, ...] = Field(
        (), description="For CSV labels: the column(s) holding the diagnoses."
    )
    separator: str = Field(
        ",", description="Separator between several codes in one header comment (header-comment only)."
    )


class Database(BaseModel):
    """One sub-database of a source (a folder of the Challenge training set, or the source itself)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Name as it appears in record paths / the store's `database` column.")
    fs: int = Field(gt=0, description="Expected sampling rate of its records, Hz.")
    description: str = Field("", description="Where the recordings come from.")


class Source(BaseModel):
    """A pinned version of one PhysioNet ECG database and everything needed to download and read it."""

    model_config = ConfigDict(frozen=True)

    slug: str = Field(description="PhysioNet project slug, e.g. 'ptb-xl'; also the store's `source` value.")
    version: str = Field(description="Pinned project version, e.g. '1.0.3'.")
    title: str = Field(description="Full title of the database.")
    licence: str = Field(description="Licence of the data (SPDX-like short name).")
    licence_url: str = Field(description="Where the licence text lives.")
    citation: str = Field(description="The reference PhysioNet asks users of the data to cite.")
    doi: str = Field(description="DOI of the PhysioNet project version.")
    layout: Layout = Field(
        description="Folder layout: 'challenge' (training/<database>/<group>/<record>, header + MATLAB v4 .mat), "
        "'ptbxl' (records100|records500/<block>/<record>, WFDB format 16), 'ludb' (data/<n>, WFDB + annotations)."
    )
    labels: LabelLocation = Field(description="Where each record's diagnoses are stored.")
    dx_system: DxSystem = Field(description="Code system of the diagnoses (the store's `dx_systems` entry).")
    databases: tuple[Database, ...] = Field(description="Sub-databases with their expected sampling rates.")
    metadata_files: tuple[str, ...] = Field(
        (), description="Files besides the records that ingest needs (label and metadata tables), relative to the "
        "root. Licence texts are not fetched: the licence is recorded in `licence` / `licence_url`."
    )
    record_groups: tuple[str, ...] = Field(
        description="Groups a record can belong to: the first path component that selects records "
        "(challenge: the database folder under training/; ptb-xl: records100 / records500; ludb: data)."
    )
    selected_groups: tuple[str, ...] = Field(
        description="Groups ingested by default; change with :meth:`select`."
    )
    checksums_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the version's published SHA256SUMS.txt: a mirror serving another listing is "
        "refused. None: not pinned (mirrors that hold a subset of a version have their own listing).",
    )

    @model_validator(mode="after")
    def _check(self) -> Source:
        unknown = set(self.selected_groups) - set(self.record_groups)
        if unknown:
            raise ValueError(
                f"source {self.slug!r}: selected groups {sorted(unknown)} are not among {list(self.record_groups)}"
            )
        if not self.selected_groups:
            raise ValueError(f"source {self.slug!r}: at least one record group must be selected")
        return self

    # ------------------------------------------------------------------ locations
    @property
    def url_path(self) -> str:
        """``<slug>/<version>/``: the source's folder below a PhysioNet-style mirror."""
        return f"{self.slug}/{self.version}/"

    def base_url(self, mirror: str = DEFAULT_MIRROR) -> str:
        """``<mirror>/<slug>/<version>/`` with exactly one slash between the parts."""
        return mirror.rstrip("/") + "/" + self.url_path

    @property
    def database_names(self) -> tuple[str, ...]:
        return tuple(db.name for db in self.databases)

    def select(self, *groups: str) -> Source:
        """A copy of this source that ingests ``groups`` (e.g. ``select("records100")`` for PTB-XL at 100 Hz)."""
        if not groups:
            raise ValueError(f"source {self.slug!r}: select() needs at least one of {list(self.record_groups)}")
        bad = [g for g in groups if g not in self.record_groups]
        if bad:
            raise ValueError(
                f"source {self.slug!r}: unknown record group(s) {bad}; known: {list(self.record_groups)}"
            )
        return self.model_copy(update={"selected_groups": tuple(dict.fromkeys(groups))})

    # ------------------------------------------------------------------ record paths
    def group_of(self, record_path: str) -> str:
        """The record group of ``record_path`` (see :attr:`record_groups`); raises :class:`RecordPathError`."""
        parts = record_path.strip().split("/")
        if self.layout == "challenge":
            # training/<database>/<g1..gN>/<record>
            if len(parts) < 3 or parts[0] != "training":
                raise RecordPathError(
                    f"{self.slug}: record path {record_path!r} does not look like "
                    "'training/<database>/.../<record>'"
                )
            group = parts[1]
        else:
            if len(parts) < 2:
                raise RecordPathError(
                    f"{self.slug}: record path {record_path!r} has no folder; expected one of "
                    f"{list(self.record_groups)} as its first component"
                )
            group = parts[0]
        if group not in self.record_groups:
            raise RecordPathError(
                f"{self.slug}: record path {record_path!r} is in unknown group {group!r}; "
                f"known: {list(self.record_groups)} (catalog version {self.version})"
            )
        return group

    def database_of(self, record_path: str) -> str:
        """The sub-database a record belongs to (the store's `database` column)."""
        group = self.group_of(record_path)
        if self.layout == "challenge":
            return group
        return self.databases[0].name

    def database(self, name: str) -> Database:
        for db in self.databases:
            if db.name == name:
                return db
        raise KeyError(f"{self.slug}: unknown database {name!r}; known: {list(self.database_names)}")

    def expected_fs(self, record_path: str) -> int:
        """Sampling rate (Hz) the header of ``record_path`` should declare."""
        group = self.group_of(record_path)
        if self.layout == "ptbxl":
            return PTBXL_GROUP_FS[group]
        return self.database(self.database_of(record_path)).fs

    @staticmethod
    def record_name(record_path: str) -> str:
        """The record name without folders (the store's `record` column): ``training/ptb/g1/S0001`` -> ``S0001``."""
        return record_path.strip().rsplit("/", 1)[-1]

    def record_paths(self, records_lines: Iterable[str] | str) -> list[str]:
        """The entries of a RECORDS file that this source ingests, in file order, without duplicates.

        ``records_lines`` is the file's text or its lines. Blank lines and ``#`` comments are ignored; an entry
        that does not fit the layout raises :class:`RecordPathError` naming it (the catalog may be out of date).
        Path safety (``..``, absolute paths) is checked by the downloader, which refuses such entries.
        """
        if isinstance(records_lines, str):
            records_lines = records_lines.splitlines()
        selected = set(self.selected_groups)
        out: dict[str, None] = {}
        for raw in records_lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            line = line.rstrip("/")
            if self.group_of(line) in selected:
                out[line] = None
        return list(out)


# PTB-XL ships every record twice: 100 Hz (records100/, '_lr') and 500 Hz (records500/, '_hr').
PTBXL_GROUP_FS = {"records100": 100, "records500": 500}

_CC_BY_4 = ("CC-BY-4.0", "https://creativecommons.org/licenses/by/4.0/")

_CHALLENGE_2020_DATABASES = (
    Database(name="cpsc_2018", fs=500, description="China Physiological Signal Challenge 2018 (CPSC)"),
    Database(name="cpsc_2018_extra", fs=500, description="CPSC 2018 unused data (CPSC2)"),
    Database(name="st_petersburg_incart", fs=257, description="St Petersburg INCART 12-lead Arrhythmia Database"),
    Database(name="ptb", fs=1000, description="PTB Diagnostic ECG Database"),
    Database(name="ptb-xl", fs=500, description="PTB-XL electrocardiography database"),
    Database(name="georgia", fs=500, description="Georgia 12-lead ECG Challenge Database (Emory University)"),
)

_CHALLENGE_2021_DATABASES = _CHALLENGE_2020_DATABASES + (
    Database(name="chapman_shaoxing", fs=500, description="Chapman University / Shaoxing People's Hospital"),
    Database(name="ningbo", fs=500, description="Ningbo First Hospital"),
)

_PHYSIONET_CITATION = (
    "Goldberger AL, Amaral LAN, Glass L, Hausdorff JM, Ivanov PCh, Mark RG, Mietus JE, Moody GB, Peng C-K, "
    "Stanley HE. PhysioBank, PhysioToolkit, and PhysioNet: Components of a new research resource for complex "
    "physiologic signals. Circulation 101(23):e215-e220 (2000)."
)

SOURCES: dict[str, Source] = {
    s.slug: s
    for s in (
        Source(
            slug="challenge-2020",
            version="1.0.2",
            title="Classification of 12-lead ECGs: The PhysioNet/Computing in Cardiology Challenge 2020",
            licence=_CC_BY_4[0],
            licence_url=_CC_BY_4[1],
            citation=(
                "Perez Alday EA, Gu A, Shah AJ, Robichaux C, Wong AI, Liu C, Liu F, Rad AB, Elola A, Seyedi S, "
                "Li Q, Sharma A, Clifford GD, Reyna MA. Classification of 12-lead ECGs: the PhysioNet/Computing "
                "in Cardiology Challenge 2020. Physiol Meas. 2020;41(12):124003. "
                "doi:10.1088/1361-6579/abc960. " + _PHYSIONET_CITATION
            ),
            doi="10.13026/dvyd-kd57",
            layout="challenge",
            labels=LabelLocation(kind="header-comment", header_key="Dx", header_prefix="#Dx:"),
            dx_system="snomed-ct",
            databases=_CHALLENGE_2020_DATABASES,
            metadata_files=(),
            record_groups=tuple(db.name for db in _CHALLENGE_2020_DATABASES),
            selected_groups=tuple(db.name for db in _CHALLENGE_2020_DATABASES),
        ),
        Source(
            slug="challenge-2021",
            version="1.0.3",
            title="Will Two Do? Varying Dimensions in Electrocardiography: "
            "The PhysioNet/Computing in Cardiology Challenge 2021",
            licence=_CC_BY_4[0],
            licence_url=_CC_BY_4[1],
            citation=(
                "Reyna MA, Sadr N, Perez Alday EA, Gu A, Shah AJ, Robichaux C, Rad AB, Elola A, Seyedi S, "
                "Ansari S, Ghanbari H, Li Q, Sharma A, Clifford GD. Will Two Do? Varying Dimensions in "
                "Electrocardiography: The PhysioNet/Computing in Cardiology Challenge 2021. Computing in "
                "Cardiology 2021;48:1-4. doi:10.23919/CinC53138.2021.9662687. " + _PHYSIONET_CITATION
            ),
            doi="10.13026/34va-7q14",
            layout="challenge",
            labels=LabelLocation(kind="header-comment", header_key="Dx", header_prefix="# Dx:"),
            dx_system="snomed-ct",
            databases=_CHALLENGE_2021_DATABASES,
            metadata_files=(),
            record_groups=tuple(db.name for db in _CHALLENGE_2021_DATABASES),
            selected_groups=tuple(db.name for db in _CHALLENGE_2021_DATABASES),
        ),
        Source(
            slug="ptb-xl",
            version="1.0.3",
            title="PTB-XL, a large publicly available electrocardiography dataset",
            licence=_CC_BY_4[0],
            licence_url=_CC_BY_4[1],
            citation=(
                "Wagner P, Strodthoff N, Bousseljot RD, Kreiseler D, Lunze FI, Samek W, Schaeffter T. PTB-XL, a "
                "large publicly available electrocardiography dataset. Scientific Data. 2020;7:154. "
                "doi:10.1038/s41597-020-0495-6. " + _PHYSIONET_CITATION
            ),
            doi="10.13026/kfzx-aw45",
            layout="ptbxl",
            labels=LabelLocation(
                kind="csv", file="ptbxl_database.csv", id_column="ecg_id", columns=("scp_codes",)
            ),
            dx_system="ptbxl-scp",
            databases=(Database(name="ptb-xl", fs=500, description="PTB-XL (500 Hz; 100 Hz in records100/)"),),
            # patient_id, age, sex, strat_fold and filename_lr/_hr are columns of ptbxl_database.csv.
            metadata_files=("ptbxl_database.csv", "scp_statements.csv"),
            record_groups=("records100", "records500"),
            selected_groups=("records500",),
        ),
        Source(
            slug="ludb",
            version="1.0.1",
            title="Lobachevsky University Electrocardiography Database",
            licence="ODC-By-1.0",
            licence_url="https://opendatacommons.org/licenses/by/1-0/",
            citation=(
                "Kalyakulina AI, Yusipov II, Moskalenko VA, Nikolskiy AV, Kosonogov KA, Osipov GV, Zolotykh NY, "
                "Ivanchenko MV. LUDB: A New Open-Access Validation Tool for Electrocardiogram Delineation "
                "Algorithms. IEEE Access. 2020;8:186181-186190. doi:10.1109/ACCESS.2020.3029211. "
                + _PHYSIONET_CITATION
            ),
            doi="10.13026/eegm-h675",
            layout="ludb",
            # One row per record (ID = record number); diagnoses spread over several free-text columns.
            labels=LabelLocation(
                kind="csv",
                file="ludb.csv",
                id_column="ID",
                columns=(
                    "Rhythms",
                    "Electric axis of the heart",
                    "Conduction abnormalities",
                    "Extrasystolies",
                    "Hypertrophies",
                    "Cardiac pacing",
                    "Ischemia",
                    "Non-specific repolarization abnormalities",
                    "Other states",
                ),
            ),
            dx_system="ludb-diagnosis",
            # Per-lead gains and a non-zero baseline in the headers: always convert with the header's values.
            databases=(Database(name="ludb", fs=500, description="Lobachevsky University, 10 s 12-lead"),),
            metadata_files=("ludb.csv",),
            record_groups=("data",),
            selected_groups=("data",),
        ),
    )
}


def get_source(slug: str) -> Source:
    """The catalog entry for ``slug``; raises :class:`UnknownSourceError` listing the known slugs."""
    try:
        return SOURCES[slug]
    except KeyError:
        raise UnknownSourceError(
            f"unknown source {slug!r}; known sources: {', '.join(sorted(SOURCES))}"
        ) from None
