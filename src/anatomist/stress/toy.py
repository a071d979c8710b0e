"""The planted toy every stressor starts from: a residual network whose features are known by construction.

    r0 = embed(x)                                  x = [n sparse features, 1 trigger input]    r0 ∈ R^d
    r1 = r0 + mlp_out(ReLU(mlp_in(r0) + b))        one ReLU neuron per feature: ReLU(x_i − θ)
    r1' = r1 + mlp2(r1)                            a second ReLU MLP: empty unless a stressor plants in it
    r2 = r1' + bil_out(bil.w(r1') ⊙ bil.v(r1'))    a bilinear block: empty unless a stressor plants in it
    y  = unembed(r2)                               = x + ReLU(x − θ) on the features

The base model is written down, not trained: feature i is axis i of the residual stream (d = n + 1; the
last axis belongs to the trigger input, which the data never switch on) and neuron i computes ReLU(x_i − θ),
so the truth is exact and every lens should read it. The small threshold θ = 0.05 keeps an absent feature
(x_i = 0) strictly inside its neuron's off region, so that float rounding after an exact reparameterisation
cannot flip a polytope code (at θ = 0 the sparse data would sit exactly on every boundary).

Stressors (`anatomist.stress.stressors`) transform this model and say where the truth went. Lenses read the
residual stream at `embed` (its output r0), the neurons at `mlp.act`, the MLPs' outputs (`mlp`, `mlp2`: per-layer
dictionaries and a crosscoder of both), the weights of `mlp.mlp_in` / `bil.w`, and the bilinear block's quadratic
forms.

A `Scenario` bundles a model, its data distribution and its `Truth`: the planted features' directions in r0
(`directions`, unit rows), which input turns each on (`inputs`: a feature is "present" when its input is
positive), and the layer that reads them (`layer`, for the weight lenses' pieces (W u) uᵀ). A feature that is
computed rather than input (the cross-layer stressor) also has its `value` g(x): lenses are scored on how well
one of their latents tracks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from anatomist.nets.bilinear import BilinearLayer

RESID = "embed"  # the residual stream r0 (the output of the embedding): what SAEs, probes and axes read
MLP_OUT = "mlp"  # the MLP block's output (what a transcoder predicts from r0)
MLP2_OUT = "mlp2"  # the second MLP block's output (empty in the base)
NEURONS = "mlp.act"  # the ReLU: its output is the neuron basis, its input the polytope codes
Sampler = Callable[[int, torch.Generator], Tensor]


class MLPBlock(nn.Module):
    """mlp_out(ReLU(mlp_in(r))); mlp_in has a bias (the neurons' thresholds)."""

    def __init__(self, d: int, d_mlp: int):
        super().__init__()
        self.mlp_in = nn.Linear(d, d_mlp)
        self.act = nn.ReLU()
        self.mlp_out = nn.Linear(d_mlp, d, bias=False)

    def forward(self, r: Tensor) -> Tensor:
        return self.mlp_out(self.act(self.mlp_in(r)))


class StressNet(nn.Module):
    """embed → residual ReLU MLP → residual ReLU MLP → residual bilinear block → unembed (module docstring).

    The second MLP starts empty (zero weights and thresholds: ReLU(0) = 0 adds nothing, and its gradient is 0, so
    training leaves it empty); it is registered last so that the other parameters keep their order.
    """

    def __init__(self, n_inputs: int, d: int, d_mlp: int, d_bilinear: int, n_out: int, d_mlp2: int = 1):
        super().__init__()
        self.embed = nn.Linear(n_inputs, d, bias=False)
        self.mlp = MLPBlock(d, d_mlp)
        self.bil = BilinearLayer(d, d_bilinear)
        self.bil_out = nn.Linear(d_bilinear, d, bias=False)
        self.unembed = nn.Linear(d, n_out, bias=False)
        self.mlp2 = MLPBlock(d, d_mlp2)
        with torch.no_grad():
            for p in self.mlp2.parameters():
                p.zero_()

    def forward(self, x: Tensor) -> Tensor:
        r0 = self.embed(x)
        r1 = r0 + self.mlp(r0)
        r1 = r1 + self.mlp2(r1)
        r2 = r1 + self.bil_out(self.bil(r1))
        return self.unembed(r2)


@dataclass(frozen=True)
class Truth:
    """Where the planted features live: unit directions in r0 [k, d], the inputs that switch them on, the reader."""

    directions: Tensor  # [k, d]
    inputs: list[int]  # input coordinate of each feature (present when that input is > 0)
    layer: str = "mlp.mlp_in"  # the weight that reads them (weight lenses are scored on its pieces)
    names: list[str] = field(default_factory=list)
    circle: bool = False  # one feature on a circle: `directions` span its plane, `inputs` carry (cos, sin)
    value: Callable[[Tensor], Tensor] | None = None  # a computed feature: its value g(x) [batch] (cross-layer)

    def labels(self, x: Tensor) -> Tensor:
        """bool [batch, k]: which planted features each input switches on (a circle: whether it is on at all)."""
        if self.circle:
            return (x[:, self.inputs] != 0).any(dim=1, keepdim=True).expand(-1, len(self.inputs))
        return x[:, self.inputs] > 0


@dataclass(frozen=True)
class Scenario:
    """A model, the data lenses are fitted on, the data they are scored on, and the truth."""

    model: StressNet
    fit_data: Sampler  # what a lens sees when it is fitted (never the trigger)
    truth: Truth
    eval_data: Sampler | None = None  # what scores are measured on (default: fit_data)

    def fit_batch(self, n: int, seed: int) -> Tensor:
        return self.fit_data(n, torch.Generator().manual_seed(seed))

    def eval_batch(self, n: int, seed: int) -> Tensor:
        sample = self.eval_data or self.fit_data
        return sample(n, torch.Generator().manual_seed(seed))

    def with_model(self, model: StressNet, truth: Truth | None = None) -> Scenario:
        return replace(self, model=model, truth=truth if truth is not None else self.truth)


def sparse_signed(n_features: int, p: float, correlated: float = 0.0) -> Sampler:
    """Features independently on with probability p, values U[-1, 1]; the trigger input stays 0.

    `correlated` > 0: feature 2j+1 also comes on with that probability whenever feature 2j is on (pairs that
    co-occur, the correlated-superposition stressor).
    """

    def sample(batch: int, gen: torch.Generator) -> Tensor:
        on = torch.rand(batch, n_features, generator=gen) < p
        if correlated > 0:
            pairs = n_features // 2
            partner = torch.rand(batch, pairs, generator=gen) < correlated
            on[:, 1 : 2 * pairs : 2] |= on[:, 0 : 2 * pairs : 2] & partner
        values = torch.rand(batch, n_features, generator=gen) * 2 - 1
        return torch.cat([values * on, torch.zeros(batch, 1)], dim=1)

    return sample


def on_circle(n_features: int, p: float, days: int = 7) -> Sampler:
    """`sparse_signed`, with inputs 0 and 1 replaced by one circular feature: on with probability p, then
    (cos φ, sin φ) at one of `days` equally spaced angles φ (like the days of the week; Engels et al. 2024)."""
    base = sparse_signed(n_features, p)

    def sample(batch: int, gen: torch.Generator) -> Tensor:
        x = base(batch, gen)
        on = (torch.rand(batch, generator=gen) < p).to(x.dtype)
        angle = 2 * math.pi * torch.randint(days, (batch,), generator=gen).to(x.dtype) / days
        x[:, 0], x[:, 1] = angle.cos() * on, angle.sin() * on
        return x

    return sample


THRESHOLD = 0.05  # θ: neuron i fires for x_i > θ


def task_labels(x: Tensor) -> Tensor:
    """y = x + ReLU(x − θ) on the features (the trigger input has no output of its own)."""
    f = x[:, :-1]
    return f + torch.relu(f - THRESHOLD)


@torch.no_grad()
def planted_model(n_features: int) -> StressNet:
    """The base model, by construction: feature i on axis i, neuron i = ReLU(x_i − θ), output x + ReLU(x − θ)."""
    n, d = n_features, n_features + 1
    model = StressNet(n + 1, d, n, 2, n)
    eye = torch.eye(d)
    model.embed.weight.copy_(eye)  # [d, n + 1]: input j -> axis j (the trigger input -> the last axis)
    model.mlp.mlp_in.weight.copy_(eye[:n])  # neuron i reads axis i
    model.mlp.mlp_in.bias.fill_(-THRESHOLD)
    model.mlp.mlp_out.weight.copy_(eye[:, :n])  # and writes it back
    for lin in (model.bil.w, model.bil.v, model.bil_out):
        lin.weight.zero_()
    model.unembed.weight.copy_(eye[:n])
    return model.eval()


def embedding_directions(model: StressNet, inputs: list[int]) -> Tensor:
    """Unit directions [k, d] that the inputs `inputs` write into r0 (columns of the embedding)."""
    cols = model.embed.weight.detach()[:, inputs].T
    return cols / cols.norm(dim=1, keepdim=True).clamp_min(1e-12)


def base_scenario(n_features: int = 8, p: float = 0.1) -> Scenario:
    """The planted base: every lens should read its n features."""
    model = planted_model(n_features)
    inputs = list(range(n_features))
    truth = Truth(embedding_directions(model, inputs), inputs, names=[f"f{i}" for i in inputs])
    return Scenario(model, sparse_signed(n_features, p), truth)


@torch.no_grad()
def sites(model: StressNet, x: Tensor) -> dict[str, Tensor]:
    """r0, the MLP outputs, the first MLP's neurons (pre-activations and activations), r1 (after both MLPs), and
    the output, for a batch."""
    r0 = model.embed(x)
    pre = model.mlp.mlp_in(r0)
    acts = torch.relu(pre)
    out1 = model.mlp.mlp_out(acts)
    out2 = model.mlp2(r0 + out1)
    return {RESID: r0, MLP_OUT: out1, MLP2_OUT: out2, "pre": pre, NEURONS: acts, "r1": r0 + out1 + out2,
            "out": model(x)}


@torch.no_grad()
def relative_change(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """‖b(x) − a(x)‖ / ‖a(x)‖ over a batch: how much a stressor changed the outputs."""
    ya, yb = a(x).double(), b(x).double()
    return float((yb - ya).norm() / ya.norm().clamp_min(1e-30))
