"""Local Loss Landscape Decomposition (L3D; Chrisman, Bushnaq & Sharkey 2025).

The idea: what a network does on one input shows in which way its parameters would have to move
to change that output. For each sample b take the gradient, with respect to the target weights,
of a divergence between the model's output and a reference output (the batch mean, or another
sample's output; for a KL divergence the batch mean is the mean of the output probabilities, the paper's
"mean output" read as a distribution):

    g_b = ∇_θ D(f(x_b; θ), y_ref)                    one vector in parameter space per sample

If the network is built from sparsely used mechanisms, each g_b lies in the span of the few
mechanisms that sample uses. L3D learns n *subnetworks*, directions in parameter space that are
low-rank in every weight matrix, with an encoder and a decoder each (like a sparse autoencoder
whose data are gradients):

    c_b,i = ⟨E_i, g_b⟩                  coefficient of subnetwork i (encoder E_i)
    ĝ_b   = Σ_{i ∈ topk(|c_b|)} c_b,i D_i    reconstruction from the top-k coefficients (decoder D_i, unit norm)
    loss  = Σ_b ‖ĝ_b − g_b‖² / Σ_b ‖g_b‖²

E_i and D_i are, per target weight [d_out, d_in], rank-r products A Bᵀ. The per-sample gradients
come from `torch.func` (vmap over grad), so any model whose forward works per sample works here.

    >>> from anatomist.mechanisms import l3d
    >>> dec = l3d.decompose(model, data, targets=["linear1", "linear2"], config=l3d.L3DConfig(n_subnetworks=5))
    >>> dec.matrices("linear1")   # [5, d_out, d_in]: each subnetwork's decoder direction in that weight
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from anatomist.core import distributed
from anatomist.core.errors import AnatomistError
from anatomist.mechanisms.components import Target, find_targets, layer_weight, model_output
from anatomist.mechanisms.training import FitConfig, fit


class L3DConfig(FitConfig, defaults={"steps": 4000, "batch_size": 512, "lr": 1e-2, "lr_schedule": "cosine"}):
    """Hyperparameters of an L3D run (defaults: the TMS 5-2 setting; schedule fields: `FitConfig`)."""

    n_subnetworks: int = Field(default=5, description="Number of subnetworks (parameter directions) to learn.", gt=0)
    rank: int = Field(default=1, description="Rank of each subnetwork in every target weight matrix.", gt=0)
    top_k: float = Field(
        default=1.0,
        description="Coefficients kept per sample; with batch_top_k, the batch keeps top_k × batch_size in total.",
        gt=0,
    )
    batch_top_k: bool = Field(default=True, description="Choose the top coefficients over the whole batch.")
    divergence: Literal["mse", "kl"] = Field(
        default="mse", description="D between output and reference: squared error, or KL for logits."
    )
    reference: Literal["batch_mean", "shuffled", "zero"] = Field(
        default="batch_mean",
        description="Reference output: the batch's mean output (for kl: the mean of the output probabilities), "
        "another sample's output, or zero (the paper's code on its circuit toys: ZeroOutput).",
    )


# --- per-sample gradients ------------------------------------------------------------------------


def divergence(output: Tensor, reference: Tensor, kind: str) -> Tensor:
    """D(output, reference) for one sample (summed over output dims): ½‖o − r‖², or KL(softmax r ‖ softmax o)."""
    if kind == "mse":
        return 0.5 * (output - reference).square().sum()
    return F.kl_div(output.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="sum")


def references(
    outputs: Tensor, kind: str, generator: torch.Generator | None = None, divergence_kind: str = "mse"
) -> Tensor:
    """[batch, ...]: each sample's reference output (detached).

    The batch mean is the mean of what the divergence compares: outputs for "mse"; for "kl", output
    distributions, so the reference is the log of the mean probabilities (the batch's mixture distribution),
    not the mean of the logits (whose softmax is a renormalised geometric mean that no sample's output averages to).
    """
    outputs = outputs.detach()
    if kind == "zero":  # D(f(x), 0): the gradient of the output's own size (for kl: against uniform logits)
        return torch.zeros_like(outputs)
    if kind == "batch_mean" and divergence_kind == "kl":
        mean_log_probs = outputs.log_softmax(-1).logsumexp(0, keepdim=True) - math.log(len(outputs))
        return mean_log_probs.expand_as(outputs)
    if kind == "batch_mean":
        return outputs.mean(0, keepdim=True).expand_as(outputs)
    perm = torch.randperm(len(outputs), generator=generator, device=generator.device if generator else None)
    return outputs[perm.to(outputs.device)]


def _stored_parameter(model: nn.Module, t: Target) -> tuple[str, bool]:
    """The name of the parameter that stores a target's weight, and whether it is stored transposed."""
    w = layer_weight(model.get_submodule(t.name))  # [d_out, d_in], possibly a view of another tensor
    for pname, p in model.named_parameters():
        if p.untyped_storage().data_ptr() != w.untyped_storage().data_ptr() or p.numel() != w.numel():
            continue
        if p.shape == w.shape and p.stride() == w.stride():
            return pname, False
        if p.shape == w.shape[::-1] and p.stride() == w.stride()[::-1]:
            return pname, True
    raise AnatomistError(
        f"target '{t.name}': no parameter of the model stores its weight; L3D differentiates stored weights"
    )


def per_sample_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Sequence[Target],
    divergence_kind: str = "mse",
    reference_kind: str = "batch_mean",
    generator: torch.Generator | None = None,
    split: bool = False,
) -> dict[str, Tensor]:
    """Per-sample gradient of D(f(x_b), ref_b) w.r.t. each owner target's weight: {name: [batch, d_out, d_in]}.

    Gradients are in the y = W x layout of `Decomposition` (an Embedding/Conv1D weight is transposed).
    Tied targets share their owner's stored weight, so their uses add up in the owner's gradient.
    `split`: `inputs` are this rank's part of a global batch, and the references (a batch mean, another
    sample's output) are taken over the global batch.
    """
    stored = {t.name: _stored_parameter(model, t) for t in targets if t.owner == t.name}
    params = {pname: model.get_parameter(pname).detach() for pname, _ in stored.values()}
    with torch.no_grad():
        outputs = model_output(model(inputs))
    if split:
        refs = distributed.my_part(references(distributed.gather_rows(outputs), reference_kind, generator,
                                              divergence_kind))
    else:
        refs = references(outputs, reference_kind, generator, divergence_kind)

    def loss(p: dict[str, Tensor], x: Tensor, r: Tensor) -> Tensor:
        out = model_output(functional_call(model, p, (x[None],)))[0]
        return divergence(out, r, divergence_kind)

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, refs)
    return {name: grads[pname].transpose(1, 2) if tr else grads[pname] for name, (pname, tr) in stored.items()}


