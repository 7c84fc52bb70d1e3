"""Downstream figures: the label-efficiency curve of an ablation (Agg backend, returns a Figure)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"ssl": "tab:blue", "random": "tab:gray"}
STYLES = {"full": "-", "linear": "--"}


def plot_label_efficiency(
    summary: pd.DataFrame,
    metric: str,
    labels_to_match: dict[str, float] | None = None,
    title: str = "Label efficiency",
):
    """Metric vs label fraction (log x): mean over seeds with its 95% interval, one line per (init, mode).

    ``summary``: the output of :func:`ecgmodel.downstream.ablation.summarize`. The random-init mean at 100%
    is drawn as a horizontal reference per mode; ``labels_to_match`` ``{mode: fraction}`` is marked on it.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (init, mode), part in summary.groupby(["init", "mode"], sort=True):
        part = part.sort_values("fraction")
        x = part["fraction"].to_numpy(float)
        color = COLORS.get(init, None)
        ax.plot(x, part["mean"], STYLES.get(mode, "-"), marker="o", color=color, label=f"{init} ({mode})")
        lo, hi = part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float)
        if np.isfinite(lo).any():
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
    for mode, part in summary[(summary["init"] == "random") & (summary["fraction"] == 1.0)].groupby("mode"):
        ref = float(part["mean"].iloc[0])
        ax.axhline(ref, color="tab:gray", lw=0.8, ls=":")
        match = (labels_to_match or {}).get(mode, math.nan)
        if match is not None and np.isfinite(match):
            ax.plot([match], [ref], marker="*", ms=14, color="tab:red", ls="none",
                    label=f"labels to match ({mode}): {match:g}")  # fmt: skip
    ax.set_xscale("log")
    fractions = sorted(summary["fraction"].unique())
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("fraction of labelled training records (log scale)")
    ax.set_ylabel(f"{metric} (mean, 95% CI over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
