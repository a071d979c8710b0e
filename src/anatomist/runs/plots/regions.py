"""Plots of the polytope-lens run kinds (regions-density, regions-cluster): density along paths, cluster scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anatomist.runs.plots import pyplot, save_figure


def _normalised(counts: np.ndarray) -> np.ndarray:
    """A density profile divided by its mean, so paths of different lengths and sites share a scale."""
    mean = counts.mean()
    return counts / mean if mean > 0 else counts.astype(float)


def plot_density(records: list[dict[str, Any]], sites: list[str], out: Path, n_examples: int = 4) -> list[str]:
    """density_examples.png (a few paths: density per site and the predicted class) and density_aligned.png."""
    plt = pyplot()
    diff = [r for r in records if not r["same_class"] and r["changes_at"]]
    shown = diff[:n_examples]
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 1.6 * len(shown) + 0.4), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], shown, strict=False):
        counts = np.asarray(r["counts"], dtype=float)
        t = (np.arange(counts.shape[1]) + 0.5) / counts.shape[1]
        for k, site in enumerate(sites):  # smoothed over 5 bins: a layer with few units is spiky
            ax.plot(t, np.convolve(_normalised(counts[k]), np.ones(5) / 5, mode="same"), lw=0.8, label=site)
        top = ax.get_ylim()[1]
        pred = np.asarray(r["pred"])
        ax.imshow(pred[None, :], aspect="auto", cmap="tab10", vmin=0, vmax=9, alpha=0.25, extent=(0, 1, 0, top))
        for c in r["changes_at"]:
            ax.axvline(c, color="k", ls="--", lw=0.8)
        ax.set_ylabel(f"{r['class_a']}→{r['class_b']}", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="upper right")
    axes[-1, 0].set_xlabel("t along the path (background: predicted class; dashed: class change)", fontsize=8)
    fig.suptitle("code changes per bin / path mean, per site (5-bin average)", fontsize=9)
    save_figure(fig, out / "density_examples.png", dpi=70)

    groups = (
        (diff, lambda r: r["changes_at"][0], "different class, at first class change"),
        ([r for r in records if r["same_class"]], lambda r: 0.5, "same class, at middle"),
    )
    fig, axes = plt.subplots(1, len(sites), figsize=(2.4 * len(sites) + 0.6, 2.6), sharey=True, squeeze=False)
    edges = np.linspace(-0.5, 0.5, 41)
    for k, (ax, site) in enumerate(zip(axes[0], sites, strict=True)):
        for group, centre, label in groups:
            if not group:
                continue
            off = np.concatenate(
                [(np.arange(len(r["pred"]) - 1) + 0.5) / (len(r["pred"]) - 1) - centre(r) for r in group]
            )
            val = np.concatenate([_normalised(np.asarray(r["counts"][k], dtype=float)) for r in group])
            which = np.digitize(off, edges) - 1
            ok = (which >= 0) & (which < len(edges) - 1)
            total = np.bincount(which[ok], val[ok], minlength=len(edges) - 1)
            mean = total / np.maximum(np.bincount(which[ok], minlength=len(edges) - 1), 1)
            ax.plot((edges[:-1] + edges[1:]) / 2, mean, label=f"{label} ({len(group)})")
        ax.axvline(0, color="k", ls="--", lw=0.8)
        ax.set_title(_short(sites)[site], fontsize=8)
        ax.set_xlabel("t - alignment point", fontsize=8)
    axes[0, 0].set_ylabel("density / path mean", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    save_figure(fig, out / "density_aligned.png", dpi=80)
    return ["density_examples.png", "density_aligned.png"]


def _short(names: list[str]) -> dict[str, str]:
    """Names without the dotted parts they all share ('model.layers.3.mlp.act_fn' -> 'layer 3')."""
    parts = [n.split(".") for n in names if n != "all"]
    keep = [i for i in range(max(map(len, parts), default=0)) if len({tuple(p[i : i + 1]) for p in parts}) > 1]
    short = {n: ".".join(p[i] for i in keep if i < len(p)) or n for n, p in zip(names, parts, strict=False)}
    if all(v.isdigit() for v in short.values()):
        short = {n: f"layer {v}" for n, v in short.items()}
    return {**short, "all": "all sites"}


def plot_clusters(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """clusters.png: NMI of each representation's clusters against each label (sd over runs), one panel per site."""
    plt = pyplot()
    sites = list(dict.fromkeys(r["site"] for r in rows))
    reps = list(dict.fromkeys(r["representation"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, axes = plt.subplots(1, len(sites), figsize=(2.2 * len(sites) + 1, 2.6), sharey=True, squeeze=False)
    width = 0.8 / len(reps)
    titles = _short(sites)
    for ax, site in zip(axes[0], sites, strict=True):
        for k, rep in enumerate(reps):
            mine = [
                next(r for r in rows if (r["site"], r["representation"], r["label"]) == (site, rep, lab))
                for lab in labels
            ]
            nmi, sd = [r["nmi"] for r in mine], [r.get("nmi_sd", 0.0) for r in mine]
            ax.bar(np.arange(len(labels)) + k * width, nmi, width, yerr=sd, error_kw={"lw": 0.6}, label=rep)
        ax.set_title(titles[site], fontsize=8)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=45, fontsize=7, ha="right")
    axes[0, 0].set_ylabel("NMI with label", fontsize=8)
    axes[0, -1].legend(fontsize=6)
    save_figure(fig, out / "clusters.png", dpi=80)
    return ["clusters.png"]
