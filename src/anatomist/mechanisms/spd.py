"""Stochastic Parameter Decomposition (Bushnaq, Braun et al. 2025) on any PyTorch model.

Each target weight is split into C rank-one subcomponents, W ≈ Σ_c U_c V_cᵀ (see `components`).
For an input, subcomponent c of a layer gets a *causal importance* g_c ∈ [0, 1] from its own tiny
MLP (1 → d_gate, GELU → 1) applied to its inner activation V_c·a (a: the layer's input in the
unchanged model), squashed by a lower-leaky hard sigmoid. Training asks that

* the pieces add up to the weights             faithfulness  ‖W − Σ U Vᵀ‖² / N_params
* any mask between g and 1 keeps the output:    m = g + (1 − g)·U(0, 1) on every target at once
                                                (stochastic reconstruction) and on one target at a
                                                time (layerwise); MSE for toys, KL for LMs
* as few pieces as possible are important       importance minimality Σ_c g_c^p (upper-leaky g)

with AdamW (no weight decay) on the factors and the CI MLPs, the target model frozen.

The reference's later improvements, which make LMs work, are options (off by default): a delta
component W − ΣUVᵀ per target instead of the faithfulness loss (`delta_component`), stochastic masks on
random subsets of the targets (`stochastic_recon_subset_coeff`), adversarial PGD masks
(`pgd_recon_coeff`, `pgd_steps`, `pgd_step_size`, `pgd_scope`), a frequency term and an annealing end for
the minimality loss (`importance_minimality_beta`, `pnorm_anneal_end`), a faithfulness warm-up
(`faithfulness_warmup_steps`), C per module pattern (`C_per_module`, the reference's `module_info`) and
causal-importance networks that read whole layer inputs, one per target or one for all targets
(`ci_fn` 'shared_mlp' / 'global_shared_mlp', the reference's `ci_fn_type` and global `ci_config`; its
current default is 'vector_mlp', one network per subcomponent reading the whole input, which we do
not offer). `runs.spd_lm` uses them on a whole Llama.

On the CPU the per-subcomponent gate MLPs run in a fused C kernel (`gate_kernel`) when a C compiler is
present; otherwise, and for float64 or other devices, in PyTorch (same numbers to float precision).

>>> from anatomist.mechanisms import spd
>>> dec = spd.decompose(model, batches, targets=["linear1", "linear2"], config=spd.SPDConfig(C=20))
>>> dec.matrices("linear1")        # [C, d_out, d_in]
>>> dec.importances(x)["linear1"]  # [batch, C]; [batch, seq, C] for sequence inputs (the layer's leading dims)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.core import distributed
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors, save_json, save_tensors
from anatomist.mechanisms import gate_kernel
from anatomist.mechanisms.components import Decomposition
from anatomist.mechanisms.training import FitConfig, fit


class SPDConfig(FitConfig, defaults={"steps": 40_000, "batch_size": 4096, "lr": 1e-3, "lr_schedule": "cosine"}):
    """SPD hyperparameters; the defaults are the paper's TMS 5-2 setting (schedule fields: `FitConfig`)."""

    cosine: ClassVar[Literal["half", "quarter"]] = "quarter"  # the goodfire reference's lr·cos(π/2 · t/T)

    C: int = Field(default=20, description="Rank-one subcomponents per target layer.", gt=0)
    d_gate: int = Field(
        default=16, description="Hidden width of each causal-importance MLP (0: a scalar affine gate).", ge=0
    )
    faithfulness_coeff: float = Field(default=1.0, description="Weight of ‖W − ΣUVᵀ‖²/N_params.", ge=0)
    stochastic_recon_coeff: float = Field(
        default=1.0, description="Weight of the output loss with stochastic masks on all targets at once.", ge=0
    )
    stochastic_recon_layerwise_coeff: float = Field(
        default=1.0, description="Weight of the output loss with a stochastic mask on one target at a time.", ge=0
    )
    importance_minimality_coeff: float = Field(default=3e-3, description="Weight of Σ_c g_c^p.", ge=0)
    pnorm: float = Field(default=1.0, description="p of the importance-minimality loss.", gt=0)
    pnorm_final: float | None = Field(
        default=None, description="If set, p moves linearly from `pnorm` to this value from `pnorm_anneal_start` on."
    )
    pnorm_anneal_start: float = Field(
        default=0.0, description="Fraction of steps after which p starts annealing.", ge=0, le=1
    )
    n_mask_samples: int = Field(default=1, description="Stochastic masks drawn per step.", gt=0)
    output_loss: Literal["mse", "kl"] = Field(
        default="mse", description="'mse' (mean squared error of outputs) or 'kl' (KL(target ‖ masked) of logits)."
    )
    leaky_alpha: float = Field(default=0.01, description="Slope of the leaky parts of the hard sigmoids.", ge=0)
    init: Literal["random", "svd"] = Field(
        default="random",
        description="Start of the factors: 'random' (the paper's) or 'svd' (the weight's top singular pieces; "
        "not in the paper, a faster start on real models).",
    )
    # --- the reference's later improvements (off by default: the defaults are the paper's method) ---
    pnorm_anneal_end: float = Field(
        default=1.0, description="Fraction of steps at which p reaches `pnorm_final` and stays (reference: "
        "p_anneal_end_frac).", gt=0, le=1
    )
    importance_minimality_beta: float = Field(
        default=0.0, description="Frequency term of the minimality loss (reference: beta): each subcomponent's "
        "mean g^p is weighted by 1 + β·log2(1 + its sum over the batch), so often-used pieces cost more.", ge=0
    )
    delta_component: bool = Field(
        default=False, description="Add W − ΣUVᵀ as one more component of every target (reference: "
        "use_delta_component): always on in the unmasked model (which then equals the target exactly), "
        "masked by U(0, 1) in the stochastic and PGD losses. Usually with faithfulness_coeff 0.",
    )
    stochastic_recon_subset_coeff: float = Field(
        default=0.0, description="Weight of the output loss with stochastic masks on a random subset of the "
        "targets (k ~ U{1..n} of them), the others left as they are (reference: StochasticReconSubsetLoss).", ge=0
    )
    pgd_recon_coeff: float = Field(
        default=0.0, description="Weight of the output loss with adversarial masks m = g + (1 − g)·s, the "
        "sources s ∈ [0, 1] chosen by projected sign-gradient ascent to make it worst (reference: PGDReconLoss).",
        ge=0,
    )
    pgd_steps: int = Field(default=1, description="Ascent steps of the PGD sources per training step.", ge=1)
    pgd_step_size: float = Field(default=0.1, description="Step of each PGD ascent (in units of the source).", gt=0)
    pgd_scope: Literal["input", "batch"] = Field(
        default="input", description="PGD sources per input and subcomponent ('input', reference: "
        "unique_per_datapoint) or one per subcomponent shared by the batch ('batch': shared_across_batch).",
    )
    faithfulness_warmup_steps: int = Field(
        default=0, description="Steps of faithfulness-only training of the factors before the main loop "
        "(reference: faithfulness_warmup_steps).", ge=0
    )
    faithfulness_warmup_lr: float = Field(default=1e-3, description="Adam lr of the faithfulness warm-up.", gt=0)
    C_per_module: dict[str, int] = Field(
        default_factory=dict, description="Module-name pattern (fnmatch) → C for the targets it matches, the "
        "first matching pattern winning; other targets get `C` (reference: module_info, a list of "
        "{module_pattern, C}). Tied targets share one C.",
    )
    ci_fn: Literal["mlp", "shared_mlp", "global_shared_mlp"] = Field(
        default="mlp", description="Causal-importance networks (reference: ci_fn_type, and ci_config "
        "fn_type='global_shared_mlp'): 'mlp' the paper's, one 1 → d_gate → 1 MLP per subcomponent reading its "
        "inner activation; 'shared_mlp' one d_in → d_gate → C MLP per target reading the layer's whole input; "
        "'global_shared_mlp' one MLP for all targets, from all their inputs concatenated to every C at once. "
        "d_gate is the hidden width (the reference's ci_fn_hidden_dims, one layer; 0: no hidden layer).",
    )

    def pnorm_at(self, step: int) -> float:
        """p at `step`: `pnorm`, then linear to `pnorm_final` between the anneal start and end fractions."""
        if self.pnorm_final is None:
            return self.pnorm
        start, end = int(self.steps * self.pnorm_anneal_start), int(self.steps * self.pnorm_anneal_end)
        frac = min(1.0, max(0.0, (step - start) / max(end - start - 1, 1)))
        return self.pnorm + (self.pnorm_final - self.pnorm) * frac


