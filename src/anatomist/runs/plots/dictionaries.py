"""Plots of the dictionary run kinds and experiments: the MDL frontier (bits per input against FVU over a
sweep), stitching paths (FVU as novel latents are inserted, then groups swapped) and decoder rows drawn
as images (atoms)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anatomist.dictionaries.mdl import MDL_RULES, select_mdl
from anatomist.runs.plots import pyplot, save_figure


def plot_frontier(results: Sequence[dict[str, Any]], labels: Sequence[str], path: str, title: str = "") -> None:
    """Code bits per input against FVU for every dictionary of a sweep; the tolerance and both MDL choices
    marked (the paper's by code bits, and the one that adds the dictionary's bits spread over the inputs)."""
    plt = pyplot()

    key = MDL_RULES["code"][0]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    widths = sorted({int(r["d_sae"]) for r in results})
    cmap = plt.get_cmap("viridis", max(2, len(widths)))
    for r, label in zip(results, labels, strict=True):
        c = cmap(widths.index(int(r["d_sae"])))
        ax.scatter(r["fvu_quantised"], r[key], color=c, marker="o" if r["meets_tolerance"] else "x")
        ax.annotate(label, (r["fvu_quantised"], r[key]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    best, with_dict = results[select_mdl(results)], results[select_mdl(results, "code+dictionary")]
    ax.scatter(best["fvu_quantised"], best[key], s=160, facecolors="none", edgecolors="red",
               label="MDL choice (code bits)")
    ax.scatter(with_dict["fvu_quantised"], with_dict[key], s=260, marker="s", facecolors="none",
               edgecolors="orange", label="MDL choice (code + dictionary bits)")
    ax.axvline(results[0]["fvu_tolerance"], color="grey", ls="--", lw=0.8, label="FVU tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("FVU of the quantised code")
    ax.set_ylabel("code bits per input")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def plot_stitch_paths(paths: dict[str, list[dict[str, Any]]], file: str | Path, title: str = "") -> None:
    """FVU along each stitching path (small -> small + novel latents -> large); dotted: the last insertion."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for name, path in paths.items():
        ax.plot(range(len(path)), [p["fvu"] for p in path], marker=".", label=name)
        n_novel = sum(p["stage"] in ("small", "insert novel") for p in path)
        ax.axvline(n_novel - 1, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("stitching step (novel latents inserted, then groups swapped)")
    ax.set_ylabel("FVU")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, file, dpi=110)


def plot_atoms(saes: dict[str, tuple[Any, Any]], path: str | Path, shape: tuple[int, int], per_row: int = 12) -> None:
    """Decoder rows as images of `shape`, one row of panels per SAE: its `per_row` most used latents.

    `saes` maps a title to (SAE, firing rate [F] on the images)."""
    plt = pyplot()

    fig, axes = plt.subplots(len(saes), per_row, figsize=(per_row * 0.75, len(saes) * 0.95), squeeze=False)
    for r, (title, (sae, rate)) in enumerate(saes.items()):
        order = rate.argsort(descending=True)[:per_row]
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(order):
                atom = sae.W_dec[order[c]].detach().reshape(shape)
                lim = float(atom.abs().max())
                ax.imshow(atom, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[r, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=90)
    plt.close(fig)
