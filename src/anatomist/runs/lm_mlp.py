"""Run kind `spd-lm-mlp`: SPD on one MLP of a real language model (SmolLM2-135M), cheap enough for a CPU.

The design choice that makes it cheap: decompose the MLP of a decoder layer through a *truncated
model* that starts at that MLP. For each token we cache, once, the residual stream just before
the layer's MLP (`resid_mid`, the input of `post_attention_layernorm`); the truncated model is

    resid_mid ↦ lm_head(norm(resid_mid + mlp(post_attention_layernorm(resid_mid))))

built from the model's own modules (no copies). For the LAST layer (the default) this is exactly
the model from that MLP onward, so the KL objective is the KL of the real next-token
distribution. For an earlier layer it skips the later layers and reads the logits off the
residual stream ("logit lens"), an approximation. Tokens are independent in this model, so a
batch is any set of cached positions, and no attention is ever recomputed.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus
from anatomist.evaluate.recovery import alive, ci_l0
from anatomist.mechanisms import spd
from anatomist.mechanisms.spd import SPDConfig
from anatomist.nets.assets import load_model
from anatomist.nets.sites import Site, capture
from anatomist.runs.base import CONFIG, Context, Outcome, RunConfig, register
from anatomist.runs.mechanisms import checkpoint_to_score

TARGETS = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


class MLPToLogits(nn.Module):
    """The model from decoder layer `layer`'s MLP onward, with later layers cut (see module docstring)."""

    post_attention_layernorm: nn.Module
    mlp: nn.Module
    norm: nn.Module
    lm_head: nn.Module

    def __init__(self, lm: Any, layer: int):
        super().__init__()
        block = lm.model.layers[layer]  # an HF causal LM: lm.model.layers, lm.model.norm, lm.lm_head
        self.post_attention_layernorm = block.post_attention_layernorm
        self.mlp = block.mlp
        self.norm = lm.model.norm
        self.lm_head = lm.lm_head

    def forward(self, resid_mid: Tensor) -> Tensor:
        return self.lm_head(self.norm(resid_mid + self.mlp(self.post_attention_layernorm(resid_mid))))


class LMMLPConfig(RunConfig):
    """SPD on one MLP of a language model (SmolLM2) with the KL objective: which MLP, how many tokens, SPD settings."""

    kind: Literal["spd-lm-mlp"] = "spd-lm-mlp"
    smoke: ClassVar[tuple[str, ...]] = ("n_tokens=64", "n_eval_tokens=32", "spd.steps=2", "spd.C=8", "spd.batch_size=8")
    model: str = Field(default="smollm2", description="Packaged model name or local HF folder.")
    layer: int = Field(default=-1, description="Decoder layer whose MLP is decomposed (-1: the last, exact).")
    n_tokens: int = Field(default=4096, description="Wiki tokens cached for training.", gt=0)
    n_eval_tokens: int = Field(default=512, description="Held-out wiki tokens for the final numbers.", gt=0)
    seq_len: int = Field(default=64, description="Tokens per sequence fed to the model when caching.", gt=1)
    spd: SPDConfig = Field(
        default_factory=lambda: SPDConfig(
            C=640,
            init="svd",
            steps=120,
            batch_size=32,
            lr=1e-4,
            lr_warmup=0.05,
            # ≈ the number of decomposed entries (2.65M): with weight 1 the KL terms pull ΣUVᵀ a few percent
            # off the weights within 120 steps, and this last MLP is so sensitive that costs ~2 nats of KL
            faithfulness_coeff=1e6,
            importance_minimality_coeff=1e-4,
            pnorm=1.0,
            output_loss="kl",
            log_every=20,
        ),
        description="SPD hyperparameters (batch_size counts tokens).",
    )


def resolve_layer(layer: int, n_layers: int) -> int:
    """`layer` as an index in [0, n_layers) (negative counts from the end); out of range is an error, not a wrap."""
    if not -n_layers <= layer < n_layers:
        raise AnatomistError(f"layer: {layer} is out of range for a model with {n_layers} decoder layers")
    return layer % n_layers


@torch.no_grad()
def cache_resid_mid(lm: Any, layer: int, tokens: Tensor, batch: int = 8) -> Tensor:
    """The residual stream before `layer`'s MLP for every token: `[n_seqs·seq_len, d_model]`."""
    site = Site(f"model.layers.{layer}.post_attention_layernorm", "input")
    parts = [capture(lm, chunk, site)[site] for chunk in tokens.split(batch)]
    return torch.cat(parts).flatten(0, 1)


