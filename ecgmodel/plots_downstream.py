"""Downstream figures: the label-efficiency curve of an ablation and its gains with bootstrap CIs (Agg backend,
returns a Figure)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"ssl": "tab:blue", "random": "tab:gray"}
STYLES = {"full": "-", "linear": "--"}


def _fraction_axis(ax, fractions) -> None:
    """Log-scaled x axis with one tick per label fraction of the ablation."""
    ticks = sorted(set(fractions))
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{f:g}" for f in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fraction of labelled training records (log scale)")


def plot_label_efficiency(
    summary: pd.DataFrame,
    metric: str,
    labels_to_match: dict[str, float] | None = None,
    title: str = "Label efficiency",
    evidence: pd.DataFrame | None = None,
):
    """Left: metric vs label fraction (log x), mean over seeds with its 95% interval, one line per (init, mode);
    the random-init mean at 100% is a horizontal reference per mode and ``labels_to_match`` ``{mode: fraction}``
    is marked on it. Right (when ``evidence`` is given, see ``ecgmodel.downstream.ablation.evidence``): the
    SSL - random gain per fraction with its paired-bootstrap 95% CI; hollow markers = CI includes 0.
    """
    if evidence is not None and len(evidence):
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(11.5, 4.2))
        for (arm, mode), part in evidence.groupby(["arm", "mode"], sort=True):
            part = part.sort_values("fraction")
            x = part["fraction"].to_numpy(float)
            y = part["gain"].to_numpy(float)
            err = np.vstack([y - part["gain_ci_low"].to_numpy(float), part["gain_ci_high"].to_numpy(float) - y])
            sig = part["gain_significant"].to_numpy(bool)
            line = gx.errorbar(x, y, yerr=np.nan_to_num(err), ls=STYLES.get(mode, "-"), capsize=3,
                               label=f"{arm} - random ({mode})")  # fmt: skip
            color = line[0].get_color()
            gx.plot(x[~sig], y[~sig], "o", mfc="white", color=color)
            gx.plot(x[sig], y[sig], "o", color=color)
        gx.axhline(0.0, color="black", lw=0.8)
        _fraction_axis(gx, evidence["fraction"])
        gx.set_ylabel(f"gain in {metric} (paired bootstrap 95% CI)")
        gx.set_title("SSL - random (hollow: not significant)")
        gx.grid(alpha=0.3)
        gx.legend(fontsize=8)
    else:
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
    _fraction_axis(ax, summary["fraction"])
    ax.set_ylabel(f"{metric} (mean, 95% CI over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
