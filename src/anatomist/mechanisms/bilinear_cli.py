"""`anatomist bilinear ...`: read bilinear layers from their weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

bilinear_app = typer.Typer(help="Bilinear layers: interaction matrices and their eigenvectors.", no_args_is_help=True)


@bilinear_app.callback()
def _group() -> None:
    """Bilinear layers: interaction matrices and their eigenvectors."""  # keeps `mnist` a sub-command


@bilinear_app.command()
def mnist(
    out: Annotated[Path, typer.Option(help="output folder (eigenvectors.png, truncation.png, metrics.json)")],
    steps: Annotated[int | None, typer.Option(help="training steps of the toy (default: its recipe, 1000)")] = None,
    seed: Annotated[int, typer.Option(help="training seed of the toy")] = 0,
    input_noise: Annotated[
        float | None, typer.Option(help="σ of the training pixel noise (default: the recipe's 0.33)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Per-digit eigenvectors of the bilinear MNIST toy, and accuracy keeping only the top n per digit."""
    from anatomist.mechanisms.bilinear_demo import run_mnist

    m = run_mnist(out, steps=steps, seed=seed, input_noise=input_noise)
    if as_json:
        print(json.dumps(m))
        return
    acc = m["truncated_accuracy"]
    print(f"bilinear-mnist: held-out accuracy {m['test_accuracy']:.4f} on {m['test_digits']} digits")
    print("eigenvectors kept per digit -> accuracy: " + ", ".join(f"{k}: {v:.3f}" for k, v in acc.items()))
    print(f"plots: {out / 'eigenvectors.png'}, {out / 'truncation.png'}")
