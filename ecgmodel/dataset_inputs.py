"""The data a training run read, as MLflow dataset inputs (the run page's "Datasets used" panel).

One input per split the run read: the dataset is named after the store folder, its digest is the store's content
hash (the commit the run read), its source the store's ``file://`` URI, and its context the split (``train``,
``val``, ...). Only metadata is logged (an MLflow ``MetaDataset``: no rows are copied).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def log_store_inputs(store: str | Path, store_hash: str, splits: Iterable[str]) -> None:
    """Log ``store`` at content hash ``store_hash`` on the active MLflow run, once per split in ``splits``."""
    import mlflow
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    path = Path(store).resolve()
    local = [s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource"][:1]  # a file:// URI
    source = resolve_dataset_source(path.as_uri(), candidate_sources=local or None)
    dataset = MetaDataset(source=source, name=path.name, digest=store_hash)
    for split in splits:
        mlflow.log_input(dataset, context=split)