@register(LMMLPConfig, trains=True)
def run_lm_mlp(config: LMMLPConfig, ctx: Context) -> Outcome:
    """Cache activations, fit SPD to the MLP's three projections, and report alive components and KLs."""
    lm = load_model(config.model)
    hf: Any = lm.model
    layer = resolve_layer(config.layer, len(hf.model.layers))
    start = time.perf_counter()
    tokens = corpus_tokens(config, lm.tokenizer)
    resid = cache_resid_mid(hf, layer, tokens)  # [n, d_model]
    t_cache = time.perf_counter() - start
    train, held_out = resid[: config.n_tokens], resid[config.n_tokens : config.n_tokens + config.n_eval_tokens]

    head = MLPToLogits(hf, layer)
    cfg = config.spd
    g = torch.Generator().manual_seed(cfg.seed + 2)
    batches = (train[torch.randint(len(train), (cfg.batch_size,), generator=g)] for _ in itertools.count())
    start = time.perf_counter()
    dec = spd.decompose(head, batches, TARGETS, cfg, run_dir=ctx.out, resume=ctx.resume, generators={"data": g})
    t_fit = time.perf_counter() - start
    dec.save(ctx.out)
    metrics: dict[str, Any] = {
        "model": config.model,
        "layer": layer,
        "exact_rest_of_model": layer == len(hf.model.layers) - 1,
        "train_tokens": len(train),
        "eval_tokens": len(held_out),
        "C": cfg.C,
        "steps": cfg.steps,
        "cache_seconds": round(t_cache, 1),
        "fit_seconds": round(t_fit, 1),
        **score_lm_mlp(dec, head, held_out),
        "final_faithfulness": dec.history[-1]["faithfulness"],
        "out": str(ctx.out),
    }
    summary = (f"SPD on {config.model} layer {layer} MLP: {sum(metrics['alive'].values())} alive subcomponents of "
               f"{3 * cfg.C}, KL {metrics['kl_ci_masked']:.3g} with CI masks (MLP ablated: "
               f"{metrics['kl_mlp_ablated']:.3g})")
    data = [data_record("wiki (cached resid_mid)", tokens, n_tokens=int(tokens.numel()))]
    return Outcome(metrics, summary, models=[model_record(config.model, hf)], data=data,
                   access=["outputs", "activations", "weights", "gradients"], value=dec)


def corpus_tokens(config: LMMLPConfig, tokenizer: Any) -> Tensor:
    """The wiki rows a run caches: enough `seq_len` rows for its training tokens, then its held-out tokens."""
    n_seqs = -(-(config.n_tokens + config.n_eval_tokens) // config.seq_len)
    return load_corpus("wiki").tokenize(tokenizer, seq_len=config.seq_len, n_seqs=n_seqs)


@torch.no_grad()
def score_lm_mlp(dec: spd.SPDDecomposition, head: nn.Module, held_out: Tensor) -> dict[str, Any]:
    """The held-out KLs (`held_out_kls`), alive subcomponents and CI L0 per token, and ‖W − ΣUVᵀ‖/‖W‖ per matrix."""
    kls, ci = held_out_kls(dec, head, held_out)
    return {
        **kls,
        "kl_ci_over_ablation": kls["kl_ci_masked"] / max(kls["kl_mlp_ablated"], 1e-12),
        "alive": {n: int(alive(c).sum()) for n, c in ci.items()},
        "ci_l0": {n: ci_l0(c) for n, c in ci.items()},
        "delta_norm": {n: float(dec.weight_delta(n).norm() / dec.target_weight(n).norm()) for n in ci},
    }


@torch.no_grad()
def held_out_kls(
    dec: spd.SPDDecomposition, head: nn.Module, held_out: Tensor
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """KL of the model's next-token distribution under CI masks, no masks, stochastic masks, and the MLP ablated.

    With delta components, the masked runs keep them on (they are always available) and two more numbers
    say what the subcomponents alone carry: CI masks and mask 1 without the deltas. The ablation drops both.
    """
    target = head(held_out)
    ci = dec.importances(held_out)
    zeros = {n: torch.zeros_like(c) for n, c in ci.items()}
    kl = {
        "kl_ci_masked": dec.run_with_masks(held_out, ci),
        "kl_unmasked": dec.run_with_masks(held_out, dict.fromkeys(ci)),
        "kl_stochastic": dec.run_with_masks(held_out, spd.stochastic_masks(ci, torch.Generator().manual_seed(0))),
        "kl_mlp_ablated": dec.run_with_masks(held_out, zeros, delta_masks={}),
    }
    if dec.config.delta_component:
        kl["kl_ci_masked_no_delta"] = dec.run_with_masks(held_out, ci, delta_masks={})
        kl["kl_all_on_no_delta"] = dec.run_with_masks(held_out, {n: torch.ones_like(c) for n, c in ci.items()},
                                                      delta_masks={})
    return {k: float(spd.output_loss(v, target, "kl")) for k, v in kl.items()}, ci


def score_lm_mlp_checkpoint(run_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """Score the newest (or a given) checkpoint of an `spd-lm-mlp` run folder on its held-out tokens.

    A run of hours can be judged while it trains or after it was stopped: the numbers are the ones its
    metrics.json would hold (`score_lm_mlp`), for the factors and CI networks of that checkpoint.
    """
    run_dir = Path(run_dir)
    ckpt, step = checkpoint_to_score(run_dir, step)
    if not (run_dir / CONFIG).is_file():
        raise AnatomistError(f"{run_dir}: no {CONFIG}; not a run folder of `anatomist spd lm-mlp`")
    config = LMMLPConfig.from_yaml(run_dir / CONFIG)
    lm = load_model(config.model)
    hf: Any = lm.model
    layer = resolve_layer(config.layer, len(hf.model.layers))
    tokens = corpus_tokens(config, lm.tokenizer)
    first = config.n_tokens // config.seq_len  # only the rows that hold held-out tokens go through the model
    resid = cache_resid_mid(hf, layer, tokens[first:])
    offset = config.n_tokens - first * config.seq_len
    held_out = resid[offset : offset + config.n_eval_tokens]
    head = MLPToLogits(hf, layer)
    dec = spd.initial_decomposition(head, TARGETS, config.spd)
    ckpt.load_model(dec, step)
    return {"model": config.model, "layer": layer, "step": step, "eval_tokens": len(held_out),
            **score_lm_mlp(dec, head, held_out), "run": str(run_dir)}
