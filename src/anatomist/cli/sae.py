"""`anatomist sae train|eval`: short aliases of `anatomist run sae-train` and `anatomist run sae-eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.run import invoke
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP

sae_app = typer.Typer(help="Sparse dictionaries (SAEs, transcoders): train and evaluate.", no_args_is_help=True)


@sae_app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML sae-train config (see experiments/smollm2_resid_topk.yaml)")],
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/sae-train)")] = None,
    steps: Annotated[int | None, typer.Option(help="optimizer steps (overrides steps)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's newest checkpoint")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Train a dictionary, save it in OUT/sae, evaluate it (`anatomist run CONFIG`)."""
    invoke(str(config), [], out, resume=resume, threads=threads, as_json=as_json, extra={"steps": steps})


@sae_app.command("eval")
def evaluate(
    path: Annotated[Path, typer.Argument(help="a dictionary folder (anatomist, SAELens or sparsify format)")],
    model: Annotated[str, typer.Option(help="model name (smollm2, a local HF folder, ...)")],
    site: Annotated[str, typer.Option(help="site the dictionary reads, e.g. model.layers.6")],
    target_site: Annotated[str | None, typer.Option(help="transcoder: site it predicts")] = None,
    corpus: Annotated[str, typer.Option(help=CORPUS_HELP)] = "wiki",
    text_field: Annotated[str, typer.Option(help=TEXT_FIELD_HELP)] = "text",
    n_seqs: Annotated[int, typer.Option(help="sequences evaluated")] = 16,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 128,
    skip_seqs: Annotated[int | None, typer.Option(
        help="leave out the corpus' first sequences (default: those the dictionary's sae-train run trained on)")]
    = None,
    spliced_seqs: Annotated[int | None, typer.Option(help="sequences spliced for CE/KL (default: all)")] = None,
    batch_size: Annotated[int, typer.Option(help="sequences per forward")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/sae-eval)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Reconstruction, sparsity and spliced-model losses (CE increase, KL, loss recovered) of a dictionary."""
    fields = {"path": str(path), "model": model, "site": site, "target_site": target_site, "corpus": corpus,
              "text_field": text_field, "n_seqs": n_seqs, "seq_len": seq_len, "skip_seqs": skip_seqs,
              "spliced_seqs": spliced_seqs, "batch_size": batch_size, "device": device}
    invoke("sae-eval", [], out, as_json=as_json, extra=fields)
