"""`anatomist mdl|stitch|meta ...`: short aliases of `anatomist run mdl|stitch|meta`.

Each is one command with positional dictionary folders (`anatomist mdl PATH...`), so they are plain
functions that `anatomist.cli` registers on the top-level app rather than sub-apps.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.run import invoke

DICTIONARY_COMMANDS: list[str] = ["mdl", "stitch", "meta"]  # registered by anatomist.cli

ImagesOpt = Annotated[str | None, typer.Option(help="inputs: a packaged image set, flattened (mnist, digits)")]
ActsOpt = Annotated[Path | None, typer.Option(help="inputs: an activation cache folder (ActivationStore)")]
RowsOpt = Annotated[int, typer.Option(help="use at most this many input rows")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object on stdout")]


def mdl(
    paths: Annotated[list[Path], typer.Argument(help="dictionary folders (several: a sweep to choose from)")],
    images: ImagesOpt = None,
    activations: ActsOpt = None,
    max_rows: RowsOpt = 20_000,
    tolerance: Annotated[float, typer.Option(help="FVU the quantised code may reach")] = 0.1,
    dict_bits: Annotated[float, typer.Option(help="bits per decoder weight")] = 16.0,
    amortise_over: Annotated[float | None, typer.Option(help="inputs the dictionary cost is spread over")] = None,
    plot: Annotated[Path | None, typer.Option(help="also copy the frontier plot here (PNG)")] = None,
    out: Annotated[Path, typer.Option(help="run folder (metrics.json, mdl_frontier.png)")] = Path("runs/mdl"),
    as_json: JsonOpt = False,
) -> None:
    """Description length: bits per input of each dictionary's code and their parts; with several, the MDL choice."""
    extra = {"paths": [str(p) for p in paths], "images": images, "activations": activations, "max_rows": max_rows,
             "fvu_tolerance": tolerance, "dict_bits_per_weight": dict_bits, "amortise_over": amortise_over}
    invoke("mdl", [], out, as_json=as_json, extra=extra)
    if plot is not None:
        shutil.copyfile(out / "mdl_frontier.png", plot)


def stitch(
    small: Annotated[Path, typer.Argument(help="the smaller dictionary's folder")],
    large: Annotated[Path, typer.Argument(help="the larger dictionary's folder (same site)")],
    images: ImagesOpt = None,
    activations: ActsOpt = None,
    max_rows: RowsOpt = 20_000,
    threshold: Annotated[float, typer.Option(help="decoder cosine that makes a latent a reconstruction latent")] = 0.7,
    model: Annotated[str | None, typer.Option(help="also CE increase at the path's landmarks: the model")] = None,
    site: Annotated[str | None, typer.Option(help="the site the dictionaries read (with --model)")] = None,
    ce_seqs: Annotated[int, typer.Option(help="held-out sequences for CE (with --model)")] = 4,
    skip_seqs: Annotated[int, typer.Option(help="leave out the corpus' first sequences (training data)")] = 320,
    out: Annotated[Path, typer.Option(help="run folder (metrics.json with the path as a table)")] = Path("runs/stitch"),
    as_json: JsonOpt = False,
) -> None:
    """SAE stitching: novel vs reconstruction latents of LARGE relative to SMALL, the MSE along the path."""
    extra = {"small": str(small), "large": str(large), "images": images, "activations": activations,
             "max_rows": max_rows, "threshold": threshold, "model": model, "site": site, "ce_seqs": ce_seqs,
             "skip_seqs": skip_seqs}
    invoke("stitch", [], out, as_json=as_json, extra=extra)


def meta(
    path: Annotated[Path, typer.Argument(help="the base dictionary's folder")],
    d_meta: Annotated[int, typer.Option(help="meta-latents")] = 256,
    k: Annotated[int, typer.Option(help="BatchTopK k of the meta-SAE")] = 4,
    steps: Annotated[int, typer.Option(help="training steps")] = 2000,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    latent: Annotated[list[int] | None, typer.Option(help="explain this base latent (repeatable)")] = None,
    save: Annotated[Path | None, typer.Option(help="also copy the meta-SAE (run folder's meta_sae/) here")] = None,
    out: Annotated[Path, typer.Option(help="run folder (metrics.json, meta_sae/)")] = Path("runs/meta"),
    threads: Annotated[int, typer.Option(help="CPU threads for torch (small matrices: 1 is fastest)")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Meta-SAE on PATH's unit decoder rows: variance explained, and how chosen latents decompose."""
    extra = {"path": str(path), "d_meta": d_meta, "k": k, "steps": steps, "seed": seed, "latents": latent or []}
    invoke("meta", [], out, threads=threads, as_json=as_json, extra=extra)
    if save is not None:
        shutil.copytree(out / "meta_sae", save, dirs_exist_ok=True)
