"""Steering a language model with a dictionary latent (Turner et al. 2023, activation addition; Templeton et al.
2024, feature clamping), and what the latent promotes through the unembedding.

Two interventions at the dictionary's site, applied at every position of every forward while generating (the
prompt's positions in the first forward, each new token's in the next ones, so the KV cache holds steered keys):

- add:   v <- v + amount * d_i, with d_i the latent's decoder row scaled to unit norm. `amount` is alpha times
         the site's typical norm (the median L2 norm of its activations on corpus text, BOS left out: the residual
         stream's scale grows with depth, so alpha = 0.5 means "half a typical activation" at any layer) or,
         with `scale="raw"`, alpha itself.
- clamp: encode v, set latent i to `value`, decode, and keep the dictionary's error term (v - decode(encode(v))).
         As decoding is linear, that is v + (value - a_i(v)) * W_dec[i] exactly, which is how it is computed:
         clamping a latent to the value it already has adds exactly zero.

Promoted tokens are the top entries of `unembed @ d_i` (the direct logit effect of the direction, the unembedding
including the final norm's gain, as in `anatomist.report.sources.unembedding`); the steering report gives the change
in their log-probability at the position after the prompt.

Generation is greedy, or sampled at a temperature from a seeded generator (the same seed gives the same text).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.features import SparseDictionary
from anatomist.nets.sites import Site, SiteFn, splice

Mode = Literal["add", "clamp"]
Scale = Literal["norm", "raw"]


def check_latent(sae: SparseDictionary, latent: int) -> None:
    if not 0 <= latent < sae.cfg.d_sae:
        raise AnatomistError(f"latent {latent} is out of range: the dictionary has {sae.cfg.d_sae} latents")


def unit_direction(sae: SparseDictionary, latent: int) -> Tensor:
    """The latent's decoder row [d_out], scaled to unit norm (float32)."""
    check_latent(sae, latent)
    row = sae.W_dec.detach()[latent].float()
    norm = row.norm()
    if norm == 0:
        raise AnatomistError(f"latent {latent} has a zero decoder row: it has no direction to steer along")
    return row / norm


def typical_norm(rows: Tensor) -> float:
    """The median L2 norm of activation rows [n, d]: the unit of alpha when steering with scale='norm' (the median,
    as a few positions of a residual stream carry norms many times the rest)."""
    if rows.ndim != 2 or len(rows) == 0:
        raise AnatomistError(f"typical_norm: need activation rows [n, d], got shape {list(rows.shape)}")
    return float(rows.float().norm(dim=-1).median())


def add_direction(direction: Tensor, amount: float) -> SiteFn:
    """v -> v + amount * direction at every position."""

    def add(v: Tensor) -> Tensor:
        return v + amount * direction.to(v.device, v.dtype)

    return add


def clamp_latent(sae: SparseDictionary, latent: int, value: float) -> SiteFn:
    """v -> decode(encode(v) with latent i set to `value`) + error term, i.e. v + (value - a_i(v)) * W_dec[i]."""
    check_latent(sae, latent)
    row = sae.W_dec.detach()[latent]

    def clamp(v: Tensor) -> Tensor:
        a_i = sae.encode(v.reshape(-1, v.shape[-1]))[:, latent].reshape(*v.shape[:-1], 1)
        return v + ((value - a_i) * row).to(v.dtype)

    return clamp


@dataclass(frozen=True)
class Steering:
    """One intervention: which latent, how (add or clamp), and how much (in the site's units, already scaled)."""

    latent: int
    mode: Mode
    amount: float

    def site_fn(self, sae: SparseDictionary) -> SiteFn:
        if self.mode == "add":
            return add_direction(unit_direction(sae, self.latent), self.amount)
        if self.mode == "clamp":
            return clamp_latent(sae, self.latent, self.amount)
        raise AnatomistError(f"steering mode must be 'add' or 'clamp', got '{self.mode}'")


@contextmanager
def steered(model: nn.Module, sae: SparseDictionary, site: Site, steering: Steering | None) -> Iterator[nn.Module]:
    """Within the block every forward of `model` is steered (nothing changes with `steering=None`)."""
    if steering is None:
        yield model
        return
    with torch.no_grad(), splice(model, {site: steering.site_fn(sae)}):
        yield model


# --- generation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Greedy decoding (`sample=False`) or sampling at `temperature` from a generator seeded with `seed`."""

    max_new_tokens: int = 20
    sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()


