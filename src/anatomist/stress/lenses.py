"""Every lens as `fit(scenario, budget, seed) -> Reading`, and `Reading.score(scenario)` against a planted truth.

A reading is what a lens keeps once fitted (decoder directions, weight pieces, a probe, chosen code bits), so the
same reading can be scored on the model it was fitted to or, for drift and obfuscation, on the model after the
change (a fixed tool). Scores, each with the threshold above which the lens "found" the truth:

* directions (SAE TopK, SAE JumpReLU, e2e SAE, transcoder encoder, residual axes, bilinear eigenvectors):
  MMCS of the lens's directions in r0 with the planted directions (`evaluate.recovery.match`; signs count for
  non-negative latents, not for bases and eigenvectors);
* neurons: MMCS of the one-hot neuron directions with each feature's pattern over the neurons;
* SPD, L3D: MMCS of the subcomponents of the truth's reading layer with the planted pieces (W u)uᵀ;
* linear probe and polytope codes: balanced accuracy of telling whether each feature is present (the probe on
  r0; the single ReLU on/off bit that best tracks it, for the codes);
* a computed feature (the cross-layer stressor's `Truth.value`): the best Pearson correlation of one latent's
  activation with the feature's value g(x) (dictionaries and bases keep their encoder for this; the weight
  lenses, which have no per-input activation to compare, read n/a).

Besides r0 and the neurons, two lenses read the MLP outputs: `sae_mlp_out`, a TopK SAE of the first MLP's output
(a per-layer output dictionary), and `crosscoder`, a TopK SAE of both MLPs' outputs concatenated (an acausal
crosscoder across the two layers, Lindsey et al. 2024, *Sparse crosscoders*), whose latent's direction in the
stream is the sum of what it writes into each layer.

The bilinear eigen-reading is data-free: it reads the quadratic forms of the bilinear block from its weights
(Pearce et al. 2024); with no bilinear mechanism planted it reads nothing (score n/a). Training budgets are
short (`Budget`: a few hundred steps), enough for these toys on one core; say so when quoting the numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from pydantic import Field
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor

from anatomist.core.config import Config
from anatomist.dictionaries.fit import fit_rows
from anatomist.evaluate.recovery import match
from anatomist.features.archs import JumpReLUConfig
from anatomist.features.base import SAEConfig, SparseDictionary, make_sae
from anatomist.features.bases import fit_basis
from anatomist.mechanisms import l3d, spd
from anatomist.mechanisms.bilinear import decompose_mlp
from anatomist.mechanisms.training import frozen
from anatomist.regions.codes import spline_codes
from anatomist.stress.stressors import LinearProbe, topk_config
from anatomist.stress.toy import MLP2_OUT, MLP_OUT, NEURONS, RESID, Scenario, StressNet, sites


class Budget(Config):
    """How long each lens trains on a toy (short: the whole table runs in minutes on one core)."""

    rows: int = Field(8192, gt=0, description="rows of the toy's data each lens is fitted on")
    sae_steps: int = Field(500, gt=0, description="Adam steps of the SAEs and the transcoder")
    e2e_steps: int = Field(400, gt=0, description="Adam steps of the end-to-end SAE")
    spd_steps: int = Field(400, gt=0, description="SPD steps")
    l3d_steps: int = Field(250, gt=0, description="L3D steps")
    batch_size: int = Field(256, gt=0, description="rows per step")
    latents_per_feature: int = Field(3, gt=0, description="dictionary latents (SPD/L3D components) per feature")


class Reading(Protocol):
    def score(self, sc: Scenario) -> float | None: ...


def plane_share(plane: Tensor, found: Tensor, size: int) -> float:
    """The largest share of a subspace that `size` of the found vectors span together.

    plane [k, w] (any basis of the subspace), found [m, w]: max over subsets S of `size` vectors of
    ‖P_S Q‖²_F / k, with Q an orthonormal basis of the plane and P_S the projection onto span(S). A single
    direction holds at most 1/k of a k-dimensional plane.
    """
    q = torch.linalg.qr(plane.double().T).Q  # [w, k]
    best = 0.0
    for subset in itertools.combinations(range(len(found)), size):
        basis = torch.linalg.qr(found[list(subset)].detach().double().T).Q  # [w, size]
        best = max(best, float((basis.T @ q).square().sum()) / q.shape[1])
    return best


@torch.no_grad()
def one_hot_sites(sc: Scenario) -> dict[str, Tensor]:
    """The toy's sites when each planted feature alone is on at value 1, minus the sites at x = 0."""
    n_in = sc.model.embed.in_features
    x = torch.zeros(len(sc.truth.inputs) + 1, n_in)
    x[torch.arange(len(sc.truth.inputs)), sc.truth.inputs] = 1.0
    got = sites(sc.model, x)
    return {k: v[:-1] - v[-1:] for k, v in got.items()}


