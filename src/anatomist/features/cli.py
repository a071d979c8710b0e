"""`anatomist sae ...`: train and evaluate sparse dictionaries (a few lines over the library)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sae_app = typer.Typer(help="Sparse dictionaries (SAEs, transcoders): train and evaluate.", no_args_is_help=True)


@sae_app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML TrainConfig (see experiments/smollm2_resid_topk.yaml)")],
    out: Annotated[str | None, typer.Option(help="run folder (overrides out_dir)")] = None,
    steps: Annotated[int | None, typer.Option(help="optimizer steps (overrides steps)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Train a dictionary (resuming if the run folder has checkpoints), save it, evaluate it."""
    from anatomist.cli import emit
    from anatomist.features.train import TrainConfig, train_sae

    cfg = TrainConfig.from_yaml(config)
    overrides = {k: v for k, v in {"out_dir": out, "steps": steps}.items() if v is not None}
    if overrides:
        cfg = cfg.replace(**overrides)
    _, metrics = train_sae(cfg)
    emit({k: v for k, v in metrics.items() if not isinstance(v, dict)} | {"saved": f"{cfg.out_dir}/sae"}, as_json)


@sae_app.command("eval")
def evaluate(
    path: Annotated[Path, typer.Argument(help="a dictionary folder (anatomist, SAELens or sparsify format)")],
    model: Annotated[str, typer.Option(help="model name (smollm2, a local HF folder, ...)")],
    site: Annotated[str, typer.Option(help="site the dictionary reads, e.g. model.layers.6")],
    target_site: Annotated[str | None, typer.Option(help="transcoder: site it predicts")] = None,
    corpus: Annotated[str, typer.Option(help="packaged corpus")] = "wiki",
    n_seqs: Annotated[int, typer.Option(help="sequences evaluated")] = 16,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 128,
    skip_seqs: Annotated[int, typer.Option(help="leave out the corpus' first sequences (e.g. training data)")] = 0,
    spliced_seqs: Annotated[int | None, typer.Option(help="sequences spliced for CE/KL (default: all)")] = None,
    batch_size: Annotated[int, typer.Option(help="sequences per forward")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Reconstruction, sparsity and spliced-model losses (CE increase, KL, loss recovered) of a dictionary."""
    from anatomist.cli import emit
    from anatomist.core import AnatomistError
    from anatomist.data import load_corpus
    from anatomist.evaluate import evaluate_dictionary
    from anatomist.features import load_sae
    from anatomist.nets.assets import load_model

    sae = load_sae(path, device=device)
    loaded = load_model(model, device=device)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{model}' has no tokenizer: `sae eval` runs language models on a corpus")
    ids = load_corpus(corpus).tokenize(loaded.tokenizer, seq_len, skip_seqs + n_seqs)[skip_seqs:]
    result = evaluate_dictionary(
        sae, loaded.model, ids, site, target_site=target_site, batch_size=batch_size, spliced_seqs=spliced_seqs
    )
    if not as_json:
        result.pop("density_histogram")
    emit(result, as_json)