# --- the subnetworks -----------------------------------------------------------------------------


class Subnetworks(nn.Module):
    """n parameter directions, rank-r in each owner weight: encoders E_i and unit-norm decoders D_i."""

    def __init__(self, targets: Sequence[Target], n: int, rank: int, generator: torch.Generator, like: Tensor):
        super().__init__()
        self.n, self.rank = n, rank
        self.owners = [t for t in targets if t.owner == t.name]
        self.dec_a, self.dec_b = nn.ParameterDict(), nn.ParameterDict()  # [n, d_out, r], [n, d_in, r]
        self.enc_a, self.enc_b = nn.ParameterDict(), nn.ParameterDict()
        factors = {
            t.name: (
                torch.randn(n, t.d_out, rank, generator=generator),
                torch.randn(n, t.d_in, rank, generator=generator),
            )
            for t in self.owners
        }
        # scale each subnetwork to unit norm over all its weights; encoders start as the decoders (as in
        # SAEs), so a first coefficient is a projection and the first reconstruction never overshoots
        norm = _total([(a @ b.transpose(1, 2)).square().sum((1, 2)) for a, b in factors.values()]).sqrt()
        for name, (a, b) in factors.items():
            a = (a / norm[:, None, None]).to(like)
            b = b.to(like)
            self.dec_a[_key(name)], self.dec_b[_key(name)] = nn.Parameter(a), nn.Parameter(b)
            self.enc_a[_key(name)], self.enc_b[_key(name)] = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def _full(self, a: nn.ParameterDict, b: nn.ParameterDict) -> dict[str, Tensor]:
        return {t.name: a[_key(t.name)] @ b[_key(t.name)].transpose(1, 2) for t in self.owners}  # [n, d_out, d_in]

    def decoders(self) -> dict[str, Tensor]:
        """{owner: [n, d_out, d_in]}, each subnetwork scaled to unit norm over all its weights."""
        full = self._full(self.dec_a, self.dec_b)
        norm = _total([m.square().sum((1, 2)) for m in full.values()]).sqrt()
        return {name: m / norm[:, None, None].clamp_min(1e-12) for name, m in full.items()}

    def encoders(self) -> dict[str, Tensor]:
        return self._full(self.enc_a, self.enc_b)


