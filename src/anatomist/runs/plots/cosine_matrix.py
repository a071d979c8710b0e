"""Cosine similarity of every ground-truth piece with every found subcomponent."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from anatomist.runs.plots import pyplot


def plot_cosine_matrix(cosines: Tensor, path: str | Path, title: str = "", max_cols: int = 60) -> Path:
    """`cosines` is `[n_true, n_found]` (e.g. `recovery.cosine_matrix`); keeps the best-matching columns if wide."""
    plt = pyplot()
    cos = cosines.detach().float().cpu()
    if cos.shape[1] > max_cols:  # show the found pieces that match something best, in order of their match
        keep = cos.max(0).values.argsort(descending=True)[:max_cols].sort().values
        cos = cos[:, keep]
    fig, ax = plt.subplots(figsize=(min(12, 1.5 + 0.18 * cos.shape[1]), min(10, 1.2 + 0.18 * cos.shape[0])))
    im = ax.imshow(cos.numpy(), vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto", interpolation="nearest")
    ax.set(xlabel="found subcomponent", ylabel="ground-truth piece", title=title)
    fig.colorbar(im, ax=ax, label="cosine")
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
