"""Attribution-based Parameter Decomposition (APD; Braun, Bushnaq, Heimersheim, Mendel & Sharkey 2025).

APD splits a network's parameters into C components, each a direction in parameter space that
spans every target layer: component c has one piece P_c,l = A_c,l B_c,l of rank r in each target
weight. Training asks that

* the components add up to the weights     faithfulness   Σ_l ‖W_l − Σ_c P_c,l‖² / N_params
* few components explain any one input      top-k reconstruction: run the model with only the
                                            components of largest attribution (top k over the
                                            batch) and match the target's output (MSE)
* each component is simple                  Schatten-p simplicity of the active components:
                                            Σ_c Σ_l Σ_m (‖A_c,l[:, m]‖² ‖B_c,l[m, :]‖²)^{p/2}

A component's attribution on an input is how much the output would move along it, to first order:

    A_c(x) = Σ_o ( Σ_l ∂y_o/∂post_l · (x_l P_c,l) )²

(x_l: the target layer's input, post_l: its output, both in the unchanged model).

Implementation: component c's rank-r piece of a layer is r rank-one subcomponents of the shared
`Decomposition` (indices c·r … c·r + r − 1), so masked forwards, tied weights and
`.matrices(target)` come from `components`; a component mask is repeated over its r pieces.

    >>> from anatomist.mechanisms import apd
    >>> dec = apd.decompose(model, batches, targets=["linear1", "linear2"], config=apd.APDConfig(C=5))
    >>> dec.matrices("linear1")   # [C, d_out, d_in]: each component's piece of that weight
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from anatomist.core import distributed
from anatomist.core.errors import AnatomistError
from anatomist.mechanisms.components import Decomposition, find_targets, model_output
from anatomist.mechanisms.training import FitConfig, fit
from anatomist.nets.sites import Site, SiteFn, run_and_capture, splice


class APDConfig(
    FitConfig,
    defaults={"steps": 20_000, "batch_size": 2048, "lr": 3e-2, "lr_schedule": "constant", "lr_warmup": 0.05},
):
    """APD hyperparameters; the defaults are the paper's TMS 5-2 setting (schedule fields: `FitConfig`)."""

    # the ApolloResearch/apd reference's cosine, lr·cos(π/2 · t/T) after warm-up (its SPD successor kept it)
    cosine: ClassVar[Literal["half", "quarter"]] = "quarter"

    C: int = Field(default=5, description="Components; each spans every target layer.", gt=0)
    rank: int | None = Field(
        default=None,
        description="Rank of each component in each target weight (None: full, the largest min(d_in, d_out)).",
        gt=0,
    )
    top_k: float = Field(
        default=0.211,
        description="Components kept per input; with batch_top_k the batch keeps top_k × batch size in total.",
        gt=0,
    )
    batch_top_k: bool = Field(default=True, description="Choose the top attributions over the whole batch.")
    faithfulness_coeff: float = Field(default=1.0, description="Weight of Σ‖W − ΣP‖²/N_params.", ge=0)
    topk_recon_coeff: float = Field(default=1.0, description="Weight of the top-k reconstruction MSE.", ge=0)
    schatten_coeff: float = Field(default=0.7, description="Weight of the Schatten-p simplicity loss.", ge=0)
    schatten_p: float = Field(default=1.0, description="p of the Schatten norm (p < 2 pushes towards low rank).", gt=0)
    init: Literal["xavier", "random"] = Field(
        default="xavier",
        description="Start of the factors: 'xavier' (the APD reference's: xavier-normal A and B of each component) or "
        "'random' (SPD's: random unit directions scaled by their overlap with W).",
    )


