"""Run kind `spd-vision`: SPD on one MLP of a vision transformer, every token (CLS and patches) an input.

Stochastic Parameter Decomposition (Bushnaq, Braun, Sharkey et al. 2025, arXiv 2506.20790; `mechanisms.spd`)
splits each target matrix W into C rank-one subcomponents u_c v_cᵀ and learns, per input row of the matrix,
a causal importance g_c ∈ [0, 1]: how much of subcomponent c that row needs. On a ViT (`nets.vision`) a
matrix of block k's MLP (fc1: d_model → 4·d_model, fc2 back) sees one row per token, so each token of each
image gets its own importances: the decomposition can be read by *where* (the token's role and grid
position) and *what* (the image's class) a subcomponent is needed.

The model is fitted end to end: the output the masked model must keep is its class logits (KL to the
unchanged model's), with the reference's later recipe as in `spd-lm` (delta components, a faithfulness
warm-up of the factors, stochastic masks on all targets and random subsets of them, p annealed down).

Scored on held-out images (the last `n_eval` of the seed-shuffled image set, never drawn for training):
the KLs of `runs.spd_lm.score_lm` (CI masks vs every decomposed matrix removed, the ablation), accuracy and
cross-entropy against the labels for the clean, CI-masked and ablated model, alive subcomponents and CI L0 per
token; and, for `n_described` sparse subcomponents per matrix, their mean importance per token position
(CLS, then the patch grid row-major) and per class, and the rise in cross-entropy when that one alone is off.

    anatomist run experiments/spd_vit_mnist_mlp.yaml --out runs/spd_vit_mlp [--resume]
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from anatomist.core.errors import AnatomistError
from anatomist.core.io import save_json
from anatomist.core.provenance import data_record, model_record
from anatomist.data import ImageSet, load_images
from anatomist.mechanisms import spd
from anatomist.mechanisms.spd import SPDConfig, SPDDecomposition
from anatomist.nets.assets import load_model
from anatomist.nets.vision import VisionLayout, is_vision_transformer, vision_layout
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.spd_lm import score_lm, sparse_subcomponents


class SPDVisionConfig(RunConfig):
    """SPD on the matrices of one vision-transformer MLP: which model, block and images, SPD settings."""

    kind: Literal["spd-vision"] = "spd-vision"
    smoke: ClassVar[tuple[str, ...]] = (
        "spd.steps=2", "spd.C=4", "spd.batch_size=4", "spd.faithfulness_warmup_steps=2", "n_eval=16",
        "n_described=1",
    )
    model: str = Field(default="vit-mnist", description="A vision transformer: the toy 'vit-mnist' or a local folder.")
    block: int = Field(default=0, description="The block whose MLP is decomposed (negative counts from the end).")
    matrices: tuple[str, ...] = Field(
        default=("*",), description="Module-name patterns under the block's MLP (e.g. 'fc1'); '*': all its matrices."
    )
    images: str = Field(default="mnist", description="Image set (packaged name or folder) to fit and score on.")
    n_eval: int = Field(default=500, description="Held-out images (the last of the seed-shuffled set) to score.", gt=0)
    n_described: int = Field(default=4, description="Subcomponents described per matrix (sparse, most used).", ge=0)
    spd: SPDConfig = Field(
        default_factory=lambda: SPDConfig(
            # schedule: 1,500 steps of 32 images (544 token rows), KL to the model's class distribution
            C=64, steps=1500, batch_size=32, lr=2e-3, lr_warmup=0.02, output_loss="kl", log_every=100,
            checkpoint_every=500,
            delta_component=True, faithfulness_coeff=0.0, faithfulness_warmup_steps=200, faithfulness_warmup_lr=1e-2,
            stochastic_recon_coeff=1.0, stochastic_recon_layerwise_coeff=1.0, stochastic_recon_subset_coeff=0.0,
            importance_minimality_coeff=1e-3, pnorm=2.0, pnorm_final=0.5, pnorm_anneal_end=0.8,
        ),
        description="SPD hyperparameters (batch_size counts images; every token of each is a row).",
    )


def mlp_targets(layout: VisionLayout, block: int, matrices: tuple[str, ...]) -> list[str]:
    """Module-name patterns of the chosen matrices of block `block`'s MLP."""
    mlp = layout.mlp(block).module
    return [f"{mlp}.{m}" for m in matrices]


def _batches(train: Tensor, batch_size: int, g: torch.Generator) -> Iterator[Tensor]:
    """Images drawn with replacement from `train`, forever."""
    for _ in itertools.count():
        yield train[torch.randint(len(train), (batch_size,), generator=g)]


def _split(images: ImageSet, n_eval: int, seed: int) -> tuple[ImageSet, Tensor]:
    """(held-out images, training pixels): the last `n_eval` of the shuffled set are held out."""
    if n_eval >= len(images):
        raise AnatomistError(f"n_eval = {n_eval} but image set '{images.name}' has {len(images)} images")
    mixed = images.shuffled(seed)
    held = ImageSet(mixed.name, mixed.images[-n_eval:], mixed.labels[-n_eval:], mixed.n_classes, mixed.classes)
    return held, mixed.images[:-n_eval]


