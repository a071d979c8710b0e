"""The L3D paper's other toys (Chrisman, Bushnaq & Sharkey 2025): circuits in superposition, higher-rank
circuits, and an MLP that squares its inputs. Setups follow the paper's code (briannachrisman/eigenestimation,
scripts 2_circuit_superposition, 3_high_rank_circuits, 4_complex_loss).

**Circuit superposition** (`circuit-10-5-10`) and **higher-rank circuits** (`high-rank-30-10-30`): one hidden
layer without a non-linearity, a ReLU on the output,

    ŷ = ReLU(W2 W1 x + b),     y = coefsᵀ x,    coefs ~ U(0, max_coefficient)^{n × n_out}, fixed by the seed

Inputs are U(0, 1), active with probability p = 0.05, in contiguous groups of `group_size` features that are
active together (values independent); all-zero inputs are redrawn, as the paper's data drops them. With
groups of one (10 → 5 → 10) every input feature is its own circuit; with groups of five (30 → 10 → 30, six
groups) each circuit reads five inputs at once, so it has rank up to five in W1.

Module layout (nn.Linear, no biases in the layers):

    linear1   nn.Linear(n, d_hidden)         W1 [d_hidden, n]     group g's circuit: its columns
    linear2   nn.Linear(d_hidden, n_out)     W2 [n_out, d_hidden] group g's circuit: W2 on its hidden span
    b_final   nn.Parameter [n_out]                                 (not decomposed)

Ground truth, per group g (the columns S_g of its features; H_g = W1[:, S_g], the hidden vectors they write):

* linear1: W1 restricted to the columns S_g (the pieces add up to W1 exactly);
* linear2: W2 P_g, with P_g the orthogonal projection onto span(H_g): what W2 does to group g's hidden
  vectors. These do not add up to W2: n groups share d_hidden < n dimensions (that is the superposition).

**Squared MLP** (`squared-mlp`): x ∈ R^5, each feature active with p = 0.05, U(0, 1) times a random sign,
y = x² elementwise; an MLP 5 → 10 → 10 → 10 → 10 → 5 with ReLUs and biases (`layers.0` … `layers.4`). No
closed-form split of its weights is known, so its ground truth names only the per-feature test: on a one-hot
input each feature should use its own subnetwork.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.ground_truth import GroundTruth


def nonzero_sparse_uniform(
    batch_size: int, n_groups: int, group_size: int, p: float, generator: torch.Generator | None,
    device: str | torch.device,
) -> Tensor:
    """U(0, 1) inputs whose contiguous groups of `group_size` features are active together with probability p;
    rows with nothing active are redrawn (the paper's data has no all-zero input)."""
    where = generator.device if generator is not None else torch.device(device)
    rows: list[Tensor] = []
    found = 0
    while found < batch_size:
        active = torch.rand(batch_size, n_groups, generator=generator, device=where) < p
        values = torch.rand(batch_size, n_groups * group_size, generator=generator, device=where)
        x = values * active.repeat_interleave(group_size, dim=1)
        x = x[x.any(dim=1)]
        rows.append(x)
        found += len(x)
    return torch.cat(rows)[:batch_size].to(device)


class CircuitMLP(nn.Module):
    """ŷ = ReLU(W2 W1 x + b); see the module docstring."""

    def __init__(self, n_features: int, d_hidden: int, n_outputs: int):
        super().__init__()
        self.linear1 = nn.Linear(n_features, d_hidden, bias=False)
        self.linear2 = nn.Linear(d_hidden, n_outputs, bias=False)
        self.b_final = nn.Parameter(torch.zeros(n_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.linear2(self.linear1(x)) + self.b_final)


class SparseToyRecipe(ToyConfig):
    """What the L3D paper's toys share: inputs active with probability p, and our CPU training recipe (the paper
    trains 1000 epochs of 10k samples in batches of 32 at lr 1e-3; these reach a low loss on one CPU core)."""

    feature_prob: float = Field(
        default=0.05, description="Probability that a feature (a group, where they come in groups) is active.", gt=0,
        le=1,
    )
    steps: int = Field(default=4000, description="Optimizer steps.", gt=0)
    batch_size: int = Field(default=512, description="Samples per step.", gt=0)
    lr: float = Field(default=1e-2, description="Peak AdamW learning rate.", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay (the paper's optimiser has none).", ge=0)

    max_cpu_threads: ClassVar[int | None] = 1


class CircuitMLPConfig(SparseToyRecipe):
    """Circuit-superposition toys of the L3D paper: sizes, input groups, coefficients and training recipe."""

    kind: Literal["circuit_mlp"] = Field(default="circuit_mlp", description="Toy family; selects the config class.")
    name: str = Field(default="circuit-10-5-10", description="Registry name of the toy; names the cache folder.")
    n_features: int = Field(default=10, description="Input features.", gt=0)
    d_hidden: int = Field(default=5, description="Hidden width (no non-linearity there).", gt=0)
    n_outputs: int = Field(default=10, description="Outputs (each a ReLU).", gt=0)
    group_size: int = Field(default=1, description="Contiguous input features active together (one circuit).", gt=0)
    max_coefficient: float = Field(default=3.0, description="coefs ~ U(0, this): y = coefsᵀ x.", gt=0)

    @model_validator(mode="after")
    def _groups_divide(self) -> CircuitMLPConfig:
        if self.n_features % self.group_size:
            raise AnatomistError(f"group_size: {self.group_size} does not divide n_features {self.n_features}")
        return self

    @property
    def n_groups(self) -> int:
        return self.n_features // self.group_size

    def coefficients(self) -> Tensor:
        """[n_features, n_outputs]: the fixed coefficients of y = coefsᵀ x (drawn from the toy's seed)."""
        g = torch.Generator().manual_seed(self.seed + 1)
        return torch.rand(self.n_features, self.n_outputs, generator=g) * self.max_coefficient

    def build(self) -> CircuitMLP:
        model = CircuitMLP(self.n_features, self.d_hidden, self.n_outputs)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():  # the paper's start: standard normal weights, zero bias
            model.linear1.weight.copy_(torch.randn(model.linear1.weight.shape, generator=g))
            model.linear2.weight.copy_(torch.randn(model.linear2.weight.shape, generator=g))
        return model

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        x = nonzero_sparse_uniform(batch_size, self.n_groups, self.group_size, self.feature_prob, generator, device)
        return x, x @ self.coefficients().to(x)

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        """Per input group: its columns of W1, and W2 projected onto the hidden vectors they write."""
        assert isinstance(model, CircuitMLP)
        W1, W2 = model.linear1.weight.detach(), model.linear2.weight.detach()
        groups = torch.arange(self.n_features, device=W1.device).view(self.n_groups, self.group_size)
        columns = torch.zeros(self.n_groups, self.n_features, device=W1.device, dtype=W1.dtype)
        columns.scatter_(1, groups, 1.0)
        pieces1 = W1[None] * columns[:, None, :]  # [n_groups, d_hidden, n]
        pieces2 = torch.stack([W2 @ span_projection(W1[:, idx]) for idx in groups])  # [n_groups, n_out, d_hidden]
        coefs = self.coefficients().to(W1)
        per_feature = ["linear1", "linear2"] if self.group_size == 1 else []
        return GroundTruth(
            feature_directions=W1.T.clone(),
            weights={"linear1": W1.clone(), "linear2": W2.clone()},
            components={"linear1": pieces1, "linear2": pieces2},
            n_components={"linear1": self.n_groups, "linear2": self.n_groups},
            label_fn=lambda x: x @ coefs.to(x),
            description=(
                f"circuits in superposition {self.n_features}→{self.d_hidden}→{self.n_outputs}: {self.n_groups} "
                f"input groups of {self.group_size}, each a circuit through its columns of W1 and W2 on its span"
            ),
            extra={"coefficients": coefs},
            targets=["linear1", "linear2"],
            per_feature=per_feature,
        )


def span_projection(vectors: Tensor) -> Tensor:
    """[d, d]: the orthogonal projection onto the span of the columns of `vectors` [d, k]."""
    q, r = torch.linalg.qr(vectors)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(1e-30)
    q = q[:, keep]
    return q @ q.T


class SquaredMLP(nn.Module):
    """An MLP with ReLUs between its layers (`layers.0` … `layers.{n}`), linear at the end."""

    def __init__(self, n_features: int, d_hidden: int, n_hidden_layers: int):
        super().__init__()
        dims = [n_features] + [d_hidden] * n_hidden_layers + [n_features]
        self.linears = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        self.layers = nn.ModuleList(self.linears)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.linears[:-1]:
            x = F.relu(layer(x))
        return self.linears[-1](x)


class SquaredMLPConfig(SparseToyRecipe):
    """The L3D paper's y = x² MLP: sparse signed inputs, a deep ReLU MLP, squared error."""

    kind: Literal["squared_mlp"] = Field(default="squared_mlp", description="Toy family; selects the config class.")
    name: str = Field(default="squared-mlp", description="Registry name of the toy; names the cache folder.")
    n_features: int = Field(default=5, description="Inputs (and outputs).", gt=0)
    d_hidden: int = Field(default=10, description="Width of each hidden layer.", gt=0)
    n_hidden_layers: int = Field(default=4, description="Hidden ReLU layers.", gt=0)

    def build(self) -> SquaredMLP:
        model = SquaredMLP(self.n_features, self.d_hidden, self.n_hidden_layers)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():  # nn.Linear's default scale, U(±1/√fan_in), drawn from our generator
            for layer in model.linears:
                bound = 1 / layer.in_features**0.5
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
        return model

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        x = nonzero_sparse_uniform(batch_size, self.n_features, 1, self.feature_prob, generator, device)
        where = generator.device if generator is not None else torch.device(device)
        sign = torch.randint(0, 2, x.shape, generator=generator, device=where).to(x) * 2 - 1
        x = x * sign
        return x, x.square()

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        """No closed-form pieces: only the per-feature test (each feature its own subnetwork) and the labels."""
        assert isinstance(model, SquaredMLP)
        names = [f"layers.{i}" for i in range(len(model.layers))]
        weights = {n: layer.weight.detach().clone() for n, layer in zip(names, model.linears, strict=True)}
        return GroundTruth(
            feature_directions=torch.eye(self.n_features),
            weights=weights,
            components={},
            n_components={},
            label_fn=lambda x: x.square(),
            description=f"y = x² of {self.n_features} signed features, {self.n_hidden_layers} ReLU layers",
            targets=names,
            per_feature=names,
            owned_per_feature=names[:1],  # the coefficients are one per subnetwork: one layer says it all
        )