def _mmcs(truth: Tensor, found: Tensor, signed: bool) -> float:
    found = found.detach().float()
    if not signed:
        found = torch.cat([found, -found])
    return match(truth.float(), found).mmcs


@dataclass(frozen=True)
class Directions:
    """Directions in r0 (space "resid") or over the neurons (space "neurons")."""

    vectors: Tensor  # [m, width]
    space: str = "resid"
    signed: bool = True

    def score(self, sc: Scenario) -> float | None:
        return self._score(sc, 1)

    def pair_score(self, sc: Scenario) -> float | None:
        """A circle: the share of its plane that the best pair of directions spans (a 2-D reading)."""
        return self._score(sc, 2)

    def _score(self, sc: Scenario, size: int) -> float | None:
        if len(self.vectors) < size or sc.truth.value is not None:
            return None
        truth = sc.truth.directions if self.space == "resid" else one_hot_sites(sc)[NEURONS]
        if truth.shape[1] != self.vectors.shape[1]:
            return None  # the stress changed the width this reading lives in
        if sc.truth.circle:
            return plane_share(truth, self.vectors, size)
        return _mmcs(truth, self.vectors, self.signed)


Activations = Callable[[StressNet, Tensor], Tensor]  # (model, inputs) -> a reading's latent activations [batch, m]


@torch.no_grad()
def tracking(activations: Activations, sc: Scenario, signed: bool) -> float:
    """The best Pearson correlation of one latent's activation with the truth's value g(x) on held-out rows
    (signed coordinates of a basis: either sign counts)."""
    assert sc.truth.value is not None
    x = sc.eval_batch(4096, seed=4321)
    acts, g = activations(sc.model, x).double(), sc.truth.value(x).double()
    acts, g = acts - acts.mean(0), g - g.mean()
    corr = (acts * g[:, None]).sum(0) / (acts.norm(dim=0) * g.norm()).clamp_min(1e-12)
    return float((corr.abs() if signed else corr).max())


@dataclass(frozen=True)
class Latents:
    """A dictionary or basis: its directions (scored as `Directions`) and its latents' activations on a model's
    inputs (scored against a computed feature's value)."""

    directions: Directions
    activations: Activations
    signed: bool = False  # a basis's coordinates are signed

    def score(self, sc: Scenario) -> float | None:
        if sc.truth.value is None:
            return self.directions.score(sc)
        return tracking(self.activations, sc, self.signed)

    def pair_score(self, sc: Scenario) -> float | None:
        return self.directions.pair_score(sc)


def site_latents(sae: SparseDictionary, site: str | tuple[str, ...]) -> Activations:
    """A dictionary's activations on a site of the toy (a tuple: those sites concatenated)."""
    names = (site,) if isinstance(site, str) else site

    @torch.no_grad()
    def activations(model: StressNet, x: Tensor) -> Tensor:
        got = sites(model, x)
        return sae.encode(torch.cat([got[n] for n in names], dim=1))

    return activations


def site_values(site: str) -> Activations:
    """A basis's activations: the site's own coordinates."""
    return lambda model, x: sites(model, x)[site]


def planted_pieces(sc: Scenario) -> Tensor:
    """[k, d_out, d_in]: the part of the truth's reading layer that reads each planted direction, (W u) uᵀ."""
    layer = sc.model.get_submodule(sc.truth.layer)
    assert isinstance(layer, torch.nn.Linear)
    W = layer.weight.detach()
    u = sc.truth.directions.to(W.dtype)
    return (u @ W.T)[:, :, None] * u[:, None, :]


@dataclass(frozen=True)
class Pieces:
    """Weight pieces per layer ([C, d_out, d_in]) from a parameter decomposition."""

    layers: dict[str, Tensor]
    signed: bool = True

    def score(self, sc: Scenario) -> float | None:
        return self._score(sc, 1)

    def pair_score(self, sc: Scenario) -> float | None:
        """A circle: the share of its pieces' span that the best pair of subcomponents spans."""
        return self._score(sc, 2)

    def _score(self, sc: Scenario, size: int) -> float | None:
        if sc.truth.value is not None:
            return None  # a computed feature: no planted piece of one layer to compare with
        found = self.layers.get(sc.truth.layer)
        truth = planted_pieces(sc)
        if found is None or found.shape[1:] != truth.shape[1:] or len(found) < size:
            return None
        if sc.truth.circle:
            return plane_share(truth.flatten(1), found.flatten(1), size)
        return _mmcs(truth.flatten(1), found.flatten(1), self.signed)


