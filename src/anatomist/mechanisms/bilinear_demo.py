"""The bilinear MNIST experiment: read a trained bilinear classifier's per-class eigenvectors.

`run_mnist` trains (or loads from the cache) the `bilinear-mnist` toy, writes each class's
interaction matrix Q_c through the head, eigendecomposes it, and measures held-out accuracy when
each class keeps only its top-n eigenvectors (by |λ|). It writes to `out_dir`:

    eigenvectors.png   rows: digits; columns: top eigenvectors as 28×28 images, titled with λ
    truncation.png     held-out accuracy against eigenvectors kept per class
    metrics.json       the numbers

`step` is the `anatomist demo` step (same experiment, the toy's default recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anatomist.core.io import save_json
from anatomist.mechanisms.bilinear import MLPDecomposition, decompose_mlp, truncation_accuracy

TOPS: list[int | None] = [1, 2, 4, 8, 16, 32, None]


def run_mnist(
    out_dir: str | Path,
    steps: int | None = None,
    seed: int = 0,
    input_noise: float | None = None,
    n_show: int = 6,
) -> dict[str, Any]:
    """Train/load the bilinear MNIST toy, decompose it by class, write plots and metrics to `out_dir`.

    `steps`, `seed` and `input_noise` override the toy's recipe (each setting is cached apart).
    """
    from anatomist.nets.toys import load_toy, toy_config
    from anatomist.nets.toys.bilinear_mnist import BilinearMLP, BilinearMNISTConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = toy_config("bilinear-mnist")
    if input_noise is not None:
        config = config.replace(input_noise=input_noise)
    toy = load_toy(config, steps=steps, seed=seed)
    assert isinstance(toy.config, BilinearMNISTConfig) and isinstance(toy.model, BilinearMLP)
    model = toy.model.cpu()
    dec = decompose_mlp(model.bilinear, model.head, name="bilinear")
    x, y = toy.config.test_set()
    acc = truncation_accuracy(dec, x, y, TOPS)
    with torch.no_grad():
        model_acc = float((model(x).argmax(-1) == y).float().mean())
    _plot_eigenvectors(dec, x, y, out / "eigenvectors.png", n_show)
    _plot_truncation(acc, out / "truncation.png")
    values = dec.eigen.values  # [10, 784]
    share = values[:, :4].abs().sum(-1) / values.abs().sum(-1)
    metrics = {
        "toy": toy.config.name,
        "steps": toy.config.steps,
        "seed": toy.config.seed,
        "input_noise": toy.config.input_noise,
        "test_digits": len(y),
        "test_accuracy": model_acc,
        "truncated_accuracy": acc,
        "top4_eigenvalue_share": round(float(share.mean()), 4),
        "eigenvalues_top4": [[round(v, 3) for v in row] for row in values[:, :4].tolist()],
        "plots": ["eigenvectors.png", "truncation.png"],
    }
    save_json(out / "metrics.json", metrics)
    return metrics


def step(run_dir: Path) -> dict[str, Any]:
    """`anatomist demo` step: the bilinear MNIST experiment with the toy's default recipe."""
    m = run_mnist(run_dir / "bilinear")
    acc = m["truncated_accuracy"]
    return {
        "test_accuracy": round(m["test_accuracy"], 4),
        "accuracy_top1": round(acc["1"], 4),
        "accuracy_top4": round(acc["4"], 4),
        "accuracy_top16": round(acc["16"], 4),
        "plot": "bilinear/eigenvectors.png",
    }


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_eigenvectors(dec: MLPDecomposition, x: torch.Tensor, y: torch.Tensor, path: Path, n_show: int) -> None:
    """One mosaic: row c holds digit c's top eigenvectors, each scaled to [-1, 1] (red +, blue −)."""
    plt = _plt()
    n_cls, side, gap = dec.q.shape[0], 28, 4
    mosaic = torch.full((n_cls * (side + gap), n_show * (side + gap)), float("nan"))
    for c in range(n_cls):
        mean_img = x[y == c].mean(0)
        for i in range(n_show):
            v = dec.eigen.vectors[c, :784, i]
            v = v if float(v @ mean_img) >= 0 else -v  # the sign is arbitrary: show it as the digit sees it
            r, k = c * (side + gap), i * (side + gap)
            mosaic[r : r + side, k : k + side] = (v / v.abs().max()).view(side, side)
    fig, ax = plt.subplots(figsize=(1.1 * n_show + 0.6, 1.1 * n_cls + 0.6))
    ax.imshow(mosaic.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    for c in range(n_cls):
        for i in range(n_show):
            lam = float(dec.eigen.values[c, i])
            ax.text(i * (side + gap) + side / 2, c * (side + gap) - 0.5, f"{lam:+.2f}", ha="center", fontsize=6)
    ax.set_yticks([c * (side + gap) + side / 2 for c in range(n_cls)], [str(c) for c in range(n_cls)])
    ax.set_xticks([])
    ax.set_ylabel("digit")
    ax.set_title("top eigenvectors of each digit's interaction matrix, by |λ| (λ above each)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_truncation(acc: dict[str, float], path: Path) -> None:
    plt = _plt()
    ks = [k for k in acc if k != "all"]
    fig, ax = plt.subplots(figsize=(4, 2.8))
    ax.plot([int(k) for k in ks], [acc[k] for k in ks], marker="o", label="top-n eigenvectors per class")
    ax.axhline(acc["all"], color="gray", ls="--", label=f"full model ({acc['all']:.3f})")
    ax.set(xscale="log", xlabel="eigenvectors kept per class", ylabel="held-out accuracy", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
