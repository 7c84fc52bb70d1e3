"""Prefect task: re-derive an ablation report from its folder (``ecgmodel.ablation.report.rederive``)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(name="ablation-report", cache_policy=NO_CACHE)
def rederive_task(report_dir: str, out_dir: str | None = None, plot: bool = True) -> dict[str, Any]:
    """Every number of the report in ``report_dir`` recomputed from its files; see ``ecgmodel.ablation.report``."""
    from ecgmodel.ablation.report import rederive

    return rederive(report_dir, out_dir, plot=plot)
