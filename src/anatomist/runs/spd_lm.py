"""Run kind `spd-lm`: SPD on every MLP and attention matrix of a whole (tiny) language model.

The model is a cached `llama-lm-*` toy (`nets.toys.llama_lm`: a Hugging Face Llama of 1–2 layers trained
on the wiki text), decomposed end to end with the KL objective and the reference's later recipe
(`spd.SPDConfig`'s options): a delta component per matrix instead of a faithfulness loss, a
faithfulness warm-up of the factors, stochastic masks on all matrices and on random subsets of them,
adversarial (PGD) masks, and p annealed downwards in the importance-minimality loss.

Scored on held-out rows (KL of the next-token distribution against the unchanged model, nats per token):

* `kl.ci_masked`     masks = causal importances (the delta components on: they are always available)
* `kl.ci_masked_no_delta`   the same without the delta components (how much the subcomponents alone carry)
* `kl.stochastic`    masks g + (1 − g)·U(0, 1)
* `kl.all_on` / `kl.all_on_no_delta`   every mask 1 (exactly 0 with the deltas) / the subcomponents alone
* `kl.all_off`       every decomposed matrix removed (masks 0, no deltas): the ablation the others are read against

and per matrix: alive subcomponents (CI > 0.1 on some held-out token), CI L0 per token (CI > 0.01), its
fraction of C, and ‖W − ΣUVᵀ‖/‖W‖. A few subcomponents are described by the tokens they are most important
on and the tokens whose next-token loss rises most when they alone are switched off.

    anatomist run experiments/spd_llama_lm_1.yaml --out runs/spd_llama_lm_1 [--resume]
    torchrun --nproc_per_node 2 -m anatomist run experiments/spd_llama_lm_1.yaml --out runs/spd_llama_lm_1

Data-parallel under torchrun: each rank fits on its `batch_size / N` rows of every batch (`training.fit`),
then every rank scores the same held-out rows and rank 0 alone writes the folder.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from anatomist.core import distributed
from anatomist.core.io import save_json
from anatomist.core.provenance import data_record, model_record
from anatomist.evaluate.recovery import alive, ci_l0
from anatomist.mechanisms import spd
from anatomist.mechanisms.spd import SPDConfig, SPDDecomposition
from anatomist.nets.toys import load_toy
from anatomist.nets.toys.moe_lm import held_out
from anatomist.runs.base import Context, Outcome, RunConfig, register

ALL_MATRICES = ["model.layers.*.mlp.*_proj", "model.layers.*.self_attn.*_proj"]


class SPDLMConfig(RunConfig):
    """SPD on all MLP and attention matrices of a tiny Llama toy: which toy, which matrices, SPD settings."""

    kind: Literal["spd-lm"] = "spd-lm"
    smoke: ClassVar[tuple[str, ...]] = (
        "toy_steps=2", "spd.steps=2", "spd.C=4", "spd.batch_size=2", "spd.faithfulness_warmup_steps=2",
        "n_eval_seqs=2", "n_described=1",
    )
    toy: str = Field(default="llama-lm-1", description="The LM toy (see `anatomist toy list`: llama-lm-1, llama-lm-2).")
    toy_steps: int | None = Field(
        default=None, description="Train the toy for this many steps instead of its recipe's (a separate cache entry)."
    )
    targets: list[str] = Field(
        default_factory=lambda: list(ALL_MATRICES), description="Module-name patterns of the matrices to decompose."
    )
    n_eval_seqs: int = Field(default=64, description="Held-out rows (63 predicted tokens each) to score.", gt=0)
    n_described: int = Field(default=3, description="Subcomponents described per matrix (the most used ones).", ge=0)
    spd: SPDConfig = Field(
        default_factory=lambda: SPDConfig(
            # schedule: 800 steps of 8 rows (504 tokens), KL to the model's next-token distribution
            C=128, steps=800, batch_size=8, lr=2e-3, lr_warmup=0.02, output_loss="kl", log_every=50,
            checkpoint_every=250,
            # faithfulness: the delta components carry W − ΣUVᵀ; the factors start fitted to the weights
            delta_component=True, faithfulness_coeff=0.0, faithfulness_warmup_steps=400, faithfulness_warmup_lr=1e-2,
            # reconstruction: all matrices at once, random subsets of them, adversarial masks
            stochastic_recon_coeff=1.0, stochastic_recon_layerwise_coeff=0.0, stochastic_recon_subset_coeff=1.0,
            pgd_recon_coeff=1.0, pgd_steps=1, pgd_step_size=0.5,
            # minimality: p from 2 to 0.5 over 80 % of the steps, with the frequency term
            importance_minimality_coeff=3e-4, pnorm=2.0, pnorm_final=0.5, pnorm_anneal_end=0.8,
            importance_minimality_beta=0.5,
        ),
        description="SPD hyperparameters (batch_size counts rows of the toy's text, 63 tokens each).",
    )


@register(SPDLMConfig, trains=True, data_parallel=True)
def spd_lm(config: SPDLMConfig, ctx: Context) -> Outcome:
    """Load (or train) the toy LM, fit SPD to its matrices with checkpoints, then score and describe."""
    with distributed.main_first():  # rank 0 trains and caches the toy LM; the others then load it
        toy = load_toy(config.toy, steps=config.toy_steps)
    model, cfg = toy.model, config.spd
    g = torch.Generator().manual_seed(cfg.seed + 2)
    batches = (toy.config.sample_batch(cfg.batch_size, g)[0] for _ in itertools.count())
    start = time.perf_counter()
    dec = spd.decompose(model, batches, config.targets, cfg, run_dir=ctx.out, resume=ctx.resume,
                        generators={"data": g})
    fit_seconds = time.perf_counter() - start
    if distributed.is_main():
        dec.save(ctx.out)
    ids, smol, tokenizer = held_out(toy.config, config.n_eval_seqs)
    inputs = ids[:, :-1]
    scores = score_lm(dec, inputs)
    described = describe(dec, inputs, ids[:, 1:], smol, tokenizer, config.n_described)
    metrics: dict[str, Any] = {
        "toy": config.toy,
        "toy_test_loss": toy.final_loss,
        "C": cfg.C,
        "steps": cfg.steps,
        "fit_seconds": round(fit_seconds, 1),
        "eval_tokens": int(inputs.numel()),
        **scores,
        "described": {f"{name}[{row['subcomponent']}]": _row(row) for name, rows in described.items() for row in rows},
        "out": str(ctx.out),
    }
    if distributed.is_main():
        save_json(ctx.out / "described.json", described)
    kl = scores["kl"]
    summary = (f"SPD on {config.toy}: KL {kl['ci_masked']:.3g} with CI masks vs {kl['all_off']:.3g} ablated "
               f"({kl['ci_masked'] / max(kl['all_off'], 1e-12):.1%}); mean CI L0 per token "
               f"{scores['mean_ci_l0_fraction']:.1%} of C")
    data = [data_record(f"{config.toy} training rows (wiki)", n_examples=cfg.steps * cfg.batch_size)]
    return Outcome(metrics, summary, models=[model_record(config.toy, model)], data=data,
                   access=["outputs", "activations", "weights", "gradients"], value=dec)


@torch.no_grad()
def score_lm(dec: SPDDecomposition, inputs: Tensor) -> dict[str, Any]:
    """The KLs of the module docstring and the per-matrix sparsity numbers."""
    target = dec.run_with_masks(inputs, {})
    ci = dec.importances(inputs)  # {matrix: [n, T, C]}
    ones = {n: torch.ones_like(c) for n, c in ci.items()}
    zeros = {n: torch.zeros_like(c) for n, c in ci.items()}
    outputs = {
        "ci_masked": dec.run_with_masks(inputs, ci),
        "ci_masked_no_delta": dec.run_with_masks(inputs, ci, delta_masks={}),
        "stochastic": dec.run_with_masks(inputs, spd.stochastic_masks(ci, torch.Generator().manual_seed(0))),
        "all_on": dec.run_with_masks(inputs, ones),
        "all_on_no_delta": dec.run_with_masks(inputs, ones, delta_masks={}),
        "all_off": dec.run_with_masks(inputs, zeros, delta_masks={}),
    }
    kl = {k: float(spd.output_loss(v, target, "kl")) for k, v in outputs.items()}
    per_matrix = {
        n: {
            "alive": int(alive(c).sum()),
            "ci_l0": ci_l0(c),
            "ci_l0_fraction": ci_l0(c) / c.shape[-1],  # of this matrix's C (C_per_module may set it)
            "delta_norm": float(dec.weight_delta(n).norm() / dec.target_weight(n).norm()),
        }
        for n, c in ci.items()
    }
    fractions = [row["ci_l0_fraction"] for row in per_matrix.values()]
    return {"kl": kl, "kl_ci_over_ablation": kl["ci_masked"] / max(kl["all_off"], 1e-12), "matrices": per_matrix,
            "mean_ci_l0_fraction": sum(fractions) / len(fractions), "max_ci_l0_fraction": max(fractions)}


@torch.no_grad()
def describe(
    dec: SPDDecomposition, inputs: Tensor, labels: Tensor, smol: Tensor, tokenizer: Any, n: int, top: int = 5
) -> dict[str, list[dict[str, Any]]]:
    """For `n` sparse subcomponents of each matrix (`sparse_subcomponents`): the tokens where it is most
    important, and the tokens whose next-token loss rises most when it alone is switched off (every other
    mask 1, deltas on)."""
    ci = dec.importances(inputs)
    base = token_losses(dec, inputs, labels, {m: torch.ones_like(c) for m, c in ci.items()})
    out: dict[str, list[dict[str, Any]]] = {}
    for name, c in ci.items():
        rows = []
        for idx in sparse_subcomponents(c, n):
            masks = {m: torch.ones_like(v) for m, v in ci.items()}
            masks[name][..., idx] = 0.0
            rise = token_losses(dec, inputs, labels, masks) - base  # [n, T]
            rows.append({
                "subcomponent": idx,
                "mean_ci": float(c[..., idx].mean()),
                "top_tokens": _contexts(c[..., idx], smol, tokenizer, top),
                "loss_rise_tokens": _contexts(rise, smol, tokenizer, top),
                "mean_loss_rise": float(rise.mean()),
            })
        out[name] = rows
    return out


def sparse_subcomponents(ci: Tensor, n: int, most: float = 0.1) -> list[int]:
    """The `n` subcomponents on (CI > 0.5) on the most tokens among those on for at most `most` of them.

    Always-on subcomponents (a fair share on a language model: biases, the BOS token) say nothing
    about which token needs them, so the described ones are chosen among the sparse ones; if fewer
    than `n` are sparse, the rest are the most used.
    """
    share = (ci > 0.5).flatten(0, -2).float().mean(0)  # [C]
    sparse = torch.where((share > 0) & (share <= most), share, torch.full_like(share, -1.0))
    chosen = [int(i) for i in sparse.argsort(descending=True, stable=True)[:n] if sparse[i] > 0]
    rest = [int(i) for i in share.argsort(descending=True, stable=True) if int(i) not in chosen]
    return chosen + rest[: n - len(chosen)]


def _row(found: dict[str, Any]) -> dict[str, Any]:
    """One described subcomponent as a metrics row: its numbers, and its tokens as 'context|next (value)' strings."""
    def show(items: list[dict[str, Any]]) -> list[str]:
        return [f"{t['context']}|{t['next']} ({t['value']:.3g})" for t in items]

    return {"mean_ci": found["mean_ci"], "mean_loss_rise": found["mean_loss_rise"],
            "top_tokens": show(found["top_tokens"]), "loss_rise_tokens": show(found["loss_rise_tokens"])}


def token_losses(dec: SPDDecomposition, inputs: Tensor, labels: Tensor, masks: dict[str, Tensor]) -> Tensor:
    """Next-token cross-entropy per position `[n, T]` with the given masks."""
    logits = dec.run_with_masks(inputs, masks)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def _contexts(values: Tensor, smol: Tensor, tokenizer: Any, top: int) -> list[dict[str, Any]]:
    """The `top` positions of `values` [n, T] as {value, context (4 tokens up to it), token, next}."""
    flat = values.flatten().topk(min(top, values.numel()))
    T = values.shape[1]
    found = []
    for v, i in zip(flat.values.tolist(), flat.indices.tolist(), strict=True):
        row, pos = divmod(i, T)
        found.append({
            "value": round(v, 4),
            "context": tokenizer.decode(smol[row, max(0, pos - 3) : pos + 1].tolist()),
            "token": tokenizer.decode([int(smol[row, pos])]),
            "next": tokenizer.decode([int(smol[row, pos + 1])]),
        })
    return found
