"""Run kind `routes`: MoE routing as control on held-out text (paths, stability, probes, monosemanticity).

The subject is the tiny MoE LM toy (`moe-lm`, trained first if not cached; its held-out wiki rows) or any
model `load_model` knows with MoE layers (e.g. a local Hugging Face OLMoE folder; wiki rows). The numbers
of `anatomist.routes.analysis.analyze` go to metrics.json with a `headline` section (the averages over
the band, `summary`); the plots go into the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus
from anatomist.nets.assets import load_model
from anatomist.nets.toys import load_toy
from anatomist.nets.toys.moe_lm import MoELMConfig, held_out
from anatomist.routes.analysis import AnalyzeConfig, analyze, summary
from anatomist.routes.control import find_moe_layers
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots.routes import plot_all


class RoutesConfig(RunConfig, AnalyzeConfig):
    """MoE routing as control: expert paths, cross-layer stability, probes and monosemanticity on held-out text."""

    kind: Literal["routes"] = "routes"
    model: str = Field(default="moe-lm", description="'moe-lm' (the tiny MoE LM toy) or a local HF MoE folder")
    n_seqs: int = Field(default=256, ge=1, description="held-out wiki sequences to analyse")
    seq_len: int = Field(default=64, ge=2, description="tokens per sequence for a Hugging Face model (moe-lm: its own)")
    toy_steps: int | None = Field(default=None, gt=0, description="moe-lm: training steps (null: the toy's default)")


@dataclass
class Subject:
    """A model to analyse with its tokenizer and held-out token ids."""

    name: str
    model: nn.Module
    tokenizer: Any
    ids: torch.Tensor  # [n_seqs, seq_len] what the model reads
    label_ids: torch.Tensor  # [n_seqs, seq_len] the same tokens as the tokenizer's ids
    info: dict[str, Any]


def load_moe_model(name: str) -> nn.Module:
    """'moe-lm' (the tiny MoE LM toy, trained first if not cached) or a model `load_model` knows."""
    if name == "moe-lm":
        return load_toy("moe-lm").model
    model = load_model(name).model
    find_moe_layers(model)  # a clear error for a model without MoE layers
    return model


def load_subject(name: str, n_seqs: int, seq_len: int = 64, toy_steps: int | None = None) -> Subject:
    """A model with held-out text: 'moe-lm' on its held-out wiki rows (trained first if not cached),
    or any model `load_model` knows (e.g. a local Hugging Face MoE folder) on wiki rows."""
    if name == "moe-lm":
        toy = load_toy("moe-lm", steps=toy_steps)
        assert isinstance(toy.config, MoELMConfig)
        ids, label_ids, tokenizer = held_out(toy.config, n_seqs)
        info = {"final_loss": toy.final_loss, "from_cache": toy.from_cache, **toy.metrics}
        return Subject(name, toy.model, tokenizer, ids, label_ids, info)
    lm = load_model(name)
    find_moe_layers(lm.model)  # a clear error before tokenising anything
    if lm.tokenizer is None:
        raise AnatomistError(f"model '{name}' has no tokenizer: the routes analysis needs one for token labels")
    rows = load_corpus("wiki").tokenize(lm.tokenizer, seq_len=seq_len, n_seqs=n_seqs)
    return Subject(name, lm.model, lm.tokenizer, rows, rows, {})


def headline(subject: Subject, results: dict[str, Any]) -> dict[str, Any]:
    """The averages over the band, with the subject's own losses where it has them (the toy)."""
    numbers: dict[str, Any] = {"model": subject.name, "tokens": int(subject.ids.numel()), **summary(results)}
    for key in ("test_loss", "unigram_loss", "from_cache"):
        if key in subject.info:
            numbers[key] = subject.info[key]
    return numbers


def flat_top_paths(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top paths as metrics rows: their [token, count] pairs as two lists (a table cell holds a flat list)."""
    return [{**{k: v for k, v in r.items() if k != "tokens"}, "tokens": [t for t, _ in r["tokens"]],
             "token_counts": [c for _, c in r["tokens"]]} for r in rows]


def analyse_subject(cfg: RoutesConfig, subject: Subject, out: Path) -> Outcome:
    """`analyze` on a loaded subject; the plots go to `out`."""
    results = analyze(subject.model, subject.ids, subject.tokenizer, cfg, label_ids=subject.label_ids)
    plot_all(results, out)
    metrics = {**results, "top_paths": flat_top_paths(results["top_paths"]), "headline": headline(subject, results)}
    h = metrics["headline"]
    text = (f"{subject.name}: {h['n_paths']} expert paths over {h['tokens']} tokens; next expert from control "
            f"{h['probe_next_expert_control']:.2f} vs content {h['probe_next_expert_content']:.2f} (probe accuracy)")
    name = getattr(getattr(subject.model, "config", None), "_name_or_path", "") or subject.name
    # routing reads hidden states and router logits (activations) and the router matrices (weights)
    return Outcome(metrics, text, models=[model_record(name, subject.model)],
                   data=[data_record("token ids", subject.ids, n_tokens=subject.ids.numel())],
                   access=["activations", "weights"], value=metrics)


@register(RoutesConfig)
def routes(cfg: RoutesConfig, ctx: Context) -> Outcome:
    return analyse_subject(cfg, load_subject(cfg.model, cfg.n_seqs, cfg.seq_len, cfg.toy_steps), ctx.out)
