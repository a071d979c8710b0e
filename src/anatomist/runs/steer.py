"""Run kind `steer`: continue prompts with and without a dictionary latent added to (or clamped at) its site.

For each latent: its promoted tokens (decoder row through the unembedding), and per prompt the steered and
unsteered continuations and the change in log-probability of the promoted tokens at the next position. The
method and the units of alpha are in `anatomist.interpret.steer`. `anatomist steer PATH --latent I --alpha A
--prompt "..."` is the short form.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus
from anatomist.interpret.reading import check_width, open_dictionary, site_rows
from anatomist.interpret.steer import (
    Mode,
    Sampling,
    Scale,
    Steerer,
    Steering,
    SteerResult,
    clearest_latents,
    typical_norm,
)
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site
from anatomist.report.sources import unembedding
from anatomist.runs.base import Context, Outcome, RunConfig, register


class SteerConfig(RunConfig):
    """Steer a language model with a dictionary latent: steered vs unsteered continuations, promoted tokens."""

    kind: Literal["steer"] = "steer"
    smoke: ClassVar[tuple[str, ...]] = ("path=basis:pca", "norm_seqs=1", "seq_len=16", "max_new_tokens=3",
                                        "auto_latents=1", "prompts=[\"The\"]")
    path: str = Field(description="a dictionary folder (anatomist, SAELens or sparsify format), or basis:NAME "
                      "(neurons, pca, ica, random: fitted on the site's activations over the corpus rows)")
    model: str = Field("smollm2", description="causal language model (packaged name or local HF folder)")
    site: str | None = Field(None, description="site the dictionary reads; null: the one its metadata names")
    latents: tuple[int, ...] = Field((), description="latents to steer with; empty: the auto_latents latents whose "
                                     "top promoted token stands out most")
    auto_latents: int = Field(3, gt=0, description="how many latents to pick when latents is empty")
    prompts: tuple[str, ...] = Field(("I went to the", "The best thing about"), min_length=1,
                                     description="prompts to continue (BOS is put in front)")
    mode: Mode = Field("add", description="add: add alpha x the unit decoder direction; clamp: set the latent "
                       "to alpha (encode, set, decode, keep the error term)")
    alpha: float = Field(1.0, description="add: steering strength (see scale); clamp: the latent's value")
    scale: Scale = Field("norm", description="add: alpha in units of the site's median activation norm (norm) or "
                         "as is (raw)")
    max_new_tokens: int = Field(20, gt=0, description="tokens generated per continuation")
    sample: bool = Field(False, description="sample (seeded) instead of greedy decoding")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    seed: int = Field(0, description="sampling seed (and the random basis' seed)")
    top_tokens: int = Field(10, gt=0, description="promoted tokens reported per latent")
    corpus: str = Field("wiki", description=f"text for the typical norm (and fitting a basis): {CORPUS_HELP}")
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    norm_seqs: int = Field(8, gt=0, description="corpus rows for the site's typical norm")
    seq_len: int = Field(128, gt=1, description="tokens per corpus row")
    device: str = Field("cpu", description="cpu, cuda or auto")


def _loaded_lm(name: str, device: str) -> LoadedModel:
    loaded = load_model(name, device=device)
    if loaded.tokenizer is None or loaded.kind != "causal-lm":
        raise AnatomistError(f"model '{name}' is not a causal language model with a tokenizer: steering generates text")
    return loaded


def _results_metrics(results: list[SteerResult], amount: float, norm: float | None) -> dict[str, Any]:
    by_latent: dict[int, list[SteerResult]] = {}
    for r in results:
        by_latent.setdefault(r.latent, []).append(r)
    continuations = {f"latent {r.latent} / prompt {i % len(by_latent[r.latent])}": {
        "latent": r.latent, "prompt": r.prompt, "steered": r.steered, "unsteered": r.unsteered,
        "changed": r.steered != r.unsteered, "mean_delta_logprob": r.mean_delta_logprob}
        for i, r in enumerate(results)}
    promoted = {f"latent {lat}: {rank}": {"latent": lat, "token": p["token"], "id": p["id"],
                                          "logit_effect": p["logit_effect"],
                                          "delta_logprob": sum(r.promoted[rank]["delta_logprob"] for r in rs) / len(rs)}
                for lat, rs in by_latent.items() for rank, p in enumerate(rs[0].promoted)}
    deltas = [r.mean_delta_logprob for r in results if r.promoted]
    return {"amount": amount, "typical_norm": norm, "latents": list(by_latent),
            "mean_delta_logprob": sum(deltas) / len(deltas) if deltas else None,
            "changed_fraction": sum(r.steered != r.unsteered for r in results) / len(results),
            "continuations": continuations, **({"promoted": promoted} if promoted else {})}


@register(SteerConfig)
def steer(cfg: SteerConfig, ctx: Context) -> Outcome:
    loaded = _loaded_lm(cfg.model, cfg.device)
    ids = load_corpus(cfg.corpus, cfg.text_field).tokenize(loaded.tokenizer, cfg.seq_len, cfg.norm_seqs)

    @cache  # harvested once, and only if a basis is fitted or alpha is in norm units
    def rows(site: Site) -> torch.Tensor:
        return site_rows(loaded.model, ids, site)

    sae, site = open_dictionary(cfg.path, cfg.site, rows, seed=cfg.seed)
    sae = sae.to(loaded.device)
    unembed = unembedding(loaded.model)
    norm = typical_norm(rows(site)) if cfg.mode == "add" and cfg.scale == "norm" else None
    if rows.cache_info().currsize:
        check_width(sae, rows(site), site)
    amount = cfg.alpha * norm if norm is not None else cfg.alpha  # add in norm units; else raw (or the clamp value)
    latents = list(cfg.latents) or (clearest_latents(sae, unembed, cfg.auto_latents) if unembed is not None
                                    else list(range(cfg.auto_latents)))
    steerer = Steerer(loaded.model, loaded.tokenizer, sae, site, unembed)
    stop = tuple(i for i in [getattr(loaded.tokenizer, "eos_token_id", None)] if i is not None)
    sampling = Sampling(cfg.max_new_tokens, cfg.sample, cfg.temperature, cfg.seed, stop)
    results = [steerer.run(p, Steering(lat, cfg.mode, amount), sampling, cfg.top_tokens)
               for lat in latents for p in cfg.prompts]
    metrics = {"site": str(site), **_results_metrics(results, amount, norm)}
    summary = (f"{cfg.mode} latent(s) {', '.join(map(str, latents))} of {cfg.path} at {site} (amount {amount:.3g}): "
               f"{sum(r.steered != r.unsteered for r in results)}/{len(results)} continuations changed")
    if metrics["mean_delta_logprob"] is not None:
        summary += f", promoted tokens' log-prob {metrics['mean_delta_logprob']:+.3g} on average"
    data = [data_record(f"{cfg.corpus} (sequences 0..{len(ids)}, typical norm)", ids, n_tokens=int(ids.numel()))]
    return Outcome(metrics, summary, models=[model_record(cfg.model, loaded.model)], data=data,
                   access=["activations", "outputs", "weights"], value=results)
