"""Data side of ecgssl: where the ECG databases come from and how they become a store.

* :mod:`ecgmodel.data.sources` - the versioned catalog of supported PhysioNet databases (slug, version, licence,
  citation, layout, label location, sampling rates, which RECORDS entries to ingest);
* :mod:`ecgmodel.data.download` - a mirror-aware, checksum-verified, resumable downloader for those sources;
* :mod:`ecgmodel.data.store` - the Zarr store contract (see ``docs/store.md``).

Submodules are imported explicitly (``from ecgmodel.data.sources import get_source``) so that importing one part
never pulls in the heavy dependencies of another.
"""
