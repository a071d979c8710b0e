"""Causal importances on one-hot inputs: rows are input features, columns subcomponents."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from anatomist.runs.plots import pyplot


def plot_ci_heatmap(importances: dict[str, Tensor], path: str | Path, only_alive: bool = True) -> Path:
    """One panel per target of `[n_features, C]` importances; columns never above 0.1 are dropped if `only_alive`."""
    plt = pyplot()
    names = list(importances)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        ci = importances[name].detach().float().cpu()
        cols = (ci > 0.1).any(0).nonzero().flatten() if only_alive else None
        shown = ci[:, cols] if cols is not None and len(cols) else ci
        im = ax.imshow(shown.numpy(), vmin=0, vmax=1, cmap="Blues", aspect="auto", interpolation="nearest")
        ax.set(title=name, xlabel="subcomponent" + (" (alive)" if only_alive else ""))
        if i == 0:
            ax.set_ylabel("one-hot feature")
        if cols is not None and len(cols) <= 40:
            ax.set_xticks(range(len(cols)), [str(int(c)) for c in cols], fontsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="causal importance")
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