@register(SPDVisionConfig, trains=True)
def spd_vision(config: SPDVisionConfig, ctx: Context) -> Outcome:
    """Fit SPD to one ViT MLP with checkpoints, then score it and describe a few subcomponents by token and class."""
    loaded = load_model(config.model)
    model, cfg = loaded.model, config.spd
    if not is_vision_transformer(model):
        raise AnatomistError(f"model '{config.model}' is not a vision transformer (spd-vision decomposes a ViT MLP)")
    layout = vision_layout(model)
    held, train = _split(load_images(config.images), config.n_eval, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    start = time.perf_counter()
    dec = spd.decompose(model, _batches(train, cfg.batch_size, g), mlp_targets(layout, config.block, config.matrices),
                        cfg, run_dir=ctx.out, resume=ctx.resume, generators={"data": g})
    fit_seconds = time.perf_counter() - start
    dec.save(ctx.out)
    scores = {**score_lm(dec, held.images), "labels": label_scores(dec, held)}
    described = describe(dec, held, layout, config.n_described)
    save_json(ctx.out / "described.json", described)
    metrics: dict[str, Any] = {"model": loaded.name, "targets": list(dec.targets), "C": cfg.C, "steps": cfg.steps,
                               "fit_seconds": round(fit_seconds, 1), "eval_images": len(held), **scores,
                               "described": _described_rows(described), "out": str(ctx.out)}
    return Outcome(metrics, _summary(config, scores), models=[model_record(loaded.name, model)],
                   data=[data_record(config.images, held.images, n_examples=len(held))],
                   access=["outputs", "activations", "weights", "gradients"], value=dec)


def _summary(config: SPDVisionConfig, scores: dict[str, Any]) -> str:
    kl, acc = scores["kl"], scores["labels"]["accuracy"]
    return (f"SPD on {config.model} block {config.block} MLP: KL {kl['ci_masked']:.3g} with CI masks vs "
            f"{kl['all_off']:.3g} ablated; accuracy clean {acc['clean']:.3f}, CI-masked {acc['ci_masked']:.3f}, "
            f"ablated {acc['all_off']:.3f}; mean CI L0 per token {scores['mean_ci_l0_fraction']:.1%} of C")


def _masks(dec: SPDDecomposition, images: Tensor) -> dict[str, dict[str, Tensor]]:
    ci = dec.importances(images)
    return {"ci_masked": ci, "all_off": {n: torch.zeros_like(c) for n, c in ci.items()}}


@torch.no_grad()
def label_scores(dec: SPDDecomposition, held: ImageSet) -> dict[str, dict[str, float]]:
    """Accuracy and cross-entropy against the labels: clean, with CI masks (deltas on), every target removed."""
    logits = {"clean": dec.run_with_masks(held.images, {})}
    for name, masks in _masks(dec, held.images).items():
        logits[name] = dec.run_with_masks(held.images, masks, delta_masks={} if name == "all_off" else None)
    return {
        "accuracy": {k: float((v.argmax(-1) == held.labels).float().mean()) for k, v in logits.items()},
        "ce": {k: float(F.cross_entropy(v, held.labels)) for k, v in logits.items()},
    }


@torch.no_grad()
def describe(dec: SPDDecomposition, held: ImageSet, layout: VisionLayout, n: int) -> dict[str, list[dict[str, Any]]]:
    """For `n` sparse subcomponents of each matrix: mean CI per token position and per class, the share of token
    rows where it is on (CI > 0.5), and the mean rise in cross-entropy when it alone is switched off."""
    ci = dec.importances(held.images)  # {matrix: [n_images, n_tokens, C]}
    ones = {m: torch.ones_like(c) for m, c in ci.items()}
    base = F.cross_entropy(dec.run_with_masks(held.images, ones), held.labels, reduction="none")
    roles = layout.token_roles((int(held.images.shape[-2]), int(held.images.shape[-1])))
    out: dict[str, list[dict[str, Any]]] = {}
    for name, c in ci.items():
        rows = []
        for idx in sparse_subcomponents(c, n):
            masks = {m: torch.ones_like(v) for m, v in ci.items()}
            masks[name][..., idx] = 0.0
            rise = F.cross_entropy(dec.run_with_masks(held.images, masks), held.labels, reduction="none") - base
            rows.append(_subcomponent(c[..., idx], held.labels, held.n_classes, roles, idx, rise))
        out[name] = rows
    return out


def _subcomponent(
    g: Tensor, labels: Tensor, n_classes: int, roles: list[Any], idx: int, rise: Tensor
) -> dict[str, Any]:
    """One subcomponent's importances `g` [n_images, n_tokens] summarised by position and class."""
    by_position = g.mean(0)
    per_image = g.mean(1)
    by_class = [float(per_image[labels == k].mean()) if (labels == k).any() else float("nan") for k in range(n_classes)]
    top = int(by_position.argmax())
    return {
        "subcomponent": idx,
        "mean_ci": float(g.mean()),
        "on_share": float((g > 0.5).float().mean()),
        "by_position": [round(float(v), 4) for v in by_position],
        "positions": [r.label for r in roles],
        "top_position": roles[top].label,
        "by_class": [round(v, 4) for v in by_class],
        "top_class": int(torch.tensor(by_class).nan_to_num(-1.0).argmax()),
        "mean_ce_rise": float(rise.mean()),
        "top_ce_rise_class": int(_class_means(rise, labels, n_classes).argmax()),
    }


def _class_means(values: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    sums = torch.zeros(n_classes).index_add_(0, labels, values.float())
    return sums / torch.bincount(labels, minlength=n_classes).clamp(min=1)


def _described_rows(described: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The described subcomponents as a metrics table (position and class profiles stay in described.json)."""
    keep = ("mean_ci", "on_share", "top_position", "top_class", "mean_ce_rise", "top_ce_rise_class")
    return {f"{name}[{row['subcomponent']}]": {k: row[k] for k in keep} for name, rows in described.items()
            for row in rows}