def _key(name: str) -> str:
    return name.replace(".", "-")  # ParameterDict keys may not contain dots


def _total(parts: list[Tensor]) -> Tensor:
    """Sum of same-shaped tensors (one per layer)."""
    return torch.stack(parts).sum(0)


def coefficients(grads: dict[str, Tensor], encoders: dict[str, Tensor]) -> Tensor:
    """[batch, n]: c_b,i = Σ_l ⟨E_i,l, g_b,l⟩."""
    return _total([torch.einsum("bod,nod->bn", g, encoders[k]) for k, g in grads.items()])


def top_k_mask(c: Tensor, k: float, batch: bool) -> Tensor:
    """Boolean [batch, n]: the k largest |c| per sample, or the k·batch largest over the batch."""
    scores = c.abs()
    if batch:
        n_keep = max(1, int(k * c.shape[0]))
        flat = torch.zeros(scores.numel(), dtype=torch.bool, device=c.device)
        flat[scores.flatten().topk(min(n_keep, scores.numel())).indices] = True
        return flat.view_as(c)
    idx = scores.topk(min(max(1, int(k)), c.shape[1]), dim=1).indices
    return torch.zeros_like(c, dtype=torch.bool).scatter_(1, idx, True)


def reconstruction_loss(
    grads: dict[str, Tensor], coeffs: Tensor, decoders: dict[str, Tensor], split: bool = False
) -> Tensor:
    """Σ_b ‖ĝ_b − g_b‖² / Σ_b ‖g_b‖², with ĝ_b = Σ_i c_b,i D_i (coeffs already masked).

    `split`: the rows are this rank's part of a global batch; the denominator (no gradient: the target
    gradients are data) is summed over all ranks and the result scaled by the number of ranks, so the mean of
    the ranks' losses is the global batch's."""
    err = _total([(torch.einsum("bn,nod->bod", coeffs, decoders[k]) - g).square().sum() for k, g in grads.items()])
    norm = _total([g.square().sum() for g in grads.values()]).detach()
    if split and distributed.world_size() > 1:
        norm = norm.clone()
        distributed.average_([norm])  # the mean over ranks: the global sum / N, so err / norm = N·err / global sum
    return err / norm.clamp_min(1e-30)


# --- the result ----------------------------------------------------------------------------------


