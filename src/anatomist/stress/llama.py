"""Exact reparameterisations of a Llama-family language model (SmolLM2): the function kept, the basis moved.

* `fold_rmsnorm`: RMSNorm(x)·g followed by a linear map W equals RMSNorm(x) followed by W·diag(g); folding every
  norm's gain into the linear maps that read it leaves norms that commute with rotations (the first step of
  rotation-based methods such as SliceGPT, Ashkboos et al. 2024, and QuaRot). The tied embedding/unembedding is
  untied, since the final norm's gain folds into the unembedding only.
* `rotate_residual`: with norms folded, an orthogonal R applied to the residual stream (writers — the
  embedding, o_proj, down_proj — by R; readers — q/k/v, gate/up, the unembedding — by Rᵀ) leaves the logits
  unchanged, because RMSNorm(Rx) = R·RMSNorm(x).
* `permute_rescale_mlp`: permute each SwiGLU MLP's hidden units and scale each unit's up-projection row by a > 0
  and its down-projection column by 1/a (SiLU(gate)·(a·up)/a); the gate is only permuted (SiLU is not
  homogeneous).
* `split_unit`: one hidden unit of one layer becomes two, with up-projections α·u and (1 − α)·u and the same gate
  and down-projection column.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError


def _layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "lm_head"):
        raise AnatomistError(f"{type(model).__name__} is not a Llama-style causal LM (model.model.layers, lm_head)")
    return list(layers)


@torch.no_grad()
def _fold_into(norm: Any, readers: list[Any]) -> None:
    gain = norm.weight.detach().clone()
    for lin in readers:
        lin.weight.mul_(gain[None, :])
    norm.weight.fill_(1.0)


@torch.no_grad()
def fold_rmsnorm(model: Any) -> Any:
    """Fold every RMSNorm gain into the linear maps reading it (in place; unties lm_head from the embedding)."""
    for layer in _layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        _fold_into(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fold_into(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    head = model.lm_head
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    _fold_into(model.model.norm, [head])
    return model


def haar_orthogonal(d: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A Haar-random orthogonal d×d matrix (QR of a Gaussian with the signs fixed)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


@torch.no_grad()
def rotate_residual(model: Any, R: Tensor) -> Any:
    """Rotate the residual stream by R (in place); call `fold_rmsnorm` first (refused when a gain is not 1)."""
    layers = _layers(model)
    norms = [model.model.norm]
    norms += [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    if any(not bool((n.weight == 1).all()) for n in norms):
        raise AnatomistError("rotate_residual: fold the RMSNorm gains first (fold_rmsnorm), or the rotation "
                             "does not commute with the norms")
    R = R.to(model.lm_head.weight.dtype)
    emb = model.get_input_embeddings()
    emb.weight.copy_(emb.weight @ R.T)  # rows are residual vectors
    readers = [model.lm_head] + [lin for layer in layers for lin in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj)]
    for lin in readers:
        lin.weight.copy_(lin.weight @ R.T)
    for layer in layers:
        for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
            lin.weight.copy_(R @ lin.weight)
            if lin.bias is not None:
                lin.bias.copy_(R @ lin.bias)
    return model


@torch.no_grad()
def permute_rescale_mlp(model: Any, seed: int = 0, spread: float = 4.0) -> Any:
    """Permute every MLP's hidden units and rescale each by a ∈ [1/spread, spread] through up/down (in place)."""
    gen = torch.Generator().manual_seed(seed)
    for layer in _layers(model):
        mlp = layer.mlp
        h = mlp.up_proj.out_features
        perm = torch.randperm(h, generator=gen)
        a = torch.exp((torch.rand(h, generator=gen, dtype=torch.float64) * 2 - 1) * math.log(spread))
        a = a.to(mlp.up_proj.weight.dtype)
        mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[perm])
        mlp.up_proj.weight.copy_(mlp.up_proj.weight[perm] * a[:, None])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, perm] / a[None, :])
    return model


def _linear(weight: Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    lin.weight.data.copy_(weight)
    return lin


@torch.no_grad()
def split_unit(model: Any, layer: int, unit: int, alpha: float = 0.5) -> Any:
    """Split hidden unit `unit` of layer `layer`'s MLP in two (in place): up rows α·u and (1 − α)·u."""
    layers = _layers(model)
    if not 0 <= layer < len(layers):
        raise AnatomistError(f"split_unit: layer {layer} out of range (the model has {len(layers)})")
    mlp = layers[layer].mlp
    if not 0 <= unit < mlp.up_proj.out_features or not 0 < alpha < 1:
        raise AnatomistError(f"split_unit: unit {unit} must be < {mlp.up_proj.out_features} and alpha in (0, 1)")
    gate, up, down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    new_up = torch.cat([up, up[unit : unit + 1] * (1 - alpha)])
    new_up[unit] *= alpha
    mlp.gate_proj = _linear(torch.cat([gate, gate[unit : unit + 1]]))
    mlp.up_proj = _linear(new_up)
    mlp.down_proj = _linear(torch.cat([down, down[:, unit : unit + 1]], dim=1))
    return model
