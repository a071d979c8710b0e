"""Run kind `site-read`: read one site of a language model over a corpus, and time it against a full forward."""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import Field

from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus
from anatomist.nets import Site, capture, load_model
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots import pyplot, save_figure


class SiteReadConfig(RunConfig):
    """Read a site of a language model over corpus text: activation statistics and the cost of stopping early."""

    kind: Literal["site-read"] = "site-read"
    model: str = Field("smollm2", description="packaged model name or a local Hugging Face folder")
    site: str = Field("model.layers.6", description="site to read, e.g. model.layers.6 (a decoder layer's output)")
    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    n_seqs: int = Field(32, gt=0, description="sequences read")
    seq_len: int = Field(128, gt=1, description="tokens per sequence (BOS included; left out of the statistics)")
    batch_size: int = Field(8, gt=0, description="sequences per forward")
    timed_full_batches: int = Field(2, ge=1, description="batches run through the whole model to time a full forward")


@register(SiteReadConfig)
def read_site(cfg: SiteReadConfig, ctx: Context) -> Outcome:
    lm = load_model(cfg.model)
    tokens = load_corpus(cfg.corpus, cfg.text_field).tokenize(lm.tokenizer, seq_len=cfg.seq_len, n_seqs=cfg.n_seqs)
    batches = tokens.split(cfg.batch_size)
    site = Site.parse(cfg.site)
    start = time.perf_counter()
    acts = torch.cat([capture(lm.model, batch, site)[site] for batch in batches]).flatten(0, 1)
    t_capture = time.perf_counter() - start
    t_full = _time_full_forward(lm.model, batches[: cfg.timed_full_batches]) * len(batches)
    acts = acts[torch.arange(len(acts)) % cfg.seq_len != 0]  # the BOS position is an outlier in every LM
    mean_abs = acts.abs().mean(0)
    _plot_dims(mean_abs, ctx, f"{cfg.model} {cfg.site} over {len(acts)} tokens")
    top = mean_abs.topk(3)
    numbers = {
        "site": cfg.site, "tokens": int(tokens.numel()), "d_model": int(acts.shape[-1]),
        "capture_tokens_per_s": round(tokens.numel() / t_capture, 1),
        "full_forward_tokens_per_s": round(tokens.numel() / t_full, 1),
        "capture_speedup": round(t_full / t_capture, 2), "mean_norm": round(acts.norm(dim=-1).mean().item(), 2),
        "outlier_dims": [int(i) for i in top.indices.tolist()],
        "outlier_mean_abs": [round(v, 2) for v in top.values.tolist()], "plot": "residual_dims.png",
    }
    summary = (f"{cfg.model} {cfg.site} read over {numbers['tokens']:,} tokens: stopping after the site is "
               f"{numbers['capture_speedup']}× faster than a full forward; "
               f"outlier dimensions {numbers['outlier_dims']}")
    return Outcome(numbers, summary, models=[model_record(cfg.model, lm.model)],
                   data=[data_record(f"{cfg.corpus} (first {cfg.n_seqs} sequences)", tokens)],
                   access=["activations", "outputs"])


@torch.no_grad()
def _time_full_forward(model: torch.nn.Module, batches: tuple[torch.Tensor, ...]) -> float:
    """Seconds per batch of a forward through the whole model (logits included)."""
    start = time.perf_counter()
    for batch in batches:
        model(batch)
    return (time.perf_counter() - start) / len(batches)


def _plot_dims(mean_abs: torch.Tensor, ctx: Context, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(range(len(mean_abs)), mean_abs.numpy(), width=1.0)
    ax.set(xlabel="residual dimension", ylabel="mean |activation|", title=title)
    save_figure(fig, ctx.out / "residual_dims.png", dpi=100)
