"""Routing as control: the part of a hidden state the router reads, and the part it cannot see.

A router computes logits = W_r h (+ b) with W_r of shape [n_experts, d]. Any component of h
orthogonal to the row space of W_r changes no logit, so h splits exactly into

    control = P h          (P projects onto W_r's row space, found by SVD)
    content = h - P h      (the orthogonal complement: invisible to the router)

`find_moe_layers` locates MoE blocks in Hugging Face models (OLMoE, Mixtral, Qwen2-MoE, in the
layout of transformers 4.x and 5.x) and in our tiny MoE LM: a module with an `experts` child
and a `gate` (or `router`) child whose weight has one row per expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anatomist.core.errors import AnatomistError

_ROUTER_NAMES = ("gate", "router")


@dataclass(frozen=True)
class MoELayer:
    """One MoE block of a model: where it is, and its router."""

    name: str  # module path of the block, e.g. "model.layers.3.mlp"
    router_name: str  # module path of its router, e.g. "model.layers.3.mlp.gate"
    block: nn.Module
    router: nn.Module
    n_experts: int
    top_k: int | None  # experts per token, where the model says

    @property
    def weight(self) -> torch.Tensor:
        """The router matrix W_r, [n_experts, d_model]."""
        return self.router.weight  # type: ignore[return-value]

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    def router_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """W_r h (+ b) for hidden states [..., d_model] -> [..., n_experts]."""
        _check_width(self, hidden)
        bias = getattr(self.router, "bias", None)
        w = self.weight.to(hidden.dtype)
        return torch.nn.functional.linear(hidden, w, None if bias is None else bias.to(hidden.dtype))


def _router_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    if not hasattr(block, "experts"):
        return None
    for name in _ROUTER_NAMES:
        router = getattr(block, name, None)
        weight = getattr(router, "weight", None)
        if isinstance(router, nn.Module) and isinstance(weight, torch.Tensor) and weight.ndim == 2:
            return name, router
    return None


def _n_experts(block: nn.Module, router: nn.Module) -> int:
    weight: torch.Tensor = router.weight  # type: ignore[assignment]
    n = int(weight.shape[0])
    experts = block.experts
    declared = len(experts) if isinstance(experts, nn.ModuleList) else getattr(experts, "num_experts", n)
    if declared != n:
        raise AnatomistError(f"router has {n} rows but the block declares {declared} experts")
    return n


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE block of `model`, in definition (= layer) order."""
    found = []
    for name, module in model.named_modules():
        hit = _router_of(module)
        if hit is None:
            continue
        rname, router = hit
        top_k = getattr(router, "top_k", None) or getattr(module, "top_k", None)
        found.append(
            MoELayer(
                name=name,
                router_name=f"{name}.{rname}" if name else rname,
                block=module,
                router=router,
                n_experts=_n_experts(module, router),
                top_k=int(top_k) if top_k is not None else None,
            )
        )
    if not found:
        raise AnatomistError(
            f"{type(model).__name__} has no MoE layer (looked for a module with an 'experts' child and a "
            f"'gate'/'router' child holding a [n_experts, d_model] weight)"
        )
    return found


def moe_layer(model: nn.Module, which: int | str) -> MoELayer:
    """One MoE layer by its index among the MoE layers or by its module path."""
    layers = find_moe_layers(model)
    if isinstance(which, int):
        if not -len(layers) <= which < len(layers):
            raise AnatomistError(f"MoE layer index {which} out of range: the model has {len(layers)} MoE layers")
        return layers[which]
    for layer in layers:
        if which in (layer.name, layer.router_name):
            return layer
    raise AnatomistError(f"no MoE layer '{which}'; MoE layers are {[lay.name for lay in layers]}")


def _bases(layer: MoELayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases (float64) of the router's row space [rank, d] and of its complement [d - rank, d]."""
    w = layer.weight.detach().to(torch.float64)
    _, s, vh = torch.linalg.svd(w, full_matrices=True)  # vh: [d, d]; rows past the rank span the complement
    # the numerical rank, with the usual tolerance for matrices that came from float32 weights
    tol = s.max() * max(w.shape) * torch.finfo(torch.float32).eps if s.numel() else 0.0
    rank = int((s > tol).sum())
    return vh[:rank], vh[rank:]


def router_basis(layer: MoELayer) -> torch.Tensor:
    """Orthonormal basis of the router's row space, [rank, d_model] (float64, from the SVD of W_r)."""
    return _bases(layer)[0]


def split_coordinates(layer: MoELayer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Control and content as coordinates: [..., rank] in the router's row space, [..., d - rank] in its complement.

    The same split as `control_content`, in orthonormal bases of the two subspaces (so a probe on
    control sees `rank` numbers, not a `d`-vector of rank `rank`).
    """
    _check_width(layer, hidden)
    row, complement = _bases(layer)
    h = hidden.to(torch.float64)
    return (h @ row.T).to(hidden.dtype), (h @ complement.T).to(hidden.dtype)


def _check_width(layer: MoELayer, hidden: torch.Tensor) -> None:
    if hidden.ndim == 0 or hidden.shape[-1] != layer.d_model:
        raise AnatomistError(
            f"hidden state of shape {list(hidden.shape)} does not fit MoE layer '{layer.name}': "
            f"its router reads vectors of width {layer.d_model}"
        )


def control_content(moe_layer: MoELayer | nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split hidden states [..., d_model] into (control, content) with control + content == hidden.

    `moe_layer` is a `MoELayer` from `find_moe_layers` or an MoE block module itself.
    Replacing `content` leaves the router logits unchanged; replacing `control` changes them.
    """
    layer = moe_layer if isinstance(moe_layer, MoELayer) else _as_layer(moe_layer)
    _check_width(layer, hidden)
    basis = router_basis(layer)  # [rank, d]
    h = hidden.to(torch.float64)
    control = (h @ basis.T) @ basis  # [..., d]
    return control.to(hidden.dtype), (h - control).to(hidden.dtype)


def _as_layer(block: nn.Module) -> MoELayer:
    if _router_of(block) is None:
        raise AnatomistError(
            f"{type(block).__name__} is not an MoE block (no 'experts' child next to a 'gate'/'router' with a "
            f"[n_experts, d_model] weight); pass an MoE block or one of find_moe_layers(model)"
        )
    return find_moe_layers(block)[0]
