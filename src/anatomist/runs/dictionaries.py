"""Run kinds `mdl`, `stitch` and `meta`: the three questions about trained dictionaries, and the demo's step.

- `mdl`: description length in bits per input of each dictionary's code (and its parts); with several
  dictionaries, the MDL choice among those meeting the FVU tolerance and `mdl_frontier.png`.
- `stitch`: SAE stitching, novel vs reconstruction latents of a larger dictionary relative to a smaller
  one and the MSE along the path (`stitch_path.png`); with a model, the CE increase at the path's landmarks.
- `meta`: a meta-SAE on a dictionary's unit decoder rows (saved in `meta_sae/`): variance explained, and
  how chosen latents decompose.
Inputs are flattened images of a packaged set or the first rows of a one-site activation cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus, load_images
from anatomist.data.store import ActivationStore
from anatomist.dictionaries import (
    MDL_RULES,
    MDLConfig,
    MetaConfig,
    StitchConfig,
    decompose,
    description_length,
    fit_rows,
    match_latents,
    select_mdl,
    stage_dictionaries,
    stitch_path,
    train_meta_sae,
)
from anatomist.evaluate import evaluate_dictionary
from anatomist.features import SAEConfig, SparseDictionary, load_sae, save_sae
from anatomist.nets.assets import load_model
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots.dictionaries import plot_frontier, plot_stitch_paths


class RowsInput(Config):
    """Where the input rows come from: exactly one of an image set or an activation cache."""

    images: str | None = Field(None, description="inputs: a packaged image set, flattened (mnist, digits)")
    activations: str | None = Field(None, description="inputs: an activation cache folder (ActivationStore)")
    max_rows: int = Field(20_000, ge=1, description="use at most this many input rows")


def load_rows(images: str | None, activations: str | Path | None, max_rows: int) -> torch.Tensor:
    """Input rows [n, d]: flattened images of a packaged set, or the first rows of an activation cache."""
    if (images is None) == (activations is None):
        raise AnatomistError("give exactly one of --images NAME or --activations CACHE_FOLDER")
    if images is not None:
        return load_images(images).images.flatten(1)[:max_rows]
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


def _rows(cfg: RowsInput) -> tuple[torch.Tensor, dict[str, Any]]:
    """The input rows and their provenance record."""
    x = load_rows(cfg.images, cfg.activations, cfg.max_rows)
    return x, data_record(cfg.images or str(cfg.activations), x, n_examples=len(x))


def _label(path: str) -> str:
    p = Path(path)
    return p.name if p.name != "sae" else p.parent.name


# --- mdl ----------------------------------------------------------------------------------------


class MDLRunConfig(RunConfig, RowsInput, MDLConfig):
    """Description length of dictionaries in bits per input; with several, the MDL choice."""

    kind: Literal["mdl"] = "mdl"
    paths: list[str] = Field(min_length=1, description="dictionary folders (several: a sweep to choose from)")


@register(MDLRunConfig)
def mdl(cfg: MDLRunConfig, ctx: Context) -> Outcome:
    x, data = _rows(cfg)
    saes = {p: load_sae(p) for p in cfg.paths}
    results = [{"path": p, **description_length(sae, x, cfg)} for p, sae in saes.items()]
    models = [model_record(p, sae) for p, sae in saes.items()]
    if len(results) == 1:
        r = results[0]
        text = f"{_label(r['path'])}: {r['bits_per_input']:.1f} bits per input at FVU {r['fvu_quantised']:.3f}"
        return Outcome(r, text, models=models, data=[data], access=["weights", "activations"], value=r)
    choice, with_dict = results[select_mdl(results)], results[select_mdl(results, "code+dictionary")]
    plot_frontier(results, [_label(p) for p in cfg.paths], str(ctx.out / "mdl_frontier.png"))
    metrics = {"mdl_choice": choice["path"], "mdl_choice_rule": MDL_RULES["code"][1],
               "mdl_choice_with_dictionary": with_dict["path"],
               "mdl_choice_with_dictionary_rule": MDL_RULES["code+dictionary"][1], "results": results}
    text = (f"MDL choice of {len(results)} by code bits (the paper's): {_label(choice['path'])}, "
            f"{choice['code_bits_per_input']:.1f} code bits per input at FVU {choice['fvu_quantised']:.3f}; "
            f"with the dictionary's bits spread over the {choice['n_inputs']} inputs: {_label(with_dict['path'])}, "
            f"{with_dict['bits_per_input']:.1f} bits per input")
    return Outcome(metrics, text, models=models, data=[data], access=["weights", "activations"], value=metrics)


# --- stitch -------------------------------------------------------------------------------------


class StitchRunConfig(RunConfig, RowsInput, StitchConfig):
    """SAE stitching: novel vs reconstruction latents of a larger dictionary, the MSE along the path."""

    kind: Literal["stitch"] = "stitch"
    small: str = Field(description="the smaller dictionary's folder")
    large: str = Field(description="the larger dictionary's folder (same site)")
    model: str | None = Field(None, description="also CE increase at the path's landmarks: the model")
    site: str | None = Field(None, description="the site the dictionaries read (with model)")
    ce_seqs: int = Field(4, ge=1, description="held-out sequences for CE (with model)")
    skip_seqs: int = Field(320, ge=0, description="leave out the corpus' first sequences (training data)")


def landmark_ce(small: SparseDictionary, large: SparseDictionary, threshold: float, model: str, site: str | None,
                n_seqs: int, skip_seqs: int) -> dict[str, float]:
    """CE increase with the small SAE, the small SAE + novel latents, and the large SAE spliced in."""
    if site is None:
        raise AnatomistError("--model needs --site (the site the dictionaries read)")
    loaded = load_model(model)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{model}' has no tokenizer: CE needs a language model")
    ids = load_corpus("wiki").tokenize(loaded.tokenizer, 128, skip_seqs + n_seqs)[skip_seqs:]
    stages = stage_dictionaries(small, large, match_latents(small, large, threshold))
    return {name: float(evaluate_dictionary(d, loaded.model, ids, site)["ce_increase"]) for name, d in stages.items()}


@register(StitchRunConfig)
def stitch(cfg: StitchRunConfig, ctx: Context) -> Outcome:
    small, large = load_sae(cfg.small), load_sae(cfg.large)
    x, data = _rows(cfg)
    result = stitch_path(small, large, x, cfg)
    access = ["weights", "activations"]
    if cfg.model is not None:
        result["ce_increase"] = landmark_ce(small, large, cfg.threshold, cfg.model, cfg.site, cfg.ce_seqs,
                                            cfg.skip_seqs)
        access.append("outputs")
    plot_stitch_paths({f"{_label(cfg.small)} -> {_label(cfg.large)}": result["path"]}, ctx.out / "stitch_path.png")
    text = (f"{_label(cfg.large)} vs {_label(cfg.small)}: {result['n_novel']} novel latents "
            f"({result['novel_fraction']:.0%}), MSE {result['mse_small']:.4g} -> {result['mse_large']:.4g}")
    models = [model_record(cfg.small, small), model_record(cfg.large, large)]
    return Outcome(result, text, models=models, data=[data], access=access, value=result)


# --- meta ---------------------------------------------------------------------------------------


class MetaRunConfig(RunConfig, MetaConfig):
    """Meta-SAE on a dictionary's unit decoder rows: variance explained, and how chosen latents decompose."""

    kind: Literal["meta"] = "meta"
    path: str = Field(description="the base dictionary's folder")
    d_meta: int = Field(256, gt=0, description="meta-latents")
    latents: list[int] = Field(default_factory=list, description="base latents whose decomposition is reported")


