"""Plots of an `analyze` result: stability, probes, monosemanticity (small PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402

from anatomist.routes.probes import FEATURES  # noqa: E402
from anatomist.runs.plots import pyplot, save_figure

_COLOURS = {"control": "#d1495b", "content": "#00798c", "content_r": "#66a182", "full": "#8d8d8d"}


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], colours: dict[str, str]) -> None:
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for j, (name, values) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=name, color=colours.get(name))
    ax.set_xticks(x, groups, fontsize=8)
    ax.legend(fontsize=6, frameon=False)


def plot_stability(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    stab = results["stability"]
    pairs = [f"{i}→{i + 1}" for i in range(len(stab))]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=90)
    series = {
        "control": [s["control_cos"] for s in stab],
        "content": [s["content_cos"] for s in stab],
        "control (random subspaces)": [s["control_cos_random_subspaces"] for s in stab],
        "control (shuffled)": [s["control_cos_shuffled"] for s in stab],
        "content (shuffled)": [s["content_cos_shuffled"] for s in stab],
    }
    colours = {
        **_COLOURS,
        "control (random subspaces)": "#edae49",
        "control (shuffled)": "#f2a7b0",
        "content (shuffled)": "#8fc9d2",
    }
    _bars(ax, pairs, series, colours)
    ax.set_xlabel("consecutive MoE layers", fontsize=8)
    ax.set_ylabel("mean cosine, same token", fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title("Cross-layer stability of control vs content", fontsize=9)
    save_figure(fig, path)


def plot_probes(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    targets = ["token", "position", "expert", "next_expert"]
    layers = list(results["probes"].values())
    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=90)
    series = {f: [float(np.mean([p[t][f]["accuracy"] for p in layers if t in p])) for t in targets] for f in FEATURES}
    _bars(ax, targets, series, _COLOURS)
    chance = [float(np.mean([p[t]["control"]["chance"] for p in layers if t in p])) for t in targets]
    ax.scatter(np.arange(len(targets)), chance, marker="_", s=400, color="black", label="chance", zorder=3)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probe test accuracy (mean over layers)", fontsize=8)
    ax.set_title("Linear probes from control vs content", fontsize=9)
    save_figure(fig, path)


def plot_monosemanticity(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    mono = results["monosemanticity"]
    labels = list(next(iter(mono.values())))

    def mean_over_layers(prefix: str) -> list[float]:
        return [float(np.mean([mono[g][lab]["mi_lift_frac"] for g in mono if g.startswith(prefix)])) for lab in labels]

    e, p = results["n_experts"], results["paths"]["n_paths"]
    series = {
        f"expert (k={e})": mean_over_layers("expert@"),
        f"k-means control (k={e})": mean_over_layers("kmeansE_control@"),
        f"k-means content (k={e})": mean_over_layers("kmeansE_content@"),
        f"path (k={p})": [mono["path"][lab]["mi_lift_frac"] for lab in labels],
        "k-means control (k=paths)": [mono["kmeans_control"][lab]["mi_lift_frac"] for lab in labels],
        "k-means content (k=paths)": [mono["kmeans_content"][lab]["mi_lift_frac"] for lab in labels],
        "k-means full (k=paths)": [mono["kmeans_full"][lab]["mi_lift_frac"] for lab in labels],
    }
    shades = ["#edae49", "#f2a7b0", "#8fc9d2", "#30638e", _COLOURS["control"], _COLOURS["content"], _COLOURS["full"]]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
    _bars(ax, labels, series, dict(zip(series, shades, strict=True)))
    ax.set_ylabel("(MI − chance MI) / H(label)", fontsize=8)
    ax.set_title("Monosemanticity vs token labels (single layers: mean over the band)", fontsize=9)
    save_figure(fig, path)


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (("stability", plot_stability), ("probes", plot_probes), ("monosemanticity", plot_monosemanticity)):
        if name == "stability" and not results["stability"]:
            continue  # a band of one layer has no consecutive pair
        fn(results, out / f"{name}.png")
        paths.append(out / f"{name}.png")
    return paths
