"""Figures logged with runs. A plain module of functions: each takes arrays and returns a matplotlib Figure
(Agg backend, no display needed); callers save or log them."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def plot_reconstruction(
    target: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray,
    leads: Sequence[str] = LEADS,
    fs: float = 500.0,
    title: str = "Masked reconstruction",
):
    """Overlay of input and reconstruction per lead (one sample). target/recon (L, T); mask bool (L, P): masked
    patches are shaded; the reconstruction is drawn where it is scored (masked patches)."""
    target, recon, mask = np.asarray(target), np.asarray(recon), np.asarray(mask, dtype=bool)
    L, T = target.shape
    patch = T // mask.shape[1]
    t = np.arange(T) / fs
    fig, axes = plt.subplots(L, 1, figsize=(12, 1.1 * L + 1), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, target[i], color="black", lw=0.7, label="input")
        shown = np.where(np.repeat(mask[i], patch), recon[i], np.nan)
        ax.plot(t, shown, color="tab:red", lw=0.8, label="reconstruction (masked)")
        for p in np.flatnonzero(mask[i]):
            ax.axvspan(p * patch / fs, (p + 1) * patch / fs, color="tab:red", alpha=0.08, lw=0)
        ax.set_ylabel(leads[i] if i < len(leads) else f"slot {i}", rotation=0, ha="right", va="center")
        ax.set_yticks([])
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_lead_confusion(cm: np.ndarray, leads: Sequence[str] = LEADS, title: str = "Lead-number prediction"):
    """Row-normalised confusion matrix: rows = true lead in the slot, columns = predicted lead."""
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(leads)), leads, rotation=45)
    ax.set_yticks(range(len(leads)), leads)
    ax.set_xlabel("predicted lead")
    ax.set_ylabel("true lead")
    for i in range(norm.shape[0]):
        for j in range(norm.shape[1]):
            if norm[i, j] >= 0.05:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (accuracy {acc:.3f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