@register(MetaRunConfig)
def meta(cfg: MetaRunConfig, ctx: Context) -> Outcome:
    base = load_sae(cfg.path)
    meta_sae = train_meta_sae(base, cfg)
    save_sae(meta_sae, ctx.out / "meta_sae", metadata={"meta_of": cfg.path})
    dec = decompose(base, meta_sae)
    out: dict[str, Any] = dec.summary()
    for i in cfg.latents:
        out[f"latent_{i}"] = dec.explain(i)
    text = (f"meta-SAE of {cfg.d_meta} on {_label(cfg.path)}'s {out['n_base']} decoder rows: "
            f"{out['explained_variance']:.0%} of their variance explained")
    return Outcome(out, text, models=[model_record(cfg.path, base)], access=["weights"], value=out)


# --- the demo's step ----------------------------------------------------------------------------


class DictionariesTourConfig(RunConfig):
    """Two SAEs of different widths on a packaged image set: their bits (MDL), the stitching path, a meta-SAE."""

    kind: Literal["dictionaries-tour"] = "dictionaries-tour"
    images: str = Field("digits", description="packaged image set whose flattened pixels the SAEs reconstruct")
    widths: tuple[int, int] = Field((32, 128), description="latents of the small and the large TopK SAE")
    k: int = Field(8, gt=0, description="active latents per input of both SAEs")
    steps: int = Field(300, gt=0, description="training steps of each SAE and of the meta-SAE")
    fvu_tolerance: float = Field(0.3, gt=0, description="FVU the quantised code may reach (MDL)")
    meta_latents: int = Field(16, gt=0, description="meta-SAE latents")
    meta_k: int = Field(2, gt=0, description="meta-SAE active latents per decoder row")
    seed: int = Field(0, description="seed of both SAEs")


@register(DictionariesTourConfig)
def dictionaries_tour(cfg: DictionariesTourConfig, ctx: Context) -> Outcome:
    x = load_images(cfg.images).images.flatten(1)
    saes = [fit_rows(x, SAEConfig.parse({"arch": "topk", "d_in": x.shape[1], "d_sae": w, "k": cfg.k}),
                     steps=cfg.steps, seed=cfg.seed) for w in cfg.widths]
    mdl = [description_length(s, x, MDLConfig.parse({"fvu_tolerance": cfg.fvu_tolerance})) for s in saes]
    labels = [f"w{w}_k{cfg.k}" for w in cfg.widths]
    plot_frontier(mdl, labels, str(ctx.out / "mdl_frontier.png"), title=cfg.images)
    stitched = stitch_path(saes[0], saes[1], x)
    meta_cfg = MetaConfig.parse({"d_meta": cfg.meta_latents, "k": cfg.meta_k, "steps": cfg.steps})
    meta_dec = decompose(saes[1], train_meta_sae(saes[1], meta_cfg))
    metrics = {f"{key}_{label}": round(r[src], n) for label, r in zip(labels, mdl, strict=True)
               for key, src, n in (("bits_per_input", "code_bits_per_input", 2), ("fvu", "fvu", 4))}
    metrics |= {"stitch_novel_fraction": round(stitched["novel_fraction"], 4),
                "stitch_mse_monotone": stitched["monotone"],
                "meta_explained_variance": round(meta_dec.explained_variance, 4), "plot": "mdl_frontier.png"}
    summary = (f"{cfg.images}: {labels[0]} {metrics[f'bits_per_input_{labels[0]}']} bits/input vs {labels[1]} "
               f"{metrics[f'bits_per_input_{labels[1]}']}; {100 * stitched['novel_fraction']:.0f}% of the wide SAE's "
               f"latents novel; meta-SAE explains {100 * meta_dec.explained_variance:.0f}% of its decoder")
    return Outcome(metrics, summary, data=[data_record(f"{cfg.images} images", x, n_examples=len(x))],
                   access=["training_data"])
