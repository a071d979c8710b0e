"""`anatomist steer PATH --latent I --alpha A --prompt "..."`: the short form of `anatomist run steer`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anatomist.cli.output import console, print_result
from anatomist.runs import load_run_config, run
from anatomist.runs.base import RunResult


def steer(
    path: Annotated[str, typer.Argument(help="a dictionary folder (anatomist, SAELens or sparsify), or basis:NAME")],
    model: Annotated[str, typer.Option(help="causal language model (smollm2, a local HF folder, ...)")] = "smollm2",
    latent: Annotated[list[int] | None, typer.Option(help="latent to steer with (repeatable; default: the 3 "
                                                     "latents with the clearest promoted tokens)")] = None,
    alpha: Annotated[float, typer.Option(help="add: strength in units of the site's median norm (raw with --scale "
                                         "raw); clamp: the latent's value")] = 1.0,
    prompt: Annotated[list[str] | None, typer.Option(help="prompt to continue (repeatable)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens generated per continuation")] = 20,
    mode: Annotated[str, typer.Option(help="add (the decoder direction) or clamp (the latent's value)")] = "add",
    scale: Annotated[str, typer.Option(help="add: norm (alpha x the site's median norm) or raw")] = "norm",
    site: Annotated[str | None, typer.Option(help="site (default: the one the dictionary's metadata names)")] = None,
    sample: Annotated[bool, typer.Option(help="sample (seeded) instead of greedy decoding")] = False,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/steer)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Continue prompts with and without a latent added to its site; its promoted tokens and their log-prob change."""
    fields = {"path": path, "model": model, "latents": latent or None, "alpha": alpha, "prompts": prompt or None,
              "max_new_tokens": max_new_tokens, "mode": mode, "scale": scale, "site": site, "sample": sample,
              "seed": seed}
    config = load_run_config("steer", [f"{k}={json.dumps(v)}" for k, v in fields.items() if v is not None])
    result = run(config, out if out is not None else Path("runs/steer"))
    if as_json:
        print_result(result, as_json=True)
        return
    print_continuations(result)


def print_continuations(result: RunResult) -> None:
    """Each prompt with its steered and unsteered continuation, then each latent's promoted tokens."""
    console.print(result.summary, style="bold", markup=False, highlight=False, soft_wrap=True)
    for row in result.metrics.tables.get("continuations", {}).values():
        console.print(f"\n[bold]latent {row['latent']}[/bold] | {escape(row['prompt'])}", highlight=False)
        console.print(f"  steered:   {escape(row['steered'])!r}", highlight=False, soft_wrap=True)
        console.print(f"  unsteered: {escape(row['unsteered'])!r}", highlight=False, soft_wrap=True)
    promoted: dict[int, list[str]] = {}
    for row in result.metrics.tables.get("promoted", {}).values():
        promoted.setdefault(row["latent"], []).append(f"{row['token']!r} ({row['delta_logprob']:+.2f})")
    for lat, tokens in promoted.items():
        console.print(f"\nlatent {lat} promotes (log-prob change): {escape(', '.join(tokens))}", highlight=False,
                      soft_wrap=True)
    console.print(f"run folder: {result.out}", highlight=False, soft_wrap=True)
