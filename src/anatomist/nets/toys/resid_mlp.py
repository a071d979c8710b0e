"""Residual MLP that computes more ReLUs than it has neurons ("compressed computation", APD/SPD papers).

    resid_0 = x W_E                                   x ∈ R^{n_features}, W_E [n_features, d_embed]
    resid_l = resid_{l-1} + W_out ReLU(W_in resid_{l-1})      for each layer, no biases
    ŷ       = resid_L W_U,   W_U = W_Eᵀ

W_E is random with unit-norm rows, fixed by the seed and never trained (a buffer, saved with the
weights). The labels are y = x + ReLU(x): the residual stream carries x for free, so the MLPs
only have to add ReLU(x_i) for every feature, with fewer neurons than features.

Module layout, so that a parameter decomposition can target layers by name:

    layers.{l}.mlp_in    nn.Linear(d_embed, d_mlp, bias=False)    weight W_in  [d_mlp, d_embed]
    layers.{l}.mlp_out   nn.Linear(d_mlp, d_embed, bias=False)    weight W_out [d_embed, d_mlp]
    layers.{l}           its output is the residual stream after layer l

Baselines (loss is the squared error averaged over batch and features, see `ToyConfig.loss`):

* `naive_loss`: output ŷ = x exactly, i.e. ignore the ReLU term. The error on feature i is
  ReLU(x_i), so the loss is E[ReLU(x_i)²] = p · ∫₀¹ u² du/2 = p/6. A trained model must beat it.
* `monosemantic_loss`: an idealised model that spends each of its n_layers·d_mlp neurons on one
  feature, computing those ReLUs exactly and ignoring the rest: (1 − neurons/n_features) · p/6.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.nets.toys.base import ToyConfig, sparse_uniform
from anatomist.nets.toys.ground_truth import GroundTruth


class ResidBlock(nn.Module):
    """resid + W_out ReLU(W_in resid)."""

    def __init__(self, d_embed: int, d_mlp: int):
        super().__init__()
        self.mlp_in = nn.Linear(d_embed, d_mlp, bias=False)
        self.mlp_out = nn.Linear(d_mlp, d_embed, bias=False)

    def forward(self, resid: Tensor) -> Tensor:
        return resid + self.mlp_out(F.relu(self.mlp_in(resid)))


class ResidMLP(nn.Module):
    """Fixed embedding W_E, `n_layers` residual ReLU MLPs, unembedding W_U = W_Eᵀ."""

    W_E: Tensor

    def __init__(self, n_features: int, d_embed: int, d_mlp: int, n_layers: int):
        super().__init__()
        self.n_features, self.d_embed = n_features, d_embed
        self.register_buffer("W_E", torch.zeros(n_features, d_embed))  # set by ResidMLPConfig.build
        self.layers = nn.ModuleList(ResidBlock(d_embed, d_mlp) for _ in range(n_layers))

    @property
    def W_U(self) -> Tensor:
        return self.W_E.T

    def forward(self, x: Tensor) -> Tensor:
        resid = x @ self.W_E
        for layer in self.layers:
            resid = layer(resid)
        return resid @ self.W_U


def label_fn(x: Tensor) -> Tensor:
    """y = x + ReLU(x)."""
    return x + F.relu(x)


class ResidMLPConfig(ToyConfig):
    """A residual-MLP toy: architecture, data (p-sparse U[-1,1] features, y = x + ReLU(x)) and recipe."""

    kind: Literal["resid_mlp"] = Field(
        default="resid_mlp", description="Toy family; selects the config class when loading."
    )
    name: str = Field(default="resid-mlp-1", description="Registry name of the toy; names the cache folder.")
    n_features: int = Field(default=100, description="Input features, each needing its own ReLU.", gt=0)
    d_embed: int = Field(default=1000, description="Width of the residual stream.", gt=0)
    d_mlp: int = Field(default=50, description="ReLU neurons per layer.", gt=0)
    n_layers: int = Field(default=1, description="Residual MLP layers.", gt=0)
    feature_prob: float = Field(default=0.01, description="Probability that each feature is active.", gt=0, le=1)
    steps: int = Field(default=1000, description="Optimizer steps.", gt=0)
    batch_size: int = Field(default=2048, description="Samples per step (published: 2048).", gt=0)
    lr: float = Field(default=3e-3, description="Peak AdamW learning rate (published: 3e-3).", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")

    # One thread: measured 4x faster per step than two on a busy 2-core machine (OpenMP barriers
    # under oversubscription); an idle many-core machine loses little, as these matmuls are small.
    max_cpu_threads: ClassVar[int | None] = 1

    def build(self) -> ResidMLP:
        model = ResidMLP(self.n_features, self.d_embed, self.d_mlp, self.n_layers)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            W_E = torch.randn(self.n_features, self.d_embed, generator=g)
            model.W_E.copy_(W_E / W_E.norm(dim=1, keepdim=True))
            for lin in model.layers.modules():
                if isinstance(lin, nn.Linear):
                    # nn.Linear's default scale, U(±1/√fan_in), drawn from our generator
                    bound = 1 / math.sqrt(lin.in_features)
                    lin.weight.copy_(torch.rand(lin.weight.shape, generator=g) * 2 * bound - bound)
        return model

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        x = sparse_uniform(batch_size, self.n_features, self.feature_prob, -1.0, 1.0, generator, device)
        return x, label_fn(x)

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        """Feature directions (rows of W_E), the label function and each layer's weights.

        No closed-form per-mechanism split of W_in/W_out is known, so `components` is empty; the SPD
        paper's finding for 1 layer (one W_in subcomponent per feature, W_out one rank-d_mlp piece)
        is an empirical result to compare against, not ground truth.
        """
        assert isinstance(model, ResidMLP)
        weights: dict[str, Tensor] = {}
        for i, layer in enumerate(model.layers):
            assert isinstance(layer, ResidBlock)
            weights[f"layers.{i}.mlp_in"] = layer.mlp_in.weight.detach().clone()
            weights[f"layers.{i}.mlp_out"] = layer.mlp_out.weight.detach().clone()
        W_E = model.W_E.detach().clone()
        return GroundTruth(
            feature_directions=W_E,
            weights=weights,
            components={},
            n_components={},
            label_fn=label_fn,
            description=(
                f"residual MLP, {self.n_layers} layer(s) × {self.d_mlp} neurons computing ReLU of "
                f"{self.n_features} features embedded along the rows of W_E"
            ),
            extra={"W_E": W_E, "W_U": W_E.T.clone()},
            targets=["layers.*.mlp_in", "layers.*.mlp_out"],
            # the SPD paper's finding: each feature owns one mlp_in subcomponent
            per_feature=[f"layers.{i}.mlp_in" for i in range(len(model.layers))],
            owned_per_feature=[f"layers.{i}.mlp_in" for i in range(len(model.layers))],
        )


def naive_loss(config: ResidMLPConfig) -> float:
    """Loss of outputting ŷ = x (ignoring the ReLU term): E[ReLU(x_i)²] = p/6."""
    return config.feature_prob / 6


def monosemantic_loss(config: ResidMLPConfig) -> float:
    """Loss of an ideal one-neuron-per-feature model: (1 − n_layers·d_mlp/n_features)·p/6, floored at 0."""
    covered = min(config.n_layers * config.d_mlp, config.n_features)
    return (1 - covered / config.n_features) * naive_loss(config)