@dataclass(frozen=True)
class Probes:
    """One probe per planted feature, keyed by the input that switches the feature on."""

    probes: dict[int, LinearProbe]
    angle: Tensor | None = None  # a circle: least squares [d + 1, 2] from (r0, 1) to (cos φ, sin φ) when it is on

    def pair_score(self, sc: Scenario) -> float | None:
        """A circle: R² of the (cos φ, sin φ) regression on held-out rows with the feature on."""
        if self.angle is None:
            return None
        x = sc.eval_batch(4096, seed=4321)
        on = sc.truth.labels(x)[:, 0]
        target = x[on][:, sc.truth.inputs].double()
        got = _with_bias(sites(sc.model, x[on])[RESID]) @ self.angle
        return float(1 - (got - target).square().sum() / (target - target.mean(0)).square().sum())

    def score(self, sc: Scenario) -> float | None:
        x = sc.eval_batch(4096, seed=4321)
        rows, labels = sites(sc.model, x)[RESID], sc.truth.labels(x)
        pairs = [(i, self.probes[inp]) for i, inp in enumerate(sc.truth.inputs) if inp in self.probes]
        if not pairs or rows.shape[1] != pairs[0][1].w.shape[0]:
            return None
        return float(np.mean([p.accuracy(rows, labels[:, i]) for i, p in pairs]))


def _codes(model: StressNet, x: Tensor) -> np.ndarray:
    return spline_codes(model, x, [NEURONS]).hard()


@dataclass(frozen=True)
class CodeBits:
    """For each planted feature (keyed by its input), the polytope-code bit (neuron on/off, and which polarity)
    that best tracks it."""

    bits: dict[int, tuple[int, bool]]

    def score(self, sc: Scenario) -> float | None:
        x = sc.eval_batch(4096, seed=4321)
        codes, labels = _codes(sc.model, x), sc.truth.labels(x).numpy()
        pairs = [(i, self.bits[inp]) for i, inp in enumerate(sc.truth.inputs) if inp in self.bits]
        if not pairs or max(b for _, (b, _) in pairs) >= codes.shape[1]:
            return None
        return float(np.mean([balanced_accuracy_score(labels[:, i], codes[:, b] == on) for i, (b, on) in pairs]))


# --- the lenses --------------------------------------------------------------------------------------------