class L3DDecomposition(nn.Module):
    """The learned subnetworks of a model, and the coefficients they take on inputs."""

    model: nn.Module

    def __init__(self, model: nn.Module, targets: Sequence[Target], config: L3DConfig, generator: torch.Generator):
        super().__init__()
        object.__setattr__(self, "model", model)  # referenced, not a submodule: its weights are not ours
        self.config = config
        self.targets = {t.name: t for t in targets}
        like = layer_weight(model.get_submodule(targets[0].owner)).detach()
        self.subnetworks = Subnetworks(targets, config.n_subnetworks, config.rank, generator, like)
        self.history: list[dict[str, float]] = []

    def _owner_weight(self, name: str) -> Tensor:
        return layer_weight(self.model.get_submodule(self.targets[name].owner)).detach()

    @torch.no_grad()
    def matrices(self, name: str) -> Tensor:
        """[n, d_out, d_in]: each subnetwork's (unit-norm, all weights together) decoder in this target's layout.

        Signs are arbitrary in L3D (a coefficient can be negative); each subnetwork is oriented so
        that its inner product with the model's own weights is non-negative.
        """
        if name not in self.targets:
            raise AnatomistError(f"'{name}' is not a target of this decomposition; targets: {list(self.targets)}")
        dec = self.subnetworks.decoders()
        sign = torch.sign(_total([(dec[o] * self._owner_weight(o)[None]).sum((1, 2)) for o in dec]))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        t = self.targets[name]
        m = dec[t.owner] * sign[:, None, None]
        return m.transpose(1, 2) if t.transposed else m

    def gradients(
        self, inputs: Tensor, generator: torch.Generator | None = None, split: bool = False
    ) -> dict[str, Tensor]:
        c = self.config
        return per_sample_gradients(
            self.model, inputs, list(self.targets.values()), c.divergence, c.reference, generator, split
        )

    @torch.no_grad()
    def coefficients(self, inputs: Tensor) -> Tensor:
        """[batch, n]: each subnetwork's coefficient on each input's gradient (before top-k)."""
        return coefficients(self.gradients(inputs), self.subnetworks.encoders())

    @torch.no_grad()
    def reconstruction_loss(self, inputs: Tensor) -> float:
        """The normalised gradient reconstruction error with the top-k coefficients, on these inputs."""
        grads = self.gradients(inputs)
        c = coefficients(grads, self.subnetworks.encoders())
        c = c * top_k_mask(c, self.config.top_k, self.config.batch_top_k)
        return float(reconstruction_loss(grads, c, self.subnetworks.decoders()))


# --- training ------------------------------------------------------------------------------------


def _input_tensor(batch: Any) -> Tensor:
    if not isinstance(batch, Tensor):
        raise AnatomistError(
            f"L3D needs each batch to be one input tensor (per-sample gradients vmap over its first dimension), "
            f"got {type(batch).__name__}"
        )
    return batch


def initial_decomposition(model: nn.Module, targets: Sequence[str] | str, config: L3DConfig) -> L3DDecomposition:
    """The untrained subnetworks `decompose` starts from (same seed, same draws): a baseline to score."""
    found = find_targets(model, targets)
    return L3DDecomposition(model, found, config, torch.Generator().manual_seed(config.seed))


def l3d_loss(dec: L3DDecomposition, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The normalised gradient reconstruction loss of one batch with the top-k coefficients."""
    cfg = dec.config
    grads = {k: v.detach() for k, v in dec.gradients(x, generator, split=True).items()}
    c = coefficients(grads, dec.subnetworks.encoders())
    # a batch top-k picks over the global batch (every rank's coefficients); each rank keeps its rows' part
    c = c * distributed.my_part(top_k_mask(distributed.gather_rows(c.detach()), cfg.top_k, cfg.batch_top_k))
    loss = reconstruction_loss(grads, c, dec.subnetworks.decoders(), split=True)
    return loss, {"recon": loss.detach()}


def decompose(
    model: nn.Module,
    data: Iterable[Any],
    targets: Sequence[str] | str,
    config: L3DConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    generators: dict[str, torch.Generator] | None = None,
    callback: Callable[[int, L3DDecomposition, dict[str, float]], None] | None = None,
) -> L3DDecomposition:
    """Learn `config.n_subnetworks` low-rank subnetworks of the target weights from per-sample gradients.

    `data` yields batches of model inputs (one tensor each, the first dimension the samples), as for
    `spd.decompose`. The model is frozen (not changed) during the run. `run_dir`/`resume`/`generators`
    checkpoint and resume as in `spd.decompose`; `callback(step, dec, losses)` runs every
    `config.log_every` steps.
    """
    cfg = config or L3DConfig()
    dec = initial_decomposition(model, targets, cfg)
    ref_gen = torch.Generator().manual_seed(cfg.seed + 1)  # for the "shuffled" reference
    opt = torch.optim.Adam(dec.subnetworks.parameters(), lr=cfg.lr)
    return fit(
        dec,
        model,
        data,
        lambda step, batch: l3d_loss(dec, _input_tensor(batch), ref_gen),
        opt,
        cfg,
        method="L3D",
        run_dir=run_dir,
        resume=resume,
        generators={"reference": ref_gen, **(generators or {})},
        callback=callback,
    )
