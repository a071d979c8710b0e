"""Plots of the `localise` kind: the fraction of a behaviour's change against the number of units patched."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from anatomist.interpret.patching import Curve
from anatomist.runs.plots import pyplot, save_figure


def plot_curves(curves: Mapping[str, Curve], path: str | Path, title: str = "") -> None:
    """Two panels, one line per decomposition: the fraction of the logit-difference change, and of the KL to the
    counterfactual closed, against units patched per prompt (symmetric log axis, so 0 units shows)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), sharex=True)
    for name, curve in curves.items():
        rows = curve.rows().values()
        units = [r["units"] for r in rows]
        axes[0].plot(units, [r["fraction"] for r in rows], marker=".", label=name)
        axes[1].plot(units, [r["kl_fraction"] for r in rows], marker=".", label=name)
    for ax, what in zip(axes, ("logit difference", "KL(patched || counterfactual)"), strict=True):
        ax.set_xscale("symlog", linthresh=1)
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.axhline(0.9, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("units patched per prompt")
        ax.set_ylabel(f"fraction of the change ({what})", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=110)
