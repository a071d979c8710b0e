"""Run kind `bilinear`: read a trained bilinear classifier's (the MNIST toy's) per-class eigenvectors.

`run_mnist` trains (or loads from the cache) the `bilinear-mnist` toy, writes each class's
interaction matrix Q_c through the head, eigendecomposes it, and measures held-out accuracy when
each class keeps only its top-n eigenvectors (by |λ|). It writes to the run folder:

    eigenvectors.png   rows: digits; columns: top eigenvectors as 28×28 images, titled with λ
    truncation.png     held-out accuracy against eigenvectors kept per class
    metrics.json       the numbers (written by `run`)

`step` is the `anatomist demo` step (same experiment, the toy's default recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from anatomist.core.provenance import data_record, model_record
from anatomist.mechanisms.bilinear import MLPDecomposition, decompose_mlp, truncation_accuracy
from anatomist.nets.bilinear import BilinearMLP
from anatomist.nets.toys import load_toy, toy_config
from anatomist.nets.toys.bilinear_mnist import BilinearMNISTConfig
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots import pyplot, save_figure

TOPS: list[int | None] = [1, 2, 4, 8, 16, 32, None]


class BilinearRunConfig(RunConfig):
    """Per-digit eigenvectors of the bilinear MNIST toy, and accuracy keeping only the top n per digit."""

    kind: Literal["bilinear"] = "bilinear"
    steps: int | None = Field(default=None, gt=0, description="training steps of the toy (null: its recipe, 1000)")
    seed: int = Field(default=0, description="training seed of the toy")
    input_noise: float | None = Field(
        default=None, ge=0, description="σ of the training pixel noise (null: the recipe's 0.33)"
    )
    n_show: int = Field(default=6, gt=0, description="eigenvectors shown per digit in eigenvectors.png")


@register(BilinearRunConfig)
def run_mnist(cfg: BilinearRunConfig, ctx: Context) -> Outcome:
    """Train/load the bilinear MNIST toy, decompose it by class, write plots to the run folder.

    `steps`, `seed` and `input_noise` override the toy's recipe (each setting is cached apart).
    """
    out = ctx.out
    config = toy_config("bilinear-mnist")
    if cfg.input_noise is not None:
        config = config.replace(input_noise=cfg.input_noise)
    toy = load_toy(config, steps=cfg.steps, seed=cfg.seed)
    assert isinstance(toy.config, BilinearMNISTConfig) and isinstance(toy.model, BilinearMLP)
    model = toy.model.cpu()
    dec = decompose_mlp(model.bilinear, model.head, name="bilinear")
    x, y = toy.config.test_set()
    acc = truncation_accuracy(dec, x, y, TOPS)
    with torch.no_grad():
        model_acc = float((model(x).argmax(-1) == y).float().mean())
    _plot_eigenvectors(dec, x, y, out / "eigenvectors.png", cfg.n_show)
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
        # a table: row = digit, columns = its 4 largest eigenvalues by |λ|
        "eigenvalues_top4": {str(c): {f"λ{i + 1}": round(v, 3) for i, v in enumerate(row)}
                             for c, row in enumerate(values[:, :4].tolist())},
        "plots": ["eigenvectors.png", "truncation.png"],
    }
    summary = (f"bilinear MNIST: held-out accuracy {model_acc:.4f} on {len(y)} digits; keeping 1/4/16 "
               f"eigenvectors per digit: {acc['1']:.3f}/{acc['4']:.3f}/{acc['16']:.3f}")
    return Outcome(metrics, summary, models=[model_record(toy.config.name, model)],
                   data=[data_record("mnist (packaged, held-out split)", x, n_examples=len(y))],
                   access=["weights", "outputs", "training_data"], value=dec)



def _plot_eigenvectors(dec: MLPDecomposition, x: torch.Tensor, y: torch.Tensor, path: Path, n_show: int) -> None:
    """One mosaic: row c holds digit c's top eigenvectors, each scaled to [-1, 1] (red +, blue −)."""
    plt = pyplot()
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
    save_figure(fig, path, dpi=110)


def _plot_truncation(acc: dict[str, float], path: Path) -> None:
    plt = pyplot()
    ks = [k for k in acc if k != "all"]
    fig, ax = plt.subplots(figsize=(4, 2.8))
    ax.plot([int(k) for k in ks], [acc[k] for k in ks], marker="o", label="top-n eigenvectors per class")
    ax.axhline(acc["all"], color="gray", ls="--", label=f"full model ({acc['all']:.3f})")
    ax.set(xscale="log", xlabel="eigenvectors kept per class", ylabel="held-out accuracy", ylim=(0, 1))
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=100)