# --- causal importances --------------------------------------------------------------------------


def lower_leaky(x: Tensor, alpha: float = 0.01) -> Tensor:
    """Hard sigmoid, leaky below 0: αx for x ≤ 0, x on [0, 1], 1 above. The masks use it."""
    return F.leaky_relu(x.clamp(max=1), alpha)


def upper_leaky(x: Tensor, alpha: float = 0.01) -> Tensor:
    """Hard sigmoid, leaky above 1: 0 for x ≤ 0, x on [0, 1], 1 + α(x − 1) above. Only the minimality loss uses it."""
    return torch.where(x > 1, 1 + alpha * (x - 1), x.clamp(min=0))


class _GateMLP(torch.autograd.Function):
    """k independent scalar MLPs s ↦ w_outᵀ GELU(w_in·s + b_in) + b_out, forward and backward by hand.

    Exact savings over autograd, which matter because the gates are the bulk of an SPD step:

    * Fused kernel (`gate_kernel`, float32 on the CPU): forward and backward each one pass that
      computes the hidden units and sums them at once, never storing `[k, n, d_gate]` tensors.
    * Otherwise gate-major layout (`[k, n, d_gate]`): the output and the gradients of the input and
      of all four weights are each one batched matmul that reads the hidden tensor once.
    * Rows whose inputs are all exactly zero (sparse toy data: most TMS inputs are the zero
      vector) share one evaluation at s = 0; their outputs and gradients are that evaluation's,
      times how many there are.
    """

    @staticmethod
    def forward(ctx: Any, s: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
        live = (s != 0).any(dim=1).nonzero()[:, 0]  # rows with any nonzero input
        at_zero = (F.gelu(b_in) * w_out).sum(-1) + b_out  # [k]: every gate's output at s = 0
        out = at_zero.expand_as(s).contiguous()  # the zero rows' outputs; the live rows are written below
        ctx.fused = gate_kernel.available(s, w_in)
        if ctx.fused:  # saved: ∂out/∂s of the live rows, [n_live, k]
            slope = gate_kernel.forward(s, live, w_in, b_in, w_out, b_out, out)
            ctx.save_for_backward(live, s, w_in, b_in, w_out, slope)
            return out
        sk = s[live].T.contiguous()  # [k, n_live]
        h = torch.addcmul(b_in[:, None, :], sk[..., None], w_in[:, None, :])  # [k, n_live, d_gate]
        a = F.gelu(h)
        out[live] = torch.baddbmm(b_out[:, None, None], a, w_out[..., None])[..., 0].T
        ctx.save_for_backward(live, sk, w_in, b_in, w_out, h, a)  # saved: the hidden tensors
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        live, s, w_in, b_in, w_out = ctx.saved_tensors[:5]
        slope = torch.ops.aten.gelu_backward(w_out, b_in)  # [k, d_gate]: ∂out/∂h at s = 0
        g_s = grad * (slope * w_in).sum(-1)  # ∂out/∂s at s = 0, replaced on the live rows
        if ctx.fused:
            sum_a, sum_p, sum_sp, g_live = gate_kernel.backward(grad, s, live, w_in, b_in, ctx.saved_tensors[5], g_s)
            g_w_in, g_b_in, g_w_out = sum_sp * w_out, sum_p * w_out, sum_a
        else:
            g_w_in, g_b_in, g_w_out, g_live = _gate_backward_batched(grad, g_s, live, s, w_in, w_out,
                                                                     *ctx.saved_tensors[5:])
        # the zero rows: at s = 0 the hidden is b_in; no gradient reaches w_in (it is multiplied by s = 0)
        g_zero = grad.sum(0) - g_live  # [k]: summed output gradient of the zero rows
        g_w_out = g_w_out + g_zero[:, None] * F.gelu(b_in)
        g_b_in = g_b_in + g_zero[:, None] * slope
        return g_s, g_w_in, g_b_in, g_w_out, grad.sum(0)


def _gate_backward_batched(
    grad: Tensor, g_s: Tensor, live: Tensor, sk: Tensor, w_in: Tensor, w_out: Tensor, h: Tensor, a: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The live rows' share of the gradients from the stored hidden tensors, as batched matmuls: writes ∂/∂s
    into `g_s`'s live rows and returns those of w_in, b_in, w_out and the live rows' summed output gradient."""
    gk = grad[live].T.contiguous()  # [k, n_live]
    g_w_out = torch.bmm(gk[:, None, :], a)[:, 0]  # [k, d_gate]
    g_h = torch.ops.aten.gelu_backward(gk[..., None] * w_out[:, None, :], h)  # [k, n_live, d_gate]
    g_s[live] = torch.bmm(g_h, w_in[..., None])[..., 0].T
    g_in = torch.bmm(torch.stack([sk, torch.ones_like(sk)], 1), g_h)  # [k, 2, d_gate]: w_in and b_in
    return g_in[:, 0], g_in[:, 1], g_w_out, gk.sum(1)


class CausalImportance(nn.Module):
    """One 1 → d_gate → 1 GELU MLP per subcomponent of every target, evaluated together.

    Weights are `[n_targets·C, d_gate]`, so all layers' gates run as a few batched tensor ops on
    the stacked inner activations `[..., n_targets·C]`, never a Python loop over components.
    """

    def __init__(
        self, n_targets: int, C: int, d_gate: int, generator: torch.Generator | None = None, n_gates: int | None = None
    ):
        super().__init__()
        k = n_targets * C if n_gates is None else n_gates  # n_gates: the targets' C summed, when they differ
        self.n_targets, self.C, self.d_gate = n_targets, C, d_gate
        width = max(d_gate, 1)
        # Kaiming-style scales: the input layer sees one scalar (fan-in 1, ReLU-like gain √2),
        # the output layer d_gate hidden units (fan-in d_gate); biases start at zero.
        in_std, out_std = (math.sqrt(2.0), 1 / math.sqrt(d_gate)) if d_gate else (1.0, 1.0)
        self.w_in = nn.Parameter(torch.randn(k, width, generator=generator) * in_std)
        self.b_in = nn.Parameter(torch.zeros(k, width))
        self.w_out = nn.Parameter(torch.randn(k, width, generator=generator) * out_std)
        self.b_out = nn.Parameter(torch.zeros(k))

    def forward(self, inner: Tensor, gates: slice = slice(None)) -> Tensor:
        """Gate pre-activations `[..., k]` from inner activations of the same shape (k: all gates, or a slice)."""
        if self.d_gate == 0:
            return torch.addcmul(self.b_out[gates], inner, self.w_in[gates, 0])
        flat = inner.reshape(-1, inner.shape[-1])
        out = _GateMLP.apply(flat, self.w_in[gates], self.b_in[gates], self.w_out[gates], self.b_out[gates])
        return out.reshape(inner.shape)


class SharedCausalImportance(nn.Module):
    """Causal-importance MLPs that read whole layer inputs (the reference's later `shared_mlp` and
    `global_shared_mlp`): x ↦ W₂ GELU(W₁ x + b₁) + b₂ with x one target's input (`d_in` → C), or all
    targets' inputs concatenated (Σ d_in → Σ C) for the global one. d_gate 0: one linear layer.
    Initialised as the reference does: kaiming-normal weights (gain √2 into a GELU, 1 into the output), zero biases.
    """

    def __init__(self, d_in: int, d_out: int, d_gate: int, generator: torch.Generator | None = None):
        super().__init__()
        dims = [d_in, d_gate, d_out] if d_gate else [d_in, d_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            gain = 1.0 if i == len(dims) - 2 else math.sqrt(2.0)
            self.weights.append(nn.Parameter(torch.randn(a, b, generator=generator) * gain / math.sqrt(a)))
            self.biases.append(nn.Parameter(torch.zeros(b)))

    def forward(self, x: Tensor) -> Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.addmm(b, x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], -1)
            if i < len(self.weights) - 1:
                x = F.gelu(x)
        return x


def _ci_networks(dec: Decomposition, config: SPDConfig, generator: torch.Generator | None) -> nn.Module:
    """The `config.ci_fn` networks of a decomposition's targets."""
    sizes = [dec.C_of[n] for n in dec.targets]
    if config.ci_fn == "mlp":
        return CausalImportance(len(sizes), config.C, config.d_gate, generator, n_gates=sum(sizes))
    embeddings = [t.name for t in dec.targets.values() if t.kind == "embedding"]
    if embeddings:  # an embedding's input is a token id, not a vector (the reference refuses them too)
        raise AnatomistError(f"ci_fn '{config.ci_fn}' reads layer input vectors; the embedding targets "
                             f"{embeddings} need ci_fn 'mlp'")
    d_in = [t.d_in for t in dec.targets.values()]
    if config.ci_fn == "global_shared_mlp":
        return SharedCausalImportance(sum(d_in), sum(sizes), config.d_gate, generator)
    return nn.ModuleList(SharedCausalImportance(d, c, config.d_gate, generator) for d, c in zip(d_in, sizes,
                                                                                                   strict=True))


class SPDDecomposition(Decomposition):
    """A `Decomposition` with SPD's causal-importance MLPs; `decompose` returns one."""

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[str] | str,
        config: SPDConfig,
        generator: torch.Generator | None = None,
    ):
        super().__init__(model, targets, config.C, generator, config.init, C_per_module=config.C_per_module)
        self.config = config
        self.ci = _ci_networks(self, config, generator)
        w = next(iter(self.V.values()))
        self.ci.to(device=w.device, dtype=w.dtype)
        self.history: list[dict[str, float]] = []

    def gate_preactivations(self, layer_inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """CI network outputs (before the hard sigmoids) per target from each target layer's input."""
        names = list(self.targets)
        sizes = [self.C_of[n] for n in names]
        if self.config.ci_fn == "shared_mlp":
            assert isinstance(self.ci, nn.ModuleList)
            return {n: net(layer_inputs[n]) for n, net in zip(names, self.ci, strict=True)}
        if self.config.ci_fn == "global_shared_mlp":
            together = _concat_inputs(names, [layer_inputs[n] for n in names], "global_shared_mlp")
            return dict(zip(names, self.ci(together).split(sizes, dim=-1), strict=True))
        inner = [self.inner(n, layer_inputs[n]) for n in names]
        if all(a.shape[:-1] == inner[0].shape[:-1] for a in inner):
            pre = self.ci(torch.cat(inner, dim=-1))  # one batched evaluation for all layers
            return dict(zip(names, pre.split(sizes, dim=-1), strict=True))
        # layers seeing differently shaped inputs: each with its own slice of the gates
        ends = list(itertools.accumulate(sizes))
        return {n: self.ci(a, slice(e - c, e)) for n, a, c, e in zip(names, inner, sizes, ends, strict=True)}

    def run_with_masks(
        self, inputs: Any, masks: Mapping[str, Tensor | None], delta_masks: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """As `Decomposition.run_with_masks`; with `config.delta_component` and no `delta_masks` given, every
        masked target keeps its delta component fully on (it is always available; `delta_masks={}` drops it)."""
        if delta_masks is None and self.config.delta_component:
            delta_masks = {n: _ones_like_lead(self, n, m) for n, m in masks.items()}
        return super().run_with_masks(inputs, masks, delta_masks)

    @torch.no_grad()
    def importances(self, inputs: Any) -> dict[str, Tensor]:
        """Causal importances g ∈ [0, 1] (lower-leaky, so slightly negative values are possible) for a batch:
        `{target: [..., C]}` where `...` are the leading dims of the layer's input (e.g. [batch] or [batch, seq])."""
        _, acts = self.run_capturing_inputs(inputs)
        return {n: lower_leaky(p, self.config.leaky_alpha) for n, p in self.gate_preactivations(acts).items()}

    def save(self, out_dir: str | Path) -> Path:
        """Write `decomposition.safetensors` (factors, CI MLPs), `spd_config.yaml` and `targets.json`."""
        out = Path(out_dir)
        save_tensors(out / "decomposition.safetensors", self.state_dict())
        self.config.to_yaml(out / "spd_config.yaml")
        save_json(out / "targets.json", {"targets": list(self.targets), "history": self.history})
        return out

    @classmethod
    def load(cls, model: nn.Module, out_dir: str | Path) -> SPDDecomposition:
        """Rebuild a saved decomposition of `model` (the same model it was fitted to)."""
        out = Path(out_dir)
        config = SPDConfig.from_yaml(out / "spd_config.yaml")
        meta = load_json(out / "targets.json")
        dec = cls(model, meta["targets"], config)
        state = load_tensors(out / "decomposition.safetensors", required=list(dec.state_dict()))
        try:
            dec.load_state_dict(state)
        except RuntimeError as e:
            raise AnatomistError(f"{out / 'decomposition.safetensors'}: does not fit this model ({e})") from None
        dec.history = meta.get("history", [])
        return dec


def _concat_inputs(names: Sequence[str], inputs: Sequence[Tensor], what: str) -> Tensor:
    """The targets' inputs side by side, `[..., Σ d_in]`; they must share their leading dims (one row per input)."""
    lead = {tuple(x.shape[:-1]) for x in inputs}
    if len(lead) > 1:
        shapes = {n: list(x.shape) for n, x in zip(names, inputs, strict=True)}
        raise AnatomistError(f"{what} reads all targets' inputs side by side, but their shapes differ: {shapes}")
    return torch.cat(list(inputs), dim=-1)


# --- losses --------------------------------------------------------------------------------------


def output_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """MSE over all entries, or KL(target ‖ pred) of logits summed over the last dim and averaged over the rest."""
    if kind == "mse":
        return F.mse_loss(pred, target)
    logp, logq = F.log_softmax(target, dim=-1), F.log_softmax(pred, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def importance_minimality_loss(g_upper: dict[str, Tensor], p: float, beta: float = 0.0) -> Tensor:
    """Σ_layers Σ_c mean_x g_c^p (g: the upper-leaky CI, ≥ 0), each term × (1 + β·log2(1 + Σ_x g_c^p)).

    β = 0 is the paper's loss; β > 0 is the reference's later frequency term: a subcomponent's cost
    grows with how much it is used over the batch, which pushes towards rarely used pieces.
    """
    losses = []
    for g in g_upper.values():
        per_piece = (g if p == 1 else g.pow(p)).flatten(0, -2)  # [n_inputs, C]
        mean = per_piece.mean(0)
        if beta:  # the sum over the global batch (all ranks' rows), as one process with the whole batch sums
            mean = mean * (1 + beta * torch.log2(1 + distributed.sum_over_ranks(per_piece.sum(0))))
        losses.append(mean.sum())
    return torch.stack(losses).sum()


def stochastic_masks(g: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
    """m = g + (1 − g)·u, u ~ U(0, 1) per input and subcomponent."""
    return {n: mix(c, _uniform_rows(c.shape, c, generator)) for n, c in g.items()}


def mix(g: Tensor, source: Tensor) -> Tensor:
    """The mask g + (1 − g)·s between the causal importance (s = 0) and one (s = 1)."""
    return torch.addcmul(g, 1 - g, source)


def _uniform(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)


def _uniform_rows(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) per input row (dim 0) of this rank's part of a batch: under torch.distributed drawn for the global
    batch and sliced, so the ranks together use exactly the draws of one process with the whole batch."""
    return distributed.my_part(_uniform((shape[0] * distributed.world_size(), *shape[1:]), like, generator))


def _ones_like_lead(dec: SPDDecomposition, name: str, mask: Tensor | None) -> Tensor:
    w = next(iter(dec.V.values()))
    return torch.ones(() if mask is None else mask.shape[:-1], device=w.device, dtype=w.dtype)


def delta_masks(dec: SPDDecomposition, g: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
    """U(0, 1) masks of the delta components ([...] per input), or none without `config.delta_component`."""
    if not dec.config.delta_component:
        return {}
    return {n: _uniform_rows(c.shape[:-1], c, generator) for n, c in g.items()}


def _masked_loss(
    dec: SPDDecomposition, inputs: Any, target_out: Tensor, masks: dict[str, Tensor], deltas: dict[str, Tensor]
) -> Tensor:
    out = dec.run_with_masks(inputs, masks, {n: d for n, d in deltas.items() if n in masks})
    return output_loss(out, target_out, dec.config.output_loss)


def random_subset(names: Sequence[str], generator: torch.Generator | None) -> list[str]:
    """k ~ U{1..n} of the names, chosen uniformly (the layer-subset loss's targets for one step)."""
    k = int(torch.randint(1, len(names) + 1, (1,), generator=generator))
    order = torch.randperm(len(names), generator=generator)[:k]
    return [names[int(i)] for i in sorted(order)]


def pgd_sources(
    dec: SPDDecomposition, inputs: Any, target_out: Tensor, g: dict[str, Tensor], generator: torch.Generator | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Adversarial sources s ∈ [0, 1] (masks g + (1 − g)·s; delta masks s) that make the output loss worst.

    Start from uniform random sources, take `pgd_steps` projected sign-gradient ascent steps of size
    `pgd_step_size` (g held fixed), and return the worst sources seen, the start included, so the
    result is never better than the random masks it started from. Returns (subcomponent sources,
    delta-component sources), detached.
    """
    cfg = dec.config
    fixed = {n: c.detach() for n, c in g.items()}
    lead = 1 if cfg.pgd_scope == "batch" else None
    shapes = {n: (*(c.shape[:-1] if lead is None else [1] * (c.ndim - 1)), c.shape[-1]) for n, c in fixed.items()}
    draw = _uniform if lead == 1 else _uniform_rows  # one source per subcomponent, or per input row
    sources = {n: draw(shape, fixed[n], generator) for n, shape in shapes.items()}
    if cfg.delta_component:
        sources.update({f"delta:{n}": draw(shape[:-1], fixed[n], generator) for n, shape in shapes.items()})
    best, worst_loss = sources, -math.inf
    for step in range(cfg.pgd_steps + 1):
        leaves = {k: v.clone().requires_grad_(step < cfg.pgd_steps) for k, v in sources.items()}
        with torch.set_grad_enabled(step < cfg.pgd_steps):
            loss = _masked_loss(dec, inputs, target_out, *_split_sources(fixed, leaves))
        value = distributed.mean_values({"loss": float(loss.detach())})["loss"]  # the global batch's loss
        if value > worst_loss:
            best, worst_loss = sources, value
        if step == cfg.pgd_steps:
            break
        grads = torch.autograd.grad(loss, list(leaves.values()))
        if lead == 1:  # sources shared by the batch: their gradient is over the global batch
            distributed.average_(grads)
        sources = {k: (v + cfg.pgd_step_size * gr.sign()).clamp(0, 1) for (k, v), gr in zip(sources.items(), grads,
                                                                                           strict=True)}
    subs = {k: v for k, v in best.items() if not k.startswith("delta:")}
    return subs, {k.removeprefix("delta:"): v for k, v in best.items() if k.startswith("delta:")}


def _split_sources(g: dict[str, Tensor], sources: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    masks = {n: mix(c, sources[n]) for n, c in g.items()}
    return masks, {n: sources[f"delta:{n}"] for n in g if f"delta:{n}" in sources}


def spd_losses(
    dec: SPDDecomposition, inputs: Any, step: int, generator: torch.Generator | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted total loss of one batch and its terms (unweighted)."""
    cfg = dec.config
    with torch.no_grad():  # the target model's output and layer inputs, once per batch
        target_out, acts = dec.run_capturing_inputs(inputs)
    pre = dec.gate_preactivations(acts)
    g = {n: lower_leaky(p, cfg.leaky_alpha) for n, p in pre.items()}
    terms: dict[str, Tensor] = {}
    terms["faithfulness"] = dec.faithfulness_loss()
    terms["importance_minimality"] = importance_minimality_loss(
        {n: upper_leaky(p, cfg.leaky_alpha) for n, p in pre.items()}, cfg.pnorm_at(step), cfg.importance_minimality_beta
    )
    zero = terms["faithfulness"].new_zeros(())
    recon = layerwise = subset = zero
    for _ in range(cfg.n_mask_samples):
        if cfg.stochastic_recon_coeff:
            recon = recon + _masked_loss(dec, inputs, target_out, stochastic_masks(g, generator),
                                         delta_masks(dec, g, generator))
        if cfg.stochastic_recon_layerwise_coeff:
            masks, deltas = stochastic_masks(g, generator), delta_masks(dec, g, generator)
            for n, m in masks.items():
                layerwise = layerwise + _masked_loss(dec, inputs, target_out, {n: m}, deltas) / len(masks)
        if cfg.stochastic_recon_subset_coeff:
            chosen = random_subset(list(g), generator)
            subset = subset + _masked_loss(dec, inputs, target_out, stochastic_masks({n: g[n] for n in chosen},
                                                                                     generator),
                                           delta_masks(dec, g, generator))
    terms["stochastic_recon"] = recon / cfg.n_mask_samples
    terms["stochastic_recon_layerwise"] = layerwise / cfg.n_mask_samples
    if cfg.stochastic_recon_subset_coeff:
        terms["stochastic_recon_subset"] = subset / cfg.n_mask_samples
    if cfg.pgd_recon_coeff:
        sources, deltas = pgd_sources(dec, inputs, target_out, g, generator)
        terms["pgd_recon"] = _masked_loss(dec, inputs, target_out, {n: mix(c, sources[n]) for n, c in g.items()},
                                          deltas)
    coeffs = {
        "faithfulness": cfg.faithfulness_coeff,
        "stochastic_recon": cfg.stochastic_recon_coeff,
        "stochastic_recon_layerwise": cfg.stochastic_recon_layerwise_coeff,
        "stochastic_recon_subset": cfg.stochastic_recon_subset_coeff,
        "pgd_recon": cfg.pgd_recon_coeff,
        "importance_minimality": cfg.importance_minimality_coeff,
    }
    total = torch.stack([coeffs[k] * v for k, v in terms.items()]).sum()
    return total, terms


# --- training ------------------------------------------------------------------------------------


Callback = Callable[[int, SPDDecomposition, dict[str, float]], bool | None]


def initial_decomposition(model: nn.Module, targets: Sequence[str] | str, config: SPDConfig) -> SPDDecomposition:
    """The untrained decomposition `decompose` starts from (same seed, same draws): a baseline to score."""
    return SPDDecomposition(model, targets, config, generator=torch.Generator().manual_seed(config.seed))


def faithfulness_warmup(dec: SPDDecomposition) -> SPDDecomposition:
    """`config.faithfulness_warmup_steps` Adam steps on ‖W − ΣUVᵀ‖² alone (factors only; no data needed).

    The reference's start for LMs: the factors match the weights before any output loss moves them. A
    resumed run repeats it (it is deterministic and cheap) and then loads the checkpoint over it.
    """
    cfg = dec.config
    if not cfg.faithfulness_warmup_steps:
        return dec
    opt = torch.optim.Adam([*dec.V.values(), *dec.U.values()], lr=cfg.faithfulness_warmup_lr)
    for _ in range(cfg.faithfulness_warmup_steps):
        opt.zero_grad(set_to_none=True)
        dec.faithfulness_loss().backward()
        opt.step()
    return dec


def decompose(
    model: nn.Module,
    data: Iterable[Any],
    targets: Sequence[str] | str,
    config: SPDConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    generators: dict[str, torch.Generator] | None = None,
    callback: Callback | None = None,
) -> SPDDecomposition:
    """Fit SPD to `targets` (module-name patterns) of `model` on batches from `data`.

    `data` yields model inputs (a tensor, a tuple of positionals or a mapping of keywords); the
    reference output is the model's own output on each batch. With `run_dir`, checkpoints are
    written there (every `config.checkpoint_every` steps and at the end) and `resume=True`
    continues from the newest one; pass the generators your data iterable draws from as
    `generators` so a resumed run sees the same batches. `callback(step, dec, losses)` runs every
    `config.log_every` steps (e.g. to track recovery of a known answer); returning True stops training.
    """
    cfg = config or SPDConfig()
    dec = initial_decomposition(model, targets, cfg)
    faithfulness_warmup(dec)
    mask_gen = torch.Generator(next(iter(dec.V.values())).device).manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(dec.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True)
    return fit(
        dec,
        model,
        data,
        lambda step, batch: spd_losses(dec, batch, step, mask_gen),
        opt,
        cfg,
        method="SPD",
        run_dir=run_dir,
        resume=resume,
        generators={"masks": mask_gen, **(generators or {})},
        callback=callback,
    )
