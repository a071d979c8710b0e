"""Run kind `dashboard`: the feature dashboard of a dictionary on a language model or an image model.

The dashboard is written into the run folder itself (dashboard.json and latents_NNN.json beside config.yaml,
metrics.json and provenance.json), so `anatomist report` finds it and links its pages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus, load_images
from anatomist.features.base import SparseDictionary
from anatomist.features.formats import load_sae
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.vision import is_vision_transformer, vision_layout
from anatomist.report.dashboard import INDEX
from anatomist.report.sources import image_dashboard, lm_dashboard
from anatomist.report.vision import vit_dashboard
from anatomist.runs.base import Context, Outcome, RunConfig, register


class DashboardConfig(RunConfig):
    """Feature dashboard of a dictionary on a language model, over cached activations (harvested once)."""

    kind: Literal["dashboard"] = "dashboard"
    sae: str = Field(description="a dictionary folder (anatomist, SAELens or sparsify format)")
    model: str | None = Field(None, description="model it reads (null: the one its metadata names)")
    site: str | None = Field(None, description="site it reads (null: the one its metadata names)")
    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    n_seqs: int = Field(256, gt=0, description="sequences of the corpus to pass over")
    seq_len: int = Field(128, gt=1, description="tokens per sequence (BOS included, left out of the rows)")
    block_seqs: int = Field(32, gt=0, description="sequences per harvested block; a training run's value reuses "
                                                  "its cached activations")
    images: str | None = Field(None, description="image models: a packaged image set (mnist, digits) or a folder "
                                                 "of images whose top images each latent shows, instead of corpus text")
    max_images: int | None = Field(None, gt=0, description="images: pass over only the first N (in the set's "
                                                           "seed-0 shuffled order); null: all")


def model_and_site(cfg: DashboardConfig, sae: SparseDictionary) -> tuple[str, str]:
    """The model and site from the config, else from the dictionary's metadata (anatomist or SAELens names)."""
    model = cfg.model or sae.metadata.get("model") or sae.metadata.get("model_name")
    site = cfg.site or sae.metadata.get("site") or sae.metadata.get("hook_name")
    if not model or not site:
        raise AnatomistError(f"{cfg.sae}: its metadata names no model/site; pass --model and --site")
    return str(model), str(site)


@register(DashboardConfig)
def dashboard(cfg: DashboardConfig, ctx: Context) -> Outcome:
    sae = load_sae(cfg.sae)
    model, site = model_and_site(cfg, sae)
    loaded = load_model(model)
    if cfg.images is not None:
        return _image_dashboard(cfg, ctx, sae, loaded, site)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{model}' has no tokenizer: token dashboards need one")
    tokens = load_corpus(cfg.corpus, cfg.text_field).tokenize(loaded.tokenizer, seq_len=cfg.seq_len, n_seqs=cfg.n_seqs)
    times = lm_dashboard(sae, ctx.out, model_name=model, site=site, tokens=tokens, loaded=loaded,
                         block_seqs=cfg.block_seqs)
    rows = int(times["rows"])
    never = sum(1 for d in load_json(ctx.out / INDEX)["latents"]["density"] if not d)
    metrics = {"model": model, "site": site, "latents": sae.cfg.d_sae, "tokens": rows, "never_fired": never,
               **{k: round(v, 2) for k, v in times.items() if k != "rows"}}
    summary = (f"dashboard of {sae.cfg.d_sae} latents on {model} {site} over {rows:,} tokens: {never} never fired "
               f"(pass {times['pass_s']:.1f} s)")
    return Outcome(metrics, summary,
                   models=[model_record(model, loaded.model), model_record(f"dictionary {cfg.sae}", sae)],
                   data=[data_record(cfg.corpus, tokens, n_tokens=rows)],
                   access=["activations", "weights"],  # weights: the unembedding, for logit effects
                   value=ctx.out)


def _image_dashboard(cfg: DashboardConfig, ctx: Context, sae: SparseDictionary, loaded: LoadedModel,
                     site: str) -> Outcome:
    """Top-activating images per latent of a dictionary on an image model's [batch, d] site, or, on a vision
    transformer, per-token rows with patch heatmaps (`report.vision`)."""
    data = load_images(cfg.images or "").shuffled(seed=0)
    images, labels = data.images[: cfg.max_images], data.labels[: cfg.max_images]
    meta = {"model": loaded.name, "images": f"{cfg.images} ({len(images):,} images)"}
    if is_vision_transformer(loaded.model):
        vit_dashboard(sae, ctx.out, model=loaded.model, site=site, images=images, layout=vision_layout(loaded.model),
                      labels=None if bool((labels < 0).any()) else labels, classes=data.classes, meta=meta)
    else:
        image_dashboard(sae, ctx.out, model=loaded.model, site=site, images=images, meta=meta)
    never = sum(1 for d in load_json(ctx.out / INDEX)["latents"]["density"] if not d)
    summary = f"image dashboard of {sae.cfg.d_sae} latents on {loaded.name} {site} over {len(images):,} images"
    return Outcome({"model": loaded.name, "site": site, "latents": sae.cfg.d_sae, "images": len(images),
                    "never_fired": never}, summary + f": {never} never fired",
                   models=[model_record(loaded.name, loaded.model), model_record(f"dictionary {cfg.sae}", sae)],
                   data=[data_record(f"{cfg.images} images", images, n_examples=len(images))],
                   access=["activations"], value=ctx.out)