class APDDecomposition(Decomposition):
    """C components of rank r per target, stored as C·r rank-one subcomponents grouped by component."""

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[str] | str,
        C: int,
        rank: int | None = None,
        generator: torch.Generator | None = None,
        init: str = "random",
    ):
        if rank is None:
            rank = max(min(t.d_in, t.d_out) for t in find_targets(model, targets))
        super().__init__(model, targets, C, generator, init=init, rank=rank)
        self.history: list[dict[str, float]] = []

    def expand(self, mask: Tensor) -> Tensor:
        """A component mask [..., C] as a subcomponent mask [..., C·r]."""
        return mask.repeat_interleave(self.rank, dim=-1)

    def matrices(self, name: str) -> Tensor:
        """Each component's piece of a target, `[C, d_out, d_in]` in `nn.Linear` layout (y = W x)."""
        pieces = super().matrices(name)  # [C·r, d_out, d_in]
        return pieces.view(self.C, self.rank, *pieces.shape[1:]).sum(1)

    def run_with_components(self, inputs: Any, mask: Tensor | None) -> Tensor:
        """The model's output with only the masked-in components ([..., C], 1 = keep) on every target."""
        full = None if mask is None else self.expand(mask)
        return self.run_with_masks(inputs, dict.fromkeys(self.targets, full))

    def schatten(self, p: float) -> Tensor:
        """[C]: Σ_l Σ_m (‖A_c,l[:, m]‖² ‖B_c,l[m, :]‖²)^{p/2} over each stored weight (ties counted once)."""
        total = torch.zeros(self.C, device=self.V[next(iter(self.V.keys()))].device)
        for t in self.owners():
            V, U = self.factors(t.name)  # [d_in, C·r], [C·r, d_out]
            s = V.square().sum(0) * U.square().sum(1)  # [C·r]
            total = total + (s + 1e-16).pow(p / 2).view(self.C, self.rank).sum(1)
        return total

    @torch.no_grad()
    def attributions(self, inputs: Any) -> Tensor:
        """[..., C]: A_c(x) = Σ_o (Σ_l ∂y_o/∂post_l · (x_l P_c,l))², from the unchanged model's gradients."""
        return gradient_attributions(self, inputs)[1]


