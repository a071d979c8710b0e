"""Toy Model of Superposition (Elhage et al. 2022): x̂ = ReLU(WᵀW x + b), W ∈ R^{m×n}.

n sparse features are squeezed through m < n hidden dimensions and read back out with the
same (tied) weights. With 5 features in 2 dimensions and sparse inputs, the 5 columns of W
settle into a regular pentagon.

Module layout, so that a parameter decomposition can target layers by name:

    linear1   nn.Linear(n, m, bias=False)   weight W        [m, n]   the only trained matrix
    hidden    nn.Linear(m, m, bias=False)   weight I        [m, m]   only in "+ID" variants; frozen
    linear2   TiedLinear(linear1)           weight Wᵀ       [n, m]   a view of linear1.weight
    b_final   nn.Parameter                  b               [n]      output bias (not decomposed)

The tie: `linear2` owns no parameter. Its `weight` property returns `linear1.weight.T`, so
`model.parameters()` and `model.state_dict()` hold W once (as `linear1.weight`) and a gradient
through either layer lands on that one tensor.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.nets.toys.base import ToyConfig, sparse_uniform
from anatomist.nets.toys.ground_truth import GroundTruth


class TiedLinear(nn.Module):
    """`x ↦ x @ source.weight`: an `nn.Linear`-like layer whose weight is another layer's transpose."""

    source: nn.Linear

    def __init__(self, source: nn.Linear):
        super().__init__()
        # A plain attribute, not a registered submodule: registering it would list W a second
        # time in state_dict() and make the module tree claim linear1 lives inside linear2.
        object.__setattr__(self, "source", source)
        self.in_features = source.out_features
        self.out_features = source.in_features
        self.bias: Tensor | None = None

    @property
    def weight(self) -> Tensor:
        """`[out_features, in_features]`, as nn.Linear stores it: the transpose of the source's weight."""
        return self.source.weight.T

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied=transpose"


class TMS(nn.Module):
    """x̂ = ReLU(Wᵀ [I] W x + b); see the module docstring for the layout and the tie."""

    def __init__(self, n_features: int, d_hidden: int, identity_hidden: bool = False):
        super().__init__()
        self.n_features, self.d_hidden = n_features, d_hidden
        self.linear1 = nn.Linear(n_features, d_hidden, bias=False)
        self.hidden: nn.Linear | None = None
        if identity_hidden:
            self.hidden = nn.Linear(d_hidden, d_hidden, bias=False)
            with torch.no_grad():
                self.hidden.weight.copy_(torch.eye(d_hidden))
            self.hidden.weight.requires_grad_(False)  # fixed, never trained
        self.linear2 = TiedLinear(self.linear1)
        self.b_final = nn.Parameter(torch.zeros(n_features))

    @property
    def W(self) -> Tensor:
        """The tied weight W, `[d_hidden, n_features]`; column i is feature i's direction."""
        return self.linear1.weight

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        if self.hidden is not None:
            h = self.hidden(h)
        return F.relu(self.linear2(h) + self.b_final)


class TMSConfig(ToyConfig):
    """A TMS toy: architecture, data (p-sparse U[0,1] features, labels = inputs) and recipe."""

    kind: Literal["tms"] = Field(default="tms", description="Toy family; selects the config class when loading.")
    name: str = Field(default="tms-5-2", description="Registry name of the toy; names the cache folder.")
    n_features: int = Field(default=5, description="n: input/output features.", gt=0)
    d_hidden: int = Field(default=2, description="m: hidden dimensions the features are squeezed into.", gt=0)
    identity_hidden: bool = Field(
        default=False, description="'+ID' variant: a fixed identity m×m layer between linear1 and linear2."
    )
    feature_prob: float = Field(default=0.05, description="Probability that each feature is active.", gt=0, le=1)
    steps: int = Field(default=10_000, description="Optimizer steps (published: 10k).", gt=0)
    batch_size: int = Field(
        default=1024, description="Samples per step (published: 1024 for 5-2, 8192 for 40-10).", gt=0
    )
    lr: float = Field(default=5e-3, description="AdamW learning rate (published: 5e-3).", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(default="constant", description="Learning-rate schedule.")

    max_cpu_threads: ClassVar[int | None] = 1  # [1024, 5] matmuls: threading is pure overhead

    def build(self) -> TMS:
        model = TMS(self.n_features, self.d_hidden, self.identity_hidden)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            nn.init.xavier_normal_(model.linear1.weight, generator=g)
        return model

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        x = sparse_uniform(batch_size, self.n_features, self.feature_prob, 0.0, 1.0, generator, device)
        return x, x  # an autoencoder: the labels are the inputs

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        """Feature i's mechanism is column i of W: `W[:, i] e_iᵀ` in linear1, `e_i W[:, i]ᵀ` in linear2."""
        assert isinstance(model, TMS)
        W = model.W.detach()
        n, m = self.n_features, self.d_hidden
        eye_n = torch.eye(n, dtype=W.dtype, device=W.device)
        weights = {"linear1": W.clone(), "linear2": W.T.clone()}
        components = {
            "linear1": W.T[:, :, None] * eye_n[:, None, :],  # [n, m, n]: c-th slice is W[:, c] e_cᵀ
            "linear2": eye_n[:, :, None] * W.T[:, None, :],  # [n, n, m]: c-th slice is e_c W[:, c]ᵀ
        }
        n_components = {"linear1": n, "linear2": n}
        identity = []
        if model.hidden is not None:
            eye_m = torch.eye(m, dtype=W.dtype, device=W.device)
            weights["hidden"] = model.hidden.weight.detach().clone()
            # I = Σ_k e_k e_kᵀ: m rank-one pieces forming one layer. Any orthonormal basis works
            # equally well, so score a decomposition of it by count and sum, not by direction.
            components["hidden"] = eye_m[:, :, None] * eye_m[:, None, :]
            n_components["hidden"] = m
            identity.append("hidden")
        return GroundTruth(
            feature_directions=W.T.clone(),
            weights=weights,
            components=components,
            n_components=n_components,
            label_fn=lambda x: x,
            description=(
                f"TMS {n}-{m}{' +ID' if model.hidden is not None else ''}: feature i is column i of W, "
                "a rank-one piece of linear1 and of linear2"
                + (f"; the hidden identity is {m} rank-one pieces" if model.hidden is not None else "")
            ),
            targets=["linear1", "linear2", *identity],
            per_feature=["linear1", "linear2"],
            feature_rows="linear1",  # W: column f is what feature f writes (the SPD paper's TMS scores)
            identity=identity,
        )
