"""Typed configuration of the ingest stage (download + conversion into the store)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecgmodel.data.sources import DEFAULT_MIRROR, get_source


class IngestConfig(BaseModel):
    """Everything ``ecgssl ingest`` / ``ingest_flow`` needs; validated once, wherever it comes from."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=lambda: ["ptb-xl"],
        min_length=1,
        description="Catalog slugs to ingest, in order (challenge-2020, challenge-2021, ptb-xl, ludb).",
    )
    mirror: str = Field(
        DEFAULT_MIRROR,
        description="PhysioNet-style base URL or local folder holding <slug>/<version>/... (checksummed).",
    )
    store: str = Field("data/store.zarr", description="Path of the Zarr store (created if missing, else appended).")
    raw_dir: str = Field("data/raw", description="Where verified raw files are kept: <raw_dir>/<slug>/<version>/.")
    fs: int = Field(500, gt=0, description="Sampling rate of the stored windows, Hz (records are resampled).")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds (5000 samples at 500 Hz).")
    max_windows_per_record: int | None = Field(
        6, ge=1, description="At most this many consecutive windows per record (None: all of them)."
    )
    workers: int = Field(
        2, ge=0, description="Dask worker processes for the conversion (0: convert in this process, no Dask)."
    )
    download_workers: int = Field(4, ge=1, description="Files downloaded at once.")
    copy_mirror: bool = Field(
        False, description="A local mirror folder is verified in place (SHA256SUMS) and read from there; True "
        "copies its files into raw_dir first (as a download would). An http(s) mirror is always downloaded."
    )
    batch_records: int = Field(32, ge=1, description="Records converted per Dask task (amortises task overhead).")
    max_in_flight: int | None = Field(
        None, ge=1, description="Batches submitted but not yet stored (None: 2 x workers + 1); bounds memory."
    )
    commit_every: int = Field(16, ge=1, description="Commit the store every N batches (and after each source).")
    ptbxl_rate: Literal[100, 500] = Field(
        500, description="Which PTB-XL copy to ingest: 500 Hz (records500/) or 100 Hz (records100/)."
    )
    chunk_windows: int = Field(64, ge=1, description="Windows per signal chunk when the store is created.")
    dask_address: str | None = Field(
        None, description="Address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786); None: local cluster."
    )
    progress: bool = Field(True, description="Show tqdm progress bars.")
    lock_timeout_s: float = Field(
        600.0, ge=0, description="Seconds to wait for another writer of the store (e.g. a concurrent flow) "
        "before failing with StoreLockedError; 0: fail at once."
    )

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        for slug in value:
            get_source(slug)  # raises UnknownSourceError listing the known slugs
        return list(dict.fromkeys(value))

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.fs))

    def groups(self, slug: str) -> list[str] | None:
        """Record groups to ingest for ``slug`` (None: the catalog's default)."""
        if slug == "ptb-xl":
            return [f"records{self.ptbxl_rate}"]
        return None

    def source(self, slug: str):
        src = get_source(slug)
        groups = self.groups(slug)
        return src.select(*groups) if groups else src
