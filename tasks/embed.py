"""Prefect task: embed every record of a store (or of WFDB/EDF files) with a frozen encoder into a Parquet file.

Paths, an encoder reference and a few options go in; a small summary dict (file, records, dim, seconds) comes
out. The numerics live in :mod:`ecgmodel.embed`.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(
    store: str | None,
    out: str,
    encoder: str | None = None,
    random: bool = False,
    arch: str | None = None,
    seed: int = 0,
    pooling: str = "mean-max",
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    inputs: list[str] | None = None,
) -> dict[str, Any]:
    from ecgmodel.embed import embed_to_file

    return embed_to_file(store, out, encoder, random=random, arch=arch, seed=seed, pooling=pooling,  # type: ignore[arg-type]
                         batch_size=batch_size, device=device, threads=threads, inputs=inputs)
