"""`anatomist toy list|train`: the toys, and a short alias of `anatomist run toy-train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.run import invoke
from anatomist.nets.toys.registry import TOYS

toy_app = typer.Typer(help="Toy models with known ground truth (TMS, residual MLP, MoE LM).", no_args_is_help=True)


@toy_app.command("list")
def list_toys(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """List the named toys and their default configs."""
    if as_json:
        print(json.dumps({name: c.model_dump(mode="json") for name, c in TOYS.items()}))
        return
    for name, c in TOYS.items():
        print(f"{name:14s} {c.kind:10s} steps={c.steps} batch={c.batch_size} lr={c.lr:g} ({c.lr_schedule})")


@toy_app.command()
def train(
    name: Annotated[str, typer.Argument(help=f"toy to train: {', '.join(TOYS)}")],
    out: Annotated[Path, typer.Option(help="run folder to write")],
    steps: Annotated[int | None, typer.Option(help="optimizer steps (default: the toy's published count)")] = None,
    seed: Annotated[int, typer.Option(help="seed for initialisation, fixed weights and data")] = 0,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda', 'cuda:N' or 'auto'")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Train a toy from scratch (`anatomist run toy-train`); prints the final (held-out) loss."""
    invoke("toy-train", [], out, as_json=as_json, extra={"toy": name, "steps": steps, "seed": seed, "device": device})