def _rows(sc: Scenario, budget: Budget, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    x = sc.fit_batch(budget.rows, seed)
    return x, sites(sc.model, x)


def _width(sc: Scenario, budget: Budget) -> int:
    return budget.latents_per_feature * len(sc.truth.inputs) + 4


def _topk_sae(rows: Tensor, sc: Scenario, budget: Budget, seed: int) -> SparseDictionary:
    d = rows.shape[1]
    cfg = topk_config(d, max(_width(sc, budget), 2 * d))
    return fit_rows(rows, cfg, steps=budget.sae_steps, batch_size=budget.batch_size, lr=3e-3, seed=seed)


def sae_topk(sc: Scenario, budget: Budget, seed: int) -> Reading:
    _, got = _rows(sc, budget, seed)
    sae = _topk_sae(got[RESID], sc, budget, seed)
    return Latents(Directions(sae.W_dec.detach()), site_latents(sae, RESID))


def sae_mlp_out(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """A TopK SAE of the first MLP's output (one layer's output dictionary)."""
    _, got = _rows(sc, budget, seed)
    sae = _topk_sae(got[MLP_OUT], sc, budget, seed)
    return Latents(Directions(sae.W_dec.detach()), site_latents(sae, MLP_OUT))


def crosscoder(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """A TopK SAE of both MLPs' outputs concatenated (an acausal crosscoder of the two layers); a latent's direction
    in the stream is the sum of its two decoder halves (what it adds to the residual stream across both layers)."""
    _, got = _rows(sc, budget, seed)
    sae = _topk_sae(torch.cat([got[MLP_OUT], got[MLP2_OUT]], dim=1), sc, budget, seed)
    dec = sae.W_dec.detach()
    d = got[MLP_OUT].shape[1]
    total = dec[:, :d] + dec[:, d:]
    total = total / total.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Latents(Directions(total), site_latents(sae, (MLP_OUT, MLP2_OUT)))


def sae_jumprelu(sc: Scenario, budget: Budget, seed: int) -> Reading:
    _, got = _rows(sc, budget, seed)
    d = got[RESID].shape[1]
    cfg = JumpReLUConfig.parse({"d_in": d, "d_sae": max(_width(sc, budget), 2 * d), "l0_coeff": 0.3,
                                "jumprelu_init_threshold": 0.2, "jumprelu_bandwidth": 0.05})
    sae = fit_rows(got[RESID], cfg, steps=budget.sae_steps, batch_size=budget.batch_size, lr=1e-2, seed=seed)
    return Latents(Directions(sae.W_dec.detach()), site_latents(sae, RESID))


def _train_dictionary(sae: SparseDictionary, steps: int, lr: float,
                      loss: Callable[[int], Tensor]) -> SparseDictionary:
    """Adam on a dictionary for a loss of the step (unit decoder rows kept, as in every SAE loop here)."""
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sae.train()
    for step in range(steps):
        value = loss(step)
        opt.zero_grad(set_to_none=True)
        value.backward()
        sae.before_step()
        opt.step()
        sae.after_step()
    return sae.eval()


def fit_transcoder(x: Tensor, y: Tensor, cfg: SAEConfig, *, steps: int, batch_size: int, lr: float = 3e-3,
                   seed: int = 0) -> SparseDictionary:
    """A transcoder x [n, d_in] -> y [n, d_out] trained on rows in memory (squared error + the arch's penalties)."""
    torch.manual_seed(seed)
    tc = make_sae(cfg)
    gen = torch.Generator().manual_seed(seed)

    def loss(step: int) -> Tensor:
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        out = tc.train_forward(x[idx], y[idx])
        return (out.recon - y[idx]).pow(2).sum(-1).mean() + out.sparsity_loss

    return _train_dictionary(tc, steps, lr, loss)


def transcoder(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """A TopK transcoder r0 -> MLP output; its reading is the encoder's directions in r0."""
    _, got = _rows(sc, budget, seed)
    x, y = got[RESID], got[MLP_OUT]
    d = x.shape[1]
    cfg = topk_config(d, max(_width(sc, budget), 2 * d), d_out=d)
    tc = fit_transcoder(x, y, cfg, steps=budget.sae_steps, batch_size=budget.batch_size, seed=seed)
    return Latents(Directions(tc.W_enc.detach().T), site_latents(tc, RESID))


def downstream(model: StressNet, r0: Tensor) -> Tensor:
    """The model's output from its residual stream r0 (what an e2e SAE's reconstruction is fed to)."""
    r1 = r0 + model.mlp(r0)
    r1 = r1 + model.mlp2(r1)
    return model.unembed(r1 + model.bil_out(model.bil(r1)))


def e2e_sae(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """A TopK SAE on r0 trained end to end (Braun et al. 2024): the model's output through the SAE must match."""
    xs, got = _rows(sc, budget, seed)
    r0, clean = got[RESID], got["out"]
    d = r0.shape[1]
    torch.manual_seed(seed)
    sae = make_sae(topk_config(d, max(_width(sc, budget), 2 * d)))
    gen = torch.Generator().manual_seed(seed)

    def loss(step: int) -> Tensor:
        idx = torch.randint(0, len(r0), (budget.batch_size,), generator=gen)
        out = sae.train_forward(r0[idx])
        return (downstream(sc.model, out.recon) - clean[idx]).pow(2).sum(-1).mean()

    with frozen(sc.model):  # gradients flow through the model to the SAE, never into the model's weights
        _train_dictionary(sae, budget.e2e_steps, 3e-3, loss)
    return Latents(Directions(sae.W_dec.detach()), site_latents(sae, RESID))


def resid_axes(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """The residual stream's own axes (the neuron-basis baseline at r0)."""
    _, got = _rows(sc, budget, seed)
    return Latents(Directions(fit_basis("neurons", got[RESID]).W_dec.detach(), signed=False), site_values(RESID),
                   signed=True)


def neurons(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """The MLP's ReLU neurons, one direction each (the neuron-basis baseline)."""
    _, got = _rows(sc, budget, seed)
    return Latents(Directions(fit_basis("neurons", got[NEURONS]).W_dec.detach(), space="neurons"),
                   site_values(NEURONS))


def _with_bias(rows: Tensor) -> Tensor:
    return torch.cat([rows.double(), torch.ones(len(rows), 1, dtype=torch.float64)], dim=1)


def linear_probe(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """One logistic-regression probe per planted feature on r0, fitted on the lens's data (labels from inputs).

    A circular feature also gets the 2-D probe: least squares from r0 to (cos φ, sin φ) on the rows where it is on.
    """
    x, got = _rows(sc, budget, seed)
    labels = sc.truth.labels(x)
    probes = {inp: LinearProbe.fit(got[RESID], labels[:, i]) for i, inp in enumerate(sc.truth.inputs)}
    if not sc.truth.circle:
        return Probes(probes)
    on = labels[:, 0]
    angle = torch.linalg.lstsq(_with_bias(got[RESID][on]), x[on][:, sc.truth.inputs].double()).solution
    return Probes(probes, angle)


def polytope(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """Polytope (spline) codes at the ReLU: for each feature the code bit that best tells it is present."""
    x, _ = _rows(sc, budget, seed)
    codes, labels = _codes(sc.model, x), sc.truth.labels(x).numpy()
    bits = {}
    for i, inp in enumerate(sc.truth.inputs):
        y = labels[:, i]
        if y.all() or not y.any():  # nothing to tell apart on this data: the reading has no bit for it
            bits[inp] = (0, True)
            continue
        accs = [(balanced_accuracy_score(y, codes[:, b] == on), b, on) for b in range(codes.shape[1])
                for on in (True, False)]
        _, b, on = max(accs)
        bits[inp] = (b, on)
    return CodeBits(bits)


TARGETS = ["mlp.mlp_in", "bil.w"]


def _batches(sc: Scenario, budget: Budget, seed: int) -> object:
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield sc.fit_data(budget.batch_size, gen)


def spd_lens(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """SPD (Bushnaq, Braun et al. 2025) on the MLP's input weight and the bilinear block's w."""
    cfg = spd.SPDConfig(C=_width(sc, budget), steps=budget.spd_steps, batch_size=budget.batch_size, lr=1e-2,
                        importance_minimality_coeff=3e-3, pnorm=1.0, seed=seed, log_every=10**9)
    dec = spd.decompose(sc.model, _batches(sc, budget, seed), TARGETS, cfg)  # type: ignore[arg-type]
    return Pieces({t: dec.matrices(t).detach() for t in TARGETS})


def l3d_lens(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """L3D (Chrisman et al. 2025): subnetworks of the same weights from per-sample output gradients."""
    cfg = l3d.L3DConfig(n_subnetworks=len(sc.truth.inputs) + 2, steps=budget.l3d_steps, batch_size=budget.batch_size,
                        lr=2e-2, top_k=1.0, seed=seed, log_every=10**9)
    dec = l3d.decompose(sc.model, _batches(sc, budget, seed), TARGETS, cfg)  # type: ignore[arg-type]
    return Pieces({t: dec.matrices(t).detach() for t in TARGETS}, signed=False)


def bilinear_eigen(sc: Scenario, budget: Budget, seed: int) -> Reading:
    """Data-free: eigenvectors of each output's quadratic form through the bilinear block (|λ| > 1e-6 only)."""
    m = sc.model
    head = m.unembed.weight.detach() @ m.bil_out.weight.detach()  # [n_out, d_bilinear]
    eigen = decompose_mlp(m.bil, head).eigen
    keep = eigen.values.abs() > 1e-6  # [n_out, d]
    vectors = eigen.vectors.transpose(1, 2)[keep]  # [m, d]
    return Directions(vectors, signed=False)


LENSES: dict[str, Callable[[Scenario, Budget, int], Reading]] = {
    "sae_topk": sae_topk,
    "sae_jumprelu": sae_jumprelu,
    "transcoder": transcoder,
    "e2e_sae": e2e_sae,
    "sae_mlp_out": sae_mlp_out,
    "crosscoder": crosscoder,
    "spd": spd_lens,
    "l3d": l3d_lens,
    "bilinear": bilinear_eigen,
    "polytope": polytope,
    "probe": linear_probe,
    "neurons": neurons,
    "resid_axes": resid_axes,
}
# the score each lens reports and the value at which it counts as having found the planted truth
METRIC = {name: "MMCS" for name in LENSES} | {"probe": "balanced accuracy", "polytope": "balanced accuracy"}
THRESHOLD = {name: 0.9 for name in LENSES}