def _run_capturing(dec: Decomposition, inputs: Any) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The unchanged model's output, each target's input, and a zero added to each target's output.

    The gradient of the output with respect to a target's added zero is its gradient with respect
    to that target's output, through every later layer (later targets included).
    """
    zeros: dict[str, Tensor] = {}

    def add_zero(name: str) -> SiteFn:
        def add(out: Tensor) -> Tensor:
            zeros[name] = torch.zeros_like(out, requires_grad=True)
            return out + zeros[name]

        return add

    inputs_at = {name: Site(dec.target(name).name, "input") for name in dec.targets}
    outputs: dict[Site | str, SiteFn] = {Site(dec.target(name).name, "output"): add_zero(name) for name in dec.targets}
    with splice(dec.model, outputs), torch.enable_grad():
        out, seen = run_and_capture(dec.model, inputs, list(inputs_at.values()))
    return model_output(out), {name: seen[site].detach() for name, site in inputs_at.items()}, zeros


def gradient_attributions(dec: APDDecomposition, inputs: Any) -> tuple[Tensor, Tensor]:
    """The unchanged model's output [..., d_y] (detached) and each component's attribution [..., C]."""
    out, pres, posts = _run_capturing(dec, inputs)
    lead, d_y = out.shape[:-1], out.shape[-1]
    names = list(posts)
    # ∂y_o/∂post_l for every output dimension o at once: [d_y, *out.shape[:-1], d_out_l]
    eye = torch.eye(d_y, dtype=out.dtype, device=out.device).view(d_y, *([1] * len(lead)), d_y).expand(d_y, *out.shape)
    jac = torch.autograd.grad(out, [posts[n] for n in names], grad_outputs=eye, is_grads_batched=True)
    with torch.no_grad():
        total = torch.zeros(d_y, *lead, dec.C, dtype=out.dtype, device=out.device)
        for name, j in zip(names, jac, strict=True):
            if j.shape[1:-1] != lead:
                raise AnatomistError(
                    f"APD attributions need target outputs with the model output's leading shape {list(lead)}; "
                    f"'{name}' gives {list(j.shape[1:-1])}"
                )
            _, U = dec.factors(name)  # [C·r, d_out]
            inner = dec.inner(name, pres[name])  # [..., C·r]: x_l V
            per_piece = (j @ U.T) * inner  # [d_y, ..., C·r]: ∂y_o/∂post · (x_l u_j v_jᵀ)
            total += per_piece.view(*per_piece.shape[:-1], dec.C, dec.rank).sum(-1)
        return out.detach(), total.square().sum(0)


def top_k_mask(attributions: Tensor, k: float, batch: bool) -> Tensor:
    """Float 0/1 [..., C]: the k largest attributions per input, or k × (number of inputs) over the batch."""
    C = attributions.shape[-1]
    flat = attributions.reshape(-1, C)
    if batch:
        n_keep = min(max(1, int(k * flat.shape[0])), flat.numel())
        mask = torch.zeros(flat.numel(), dtype=attributions.dtype, device=attributions.device)
        mask[flat.flatten().topk(n_keep).indices] = 1.0
        return mask.view_as(attributions)
    idx = flat.topk(min(max(1, int(k)), C), dim=-1).indices
    return torch.zeros_like(flat).scatter_(-1, idx, 1.0).view_as(attributions)


def apd_losses(dec: APDDecomposition, inputs: Any, cfg: APDConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted total loss and its terms for one batch."""
    target_out, attr = gradient_attributions(dec, inputs)
    # a batch top-k picks over the global batch (every rank's attributions), and each rank keeps its rows' part
    mask = distributed.my_part(top_k_mask(distributed.gather_rows(attr), cfg.top_k, cfg.batch_top_k))  # [..., C]
    terms: dict[str, Tensor] = {"faithfulness": dec.faithfulness_loss()}
    terms["topk_recon"] = (dec.run_with_components(inputs, mask) - target_out).square().mean()
    # Schatten norms of the components each input uses, averaged over inputs, per parameter
    usage = mask.reshape(-1, dec.C).mean(0)  # [C]
    terms["schatten"] = (usage * dec.schatten(cfg.schatten_p)).sum() / dec.n_target_params()
    total = (
        cfg.faithfulness_coeff * terms["faithfulness"]
        + cfg.topk_recon_coeff * terms["topk_recon"]
        + cfg.schatten_coeff * terms["schatten"]
    )
    return total, {k: v.detach() for k, v in terms.items()}


Callback = Callable[[int, APDDecomposition, dict[str, float]], None]


def initial_decomposition(model: nn.Module, targets: Sequence[str] | str, config: APDConfig) -> APDDecomposition:
    """The untrained decomposition `decompose` starts from (same seed, same draws): a baseline to score."""
    generator = torch.Generator().manual_seed(config.seed)
    return APDDecomposition(model, targets, config.C, config.rank, generator=generator, init=config.init)


def decompose(
    model: nn.Module,
    data: Iterable[Any],
    targets: Sequence[str] | str,
    config: APDConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    generators: dict[str, torch.Generator] | None = None,
    callback: Callback | None = None,
) -> APDDecomposition:
    """Fit APD to `targets` (module-name patterns) of `model` on batches of model inputs from `data`.

    The reference output is the model's own output on each batch; the model is frozen during the run.
    `run_dir`/`resume`/`generators` checkpoint and resume as in `spd.decompose`; `callback(step, dec,
    losses)` runs every `config.log_every` steps (e.g. to track recovery).
    """
    cfg = config or APDConfig()
    dec = initial_decomposition(model, targets, cfg)
    opt = torch.optim.AdamW(dec.parameters(), lr=cfg.lr, weight_decay=0.0)
    return fit(
        dec,
        model,
        data,
        lambda step, batch: apd_losses(dec, batch, cfg),
        opt,
        cfg,
        method="APD",
        run_dir=run_dir,
        resume=resume,
        generators=generators,
        callback=callback,
    )