def _next_token(logits: Tensor, sampling: Sampling, gen: torch.Generator) -> int:
    if not sampling.sample:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / sampling.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: Sequence[int], sampling: Sampling) -> list[int]:
    """The new token ids after `prompt_ids` (KV-cached decoding; stops early at a stop id, which is kept)."""
    if not prompt_ids:
        raise AnatomistError("generate: the prompt has no tokens")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(sampling.seed)
    cache_arg = _cache_argument(model)
    out = model(input_ids=torch.tensor([list(prompt_ids)], device=device), use_cache=True)
    new: list[int] = []
    for _ in range(sampling.max_new_tokens):
        token = _next_token(out.logits[0, -1].float().cpu(), sampling, gen)
        new.append(token)
        if token in sampling.stop_ids:
            break
        cache = getattr(out, cache_arg)
        out = model(input_ids=torch.tensor([[token]], device=device), use_cache=True, **{cache_arg: cache})
    return new


def _cache_argument(model: nn.Module) -> str:
    """The KV cache's name in the model's forward and output: `cache` (transformers 5.x), else past_key_values."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def next_token_logprobs(model: nn.Module, prompt_ids: Sequence[int]) -> Tensor:
    """log p(next token | prompt) [vocab], float32 on the CPU."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([list(prompt_ids)], device=device)).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


# --- promoted tokens ----------------------------------------------------------------------------------------


def logit_effect(unembed: Tensor, direction: Tensor) -> Tensor:
    """unembed [vocab, d] @ direction [d]: each token's logit change per unit of the direction."""
    if unembed.shape[1] != direction.shape[0]:
        raise AnatomistError(f"the unembedding is [{unembed.shape[0]}, {unembed.shape[1]}] but the direction has "
                             f"width {direction.shape[0]}: the dictionary's site is not the residual stream's width")
    return unembed.float() @ direction.float()


def promoted_tokens(unembed: Tensor, direction: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(token ids [n], logit effects [n]) of the n tokens the direction raises most."""
    top = torch.topk(logit_effect(unembed, direction), min(n, unembed.shape[0]))
    return top.indices, top.values


def clearest_latents(sae: SparseDictionary, unembed: Tensor, n: int, chunk: int = 256) -> list[int]:
    """The n latents whose top promoted token stands out most: largest (max - mean) / std of unembed @ d_i.

    A latent that writes one token (or a few) has a sharp peak; a generic or dead direction has none.
    """
    w_u = unembed.float()
    scores = []
    for start in range(0, sae.cfg.d_sae, chunk):
        rows = sae.W_dec.detach()[start:start + chunk].float()
        rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        effect = rows @ w_u.T  # [chunk, vocab]
        scores.append((effect.max(-1).values - effect.mean(-1)) / effect.std(-1).clamp_min(1e-12))
    return torch.cat(scores).topk(min(n, sae.cfg.d_sae)).indices.tolist()


# --- one steering experiment ----------------------------------------------------------------------------------


@dataclass
class SteerResult:
    """A prompt continued with and without steering, and the steering's effect on the promoted tokens."""

    latent: int
    prompt: str
    steered: str
    unsteered: str
    promoted: list[dict[str, Any]] = field(default_factory=list)  # token, id, logit_effect, delta_logprob

    @property
    def mean_delta_logprob(self) -> float:
        deltas = [p["delta_logprob"] for p in self.promoted]
        return sum(deltas) / len(deltas) if deltas else float("nan")


@dataclass
class Steerer:
    """A model, its tokenizer, a dictionary at a site, and the unembedding used to name promoted tokens."""

    model: nn.Module
    tokenizer: Any
    sae: SparseDictionary
    site: Site
    unembed: Tensor | None = None

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = list(self.tokenizer(prompt)["input_ids"])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]  # what the model saw in training: every corpus row starts with BOS
        return ids

    def continuation(self, prompt_ids: list[int], steering: Steering | None, sampling: Sampling) -> str:
        with steered(self.model, self.sae, self.site, steering):
            return str(self.tokenizer.decode(generate(self.model, prompt_ids, sampling)))

    def logprobs(self, prompt_ids: list[int], steering: Steering | None) -> Tensor:
        with steered(self.model, self.sae, self.site, steering):
            return next_token_logprobs(self.model, prompt_ids)

    def run(self, prompt: str, steering: Steering, sampling: Sampling, top_tokens: int = 10) -> SteerResult:
        ids = self.encode_prompt(prompt)
        result = SteerResult(steering.latent, prompt, self.continuation(ids, steering, sampling),
                             self.continuation(ids, None, sampling))
        if self.unembed is not None:
            result.promoted = self.promoted_report(ids, steering, top_tokens)
        return result

    def promoted_report(self, ids: list[int], steering: Steering, n: int) -> list[dict[str, Any]]:
        assert self.unembed is not None
        tokens, effects = promoted_tokens(self.unembed, unit_direction(self.sae, steering.latent), n)
        delta = self.logprobs(ids, steering) - self.logprobs(ids, None)
        return [{"token": self.tokenizer.decode([int(t)]), "id": int(t), "logit_effect": float(e),
                 "delta_logprob": float(delta[t])} for t, e in zip(tokens, effects, strict=True)]
