"""Frobenius norms of each target's subcomponents, sorted, on a log scale."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from anatomist.runs.plots import pyplot


def plot_component_norms(norms: dict[str, Tensor], path: str | Path) -> Path:
    """`norms[target]` is `[C]` (e.g. `matrices(target).flatten(1).norm(dim=1)`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, n in norms.items():
        values = n.detach().float().cpu().sort(descending=True).values.clamp_min(1e-8)
        ax.plot(range(1, len(values) + 1), values.numpy(), marker=".", label=name)
    ax.set(yscale="log", xlabel="subcomponent (sorted)", ylabel="‖U_c V_cᵀ‖_F", title="subcomponent norms")
    ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
