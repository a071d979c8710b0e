"""`anatomist mdl|stitch|meta ...`: the three questions about a trained dictionary (a few lines each).

Each is one command with positional dictionary folders (`anatomist mdl PATH...`), so they are plain
functions that `anatomist.cli._mount` registers on the top-level app rather than sub-apps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

DICTIONARY_COMMANDS: list[str] = ["mdl", "stitch", "meta"]  # registered by anatomist.cli._mount

ImagesOpt = Annotated[str | None, typer.Option(help="inputs: a packaged image set, flattened (mnist, digits)")]
ActsOpt = Annotated[Path | None, typer.Option(help="inputs: an activation cache folder (ActivationStore)")]
RowsOpt = Annotated[int, typer.Option(help="use at most this many input rows")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object on stdout")]


def load_rows(images: str | None, activations: Path | None, max_rows: int) -> torch.Tensor:
    """Input rows [n, d]: flattened images of a packaged set, or the first rows of an activation cache."""
    from anatomist.core import AnatomistError

    if (images is None) == (activations is None):
        raise AnatomistError("give exactly one of --images NAME or --activations CACHE_FOLDER")
    if images is not None:
        from anatomist.data import load_images

        return load_images(images).images.flatten(1)[:max_rows]
    from anatomist.data.store import ActivationStore

    assert activations is not None
    store = ActivationStore.from_cache(activations)
    if len(store.sites) != 1:
        raise AnatomistError(f"{activations}: holds sites {[str(s) for s in store.sites]}; need a one-site cache")
    parts, n = [], 0
    for block in store.rows_in_order():
        parts.append(next(iter(block.values())))
        n += len(parts[-1])
        if n >= max_rows:
            break
    return torch.cat(parts)[:max_rows]


def mdl(
    paths: Annotated[list[Path], typer.Argument(help="dictionary folders (several: a sweep to choose from)")],
    images: ImagesOpt = None,
    activations: ActsOpt = None,
    max_rows: RowsOpt = 20_000,
    tolerance: Annotated[float, typer.Option(help="FVU the quantised code may reach")] = 0.1,
    dict_bits: Annotated[float, typer.Option(help="bits per decoder weight")] = 16.0,
    amortise_over: Annotated[float | None, typer.Option(help="inputs the dictionary cost is spread over")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the frontier plot here (PNG)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Description length: bits per input of each dictionary's code and their parts; with several, the MDL choice."""
    from anatomist.cli import emit
    from anatomist.dictionaries.mdl import MDLConfig, description_length, plot_frontier, select_mdl
    from anatomist.features import load_sae

    cfg = MDLConfig.parse({"fvu_tolerance": tolerance, "dict_bits_per_weight": dict_bits,
                           "amortise_over": amortise_over})
    x = load_rows(images, activations, max_rows)
    results = [{"path": str(p), **description_length(load_sae(p), x, cfg)} for p in paths]
    if plot is not None:
        plot_frontier(results, [p.name if p.name != "sae" else p.parent.name for p in paths], str(plot))
    if len(results) == 1:
        emit(results[0], as_json)
        return
    out: dict[str, Any] = {"mdl_choice": results[select_mdl(results)]["path"], "results": results}
    if not as_json:
        out = {"mdl_choice": out["mdl_choice"]} | {r["path"]: f"{r['bits_per_input']:.1f} bits, FVU "
                                                   f"{r['fvu_quantised']:.3f}" for r in results}
    emit(out, as_json)


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
    as_json: JsonOpt = False,
) -> None:
    """SAE stitching: novel vs reconstruction latents of LARGE relative to SMALL, the MSE along the path."""
    from anatomist.cli import emit
    from anatomist.dictionaries.stitching import StitchConfig, stitch_path
    from anatomist.features import load_sae

    s, big = load_sae(small), load_sae(large)
    result = stitch_path(s, big, load_rows(images, activations, max_rows), StitchConfig.parse({"threshold": threshold}))
    if model is not None:
        result["ce_increase"] = landmark_ce(s, big, threshold, model, site, ce_seqs, skip_seqs)
    if not as_json:
        result.pop("path")
    emit(result, as_json)


def landmark_ce(small: Any, large: Any, threshold: float, model: str, site: str | None, n_seqs: int,
                skip_seqs: int) -> dict[str, float]:
    """CE increase with the small SAE, the small SAE + novel latents, and the large SAE spliced in."""
    from anatomist.core import AnatomistError
    from anatomist.data import load_corpus
    from anatomist.dictionaries.stitching import match_latents, stage_dictionaries
    from anatomist.evaluate import evaluate_dictionary
    from anatomist.nets.assets import load_model

    if site is None:
        raise AnatomistError("--model needs --site (the site the dictionaries read)")
    loaded = load_model(model)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{model}' has no tokenizer: CE needs a language model")
    ids = load_corpus("wiki").tokenize(loaded.tokenizer, 128, skip_seqs + n_seqs)[skip_seqs:]
    stages = stage_dictionaries(small, large, match_latents(small, large, threshold))
    return {name: float(evaluate_dictionary(d, loaded.model, ids, site)["ce_increase"]) for name, d in stages.items()}


def meta(
    path: Annotated[Path, typer.Argument(help="the base dictionary's folder")],
    d_meta: Annotated[int, typer.Option(help="meta-latents")] = 256,
    k: Annotated[int, typer.Option(help="BatchTopK k of the meta-SAE")] = 4,
    steps: Annotated[int, typer.Option(help="training steps")] = 2000,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    latent: Annotated[list[int] | None, typer.Option(help="explain this base latent (repeatable)")] = None,
    save: Annotated[Path | None, typer.Option(help="save the meta-SAE in this folder")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Meta-SAE on PATH's unit decoder rows: variance explained, and how chosen latents decompose."""
    from anatomist.cli import emit
    from anatomist.dictionaries.meta import MetaConfig, decompose, train_meta_sae
    from anatomist.features import load_sae, save_sae

    torch.set_num_threads(1)
    base = load_sae(path)
    meta_sae = train_meta_sae(base, MetaConfig.parse({"d_meta": d_meta, "k": k, "steps": steps, "seed": seed}))
    if save is not None:
        save_sae(meta_sae, save, metadata={"meta_of": str(path)})
    dec = decompose(base, meta_sae)
    out: dict[str, Any] = dec.summary()
    for i in latent or []:
        out[f"latent_{i}"] = dec.explain(i)
    emit(out, as_json)
