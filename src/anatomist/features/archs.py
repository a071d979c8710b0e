"""The architectures: ReLU + L1 (untied, tied), TopK, BatchTopK, JumpReLU.

- relu (Cunningham et al.): acts = ReLU(pre); loss + l1_coeff * sum_i acts_i * ||W_dec_i|| (rows are unit
  norm unless normalize_decoder is False, where the norm-weighted L1 keeps the penalty scale-honest).
- relu-tied: the same with W_enc = W_dec^T, one parameter; `decoder_bias: false` is the paper's form,
  c = ReLU(M x + b), x_hat = M^T c, with no decoder bias (so no input centring either).
- topk (Gao et al.): keep the k largest pre-activations of each row, ReLU after; AuxK on dead latents.
- batchtopk (Bussmann et al.): keep the k * batch largest of the whole batch while training; an EMA of the
  smallest kept activation is the threshold used at inference (saved as a JumpReLU threshold).
- jumprelu (Rajamanoharan et al.): acts = pre * H(pre - theta), a learned threshold theta per latent,
  straight-through pseudo-derivatives with a rectangle kernel of width `jumprelu_bandwidth`; L0 penalty.
  Adam learns theta itself by default (SAELens PR #718, dictionary_learning): the paper's log(theta) moves
  theta by only ~theta * lr per step, so from a 1e-3 init the threshold, the L0 penalty's only lever, stays
  put and L0 does not fall (measured in docs/reproductions.md); `jumprelu_threshold_param: log` keeps it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from anatomist.core import AnatomistError
from anatomist.features.base import SAEConfig, SparseDictionary, TrainOutput, register
from anatomist.features.kernels import (
    SparseCode,
    batch_topk_code,
    dead_topk_code,
    exact_values,
    sparse_decode,
    topk_code,
)

L1_HELP = "L1 coefficient (Cunningham et al.); the usual scale when E||x||^2 = d_in"


class ReLUConfig(SAEConfig):
    """ReLU SAE with an L1 penalty (untied encoder and decoder)."""

    arch: Literal["relu"] = "relu"
    l1_coeff: float = Field(5.0, ge=0, description=L1_HELP)


class TiedReLUConfig(SAEConfig):
    """ReLU SAE with an L1 penalty whose encoder is the decoder's transpose."""

    arch: Literal["relu-tied"] = "relu-tied"
    l1_coeff: float = Field(5.0, ge=0, description=L1_HELP)
    decoder_bias: bool = Field(
        True, description="learn a decoder bias b_dec (subtracted from the input too); false = Cunningham et al.'s "
        "x_hat = M^T ReLU(M x + b), b_dec fixed at 0"
    )

    @model_validator(mode="after")
    def _square(self) -> TiedReLUConfig:
        if self.d_out not in (None, self.d_in):
            raise ValueError("relu-tied cannot be a transcoder: tied weights need d_out == d_in")
        return self


class TopKConfig(SAEConfig):
    """TopK SAE (Gao et al.): the k largest pre-activations of each input, AuxK on dead latents."""

    arch: Literal["topk"] = "topk"
    k: int = Field(gt=0, description="active latents per input")
    auxk_alpha: float = Field(1 / 32, ge=0, description="weight of the AuxK dead-latent loss (Gao)")
    auxk_k: int | None = Field(None, gt=0, description="dead latents used by AuxK per input; None = d_in // 2 (Gao)")
    sparse_kernel: bool = Field(True, description="backward only through the active latents (False = dense autograd)")

    @model_validator(mode="after")
    def _k_fits(self) -> TopKConfig:
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        return self

    @property
    def aux_k(self) -> int:
        return self.auxk_k if self.auxk_k is not None else max(1, self.d_in // 2)


class BatchTopKConfig(TopKConfig):
    """BatchTopK SAE (Bussmann et al.): k·batch largest over the batch; a learned threshold at inference."""

    arch: Literal["batchtopk"] = "batchtopk"  # type: ignore[assignment]
    k: int = Field(gt=0, description="active latents per input, on average over the batch")
    batchtopk_threshold_beta: float = Field(
        0.99, ge=0, lt=1, description="EMA decay of the inference threshold (min kept activation)"
    )


class JumpReLUConfig(SAEConfig):
    """JumpReLU SAE (Rajamanoharan et al.): a learned threshold per latent and an L0 penalty."""

    arch: Literal["jumprelu"] = "jumprelu"
    l0_coeff: float = Field(
        1.0, ge=0, description="L0 coefficient lambda (Rajamanoharan et al.); scale as for relu's l1_coeff"
    )
    jumprelu_init_threshold: float = Field(0.001, gt=0, description="initial threshold of every latent")
    jumprelu_bandwidth: float = Field(
        0.001, gt=0, description="width of the rectangle kernel of the straight-through pseudo-derivative"
    )
    jumprelu_threshold_param: Literal["threshold", "log"] = Field(
        "threshold",
        description="what the optimizer learns: the threshold itself (kept >= 0 after each step; SAELens PR #718), "
        "or its log (the paper's appendix J: Adam then moves the threshold by ~threshold * lr per step)",
    )


# A dictionary's config as a field of another config: pydantic picks the class from the `arch` key.
SAEArchConfig = Annotated[
    ReLUConfig | TiedReLUConfig | TopKConfig | BatchTopKConfig | JumpReLUConfig, Field(discriminator="arch")
]


def _fired(acts: Tensor) -> Tensor:
    return (acts > 0).reshape(-1, acts.shape[-1]).any(0)  # [d_sae]


def _topk_dense(pre: Tensor, k: int) -> Tensor:
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())


@register(ReLUConfig)
class ReLUSAE(SparseDictionary):
    cfg: ReLUConfig | TiedReLUConfig

    def activation(self, pre: Tensor) -> Tensor:
        return F.relu(pre)

    def train_forward(self, x: Tensor, target: Tensor | None = None, dead_mask: Tensor | None = None) -> TrainOutput:
        self._target(x, target)
        acts = self.encode(x)  # [batch, d_sae]
        recon = self.decode(acts)  # [batch, d_out]
        l1 = acts.sum(-1) if self.cfg.normalize_decoder else acts @ self.W_dec.norm(dim=-1)
        zero = recon.new_zeros(())
        return TrainOutput(recon, acts, _fired(acts), self.cfg.l1_coeff * l1.mean(), zero)


@register(TiedReLUConfig)
class TiedReLUSAE(ReLUSAE):
    """x_hat = W_dec^T-tied ReLU SAE: the encoder is the transpose of the (unit-row) decoder."""

    tied = True
    cfg: TiedReLUConfig

    def __init__(self, cfg: TiedReLUConfig):
        super().__init__(cfg)
        if not cfg.decoder_bias:  # a buffer of zeros: the optimizer never sees it, the weight files still hold it
            del self.b_dec
            self.register_buffer("b_dec", torch.zeros(cfg.out_dim, dtype=cfg.torch_dtype))

    @property
    def W_enc(self) -> Tensor:  # type: ignore[override]  # [d_in, d_sae], a view of W_dec
        return self.W_dec.t()

    @property
    def has_decoder_bias(self) -> bool:
        return self.cfg.decoder_bias

    def _set_weights(self, w: dict[str, Tensor]) -> None:
        if not torch.allclose(w["W_enc"], w["W_dec"].t()):
            raise AnatomistError("relu-tied weights: W_enc is not the transpose of W_dec (load as 'relu' instead)")
        if not self.cfg.decoder_bias and bool(w["b_dec"].any()):
            raise AnatomistError("relu-tied weights: b_dec is not zero but the config has decoder_bias: false")
        super()._set_weights(w)


class _SparseCodeSAE(SparseDictionary):
    """TopK-style dictionaries: a selection rule picks active pairs; training can use the sparse kernel.

    Training reuses two [batch, d_sae] buffers across steps (pre-activations, dense activations): a fresh
    64 MB tensor per step costs page faults comparable to the top-k itself. So `TrainOutput.acts` of these
    architectures is valid until the next `train_forward` call; clone it to keep it longer.
    """

    cfg: TopKConfig

    def __init__(self, cfg: TopKConfig):
        super().__init__(cfg)
        self._workspace: dict[str, Tensor] = {}
        self._last_pairs: tuple[Tensor, Tensor] | None = None  # where the acts buffer is non-zero

    def select(self, pre: Tensor) -> SparseCode:
        """Hook each TopK-style architecture defines: the active (row, latent, value) pairs of pre-activations."""
        raise NotImplementedError(f"{type(self).__name__} defines no selection rule")

    def train_forward(self, x: Tensor, target: Tensor | None = None, dead_mask: Tensor | None = None) -> TrainOutput:
        target = self._target(x, target)
        self._check_width(x, self.cfg.d_in, "input")
        with torch.no_grad():  # no graph: gradients go through the chosen pairs only
            x_in = x - self.b_dec if self.cfg.centers_input else x  # [batch, d_in]
            pre = self._train_pre_acts(x, x_in)  # [batch, d_sae]
        code = self._exact(self.select(pre), x_in)
        recon = self._decode_code(x, code, x_in) + self.b_dec  # [batch, d_out]
        fired = torch.zeros(self.cfg.d_sae, dtype=code.acts.dtype, device=x.device).index_add_(0, code.cols, code.acts)
        aux = self._auxk(x, x_in, pre, target, recon, dead_mask)
        return TrainOutput(recon, self._dense_acts(code), fired > 0, recon.new_zeros(()), aux)

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> tuple[Tensor, bool]:
        buf = self._workspace.get(name)
        fresh = buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device
        if fresh:
            buf = self._workspace[name] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        assert buf is not None
        return buf, fresh

    def _train_pre_acts(self, x: Tensor, x_in: Tensor) -> Tensor:
        if x.dim() != 2 or x.dtype != self.W_enc.dtype:
            return self.pre_acts(x)
        if self.cfg.autocast_bf16:  # kept in bf16: they only pick the pairs (`_exact` gives the values)
            buf, _ = self._buffer("pre_bf16", (x.shape[0], self.cfg.d_sae), x_in.new_empty((), dtype=torch.bfloat16))
            return torch.addmm(self.b_enc.bfloat16(), x_in.bfloat16(), self.W_enc.bfloat16(), out=buf)
        buf, _ = self._buffer("pre", (x.shape[0], self.cfg.d_sae), x_in)
        return torch.addmm(self.b_enc, x_in, self.W_enc, out=buf)

    def _exact(self, code: SparseCode, x_in: Tensor) -> SparseCode:
        """Pairs picked from bf16 pre-activations get their values in the parameters' precision (an fp32 copy
        of the whole [batch, d_sae] pre-activations would cost as much as the rest of a bf16 step)."""
        if code.acts.dtype == x_in.dtype:
            return code
        return exact_values(code, x_in, self.W_enc, self.b_enc)

    @torch.no_grad()
    def _dense_acts(self, code: SparseCode) -> Tensor:
        buf, fresh = self._buffer("acts", (code.batch, self.cfg.d_sae), code.acts)
        if not fresh and self._last_pairs is not None:
            buf[self._last_pairs] = 0  # clear the previous step's pairs only
        buf[code.rows, code.cols] = code.acts
        self._last_pairs = (code.rows, code.cols)
        return buf

    def _decode_code(self, x: Tensor, code: SparseCode, x_in: Tensor) -> Tensor:
        """sum over active pairs of act * W_dec[col]: sparse kernel, or dense autograd (reference)."""
        b_in = self.b_dec if self.cfg.centers_input else None
        if self.cfg.sparse_kernel:
            return sparse_decode(x, b_in, self.W_enc, self.b_enc, self.W_dec, code, x_in)
        x_in = x if b_in is None else x - b_in
        pre = x_in @ self.W_enc + self.b_enc  # [batch, d_sae] with its graph
        acts = torch.zeros_like(pre).index_put((code.rows, code.cols), pre[code.rows, code.cols].relu())
        return acts @ self.W_dec

    def _auxk(
        self, x: Tensor, x_in: Tensor, pre: Tensor, target: Tensor, recon: Tensor, dead_mask: Tensor | None
    ) -> Tensor:
        """AuxK (Gao et al.): the top dead latents reconstruct the residual error, normalised by its variance.

        Gao's objective is nmse(main) + alpha * nmse(aux); rescaled to the loop's summed squared error, the aux
        term becomes alpha * ||e - e_hat||^2 * Var(target) / Var(e).
        """
        zero = recon.new_zeros(())
        if dead_mask is None or self.cfg.auxk_alpha == 0:
            return zero
        code = dead_topk_code(pre, dead_mask.to(pre.device), self.cfg.aux_k)
        if code is None:
            return zero
        code = self._exact(code, x_in)
        err = (target - recon).detach()  # [batch, d_out]
        err_hat = self._decode_code(x, code, x_in)
        var_err = (err - err.mean(0)).pow(2).sum(-1).mean()
        var_target = (target - target.mean(0)).pow(2).sum(-1).mean().detach()
        aux = (err_hat - err).pow(2).sum(-1).mean() * (var_target / var_err.clamp_min(1e-12))
        return self.cfg.auxk_alpha * aux


@register(TopKConfig)
class TopKSAE(_SparseCodeSAE):
    def activation(self, pre: Tensor) -> Tensor:
        return _topk_dense(pre, self.cfg.k)

    def select(self, pre: Tensor) -> SparseCode:
        return topk_code(pre, self.cfg.k)


@register(BatchTopKConfig)
class BatchTopKSAE(_SparseCodeSAE):
    """BatchTopK; `threshold` is -1 until the first training batch has estimated it (inference is then TopK)."""

    has_threshold = True
    threshold_: Tensor
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold_", torch.full((cfg.d_sae,), -1.0, dtype=cfg.torch_dtype))

    @property
    def threshold(self) -> Tensor:
        return self.threshold_

    @property
    def threshold_known(self) -> bool:
        return bool(self.threshold_[0] >= 0)

    def activation(self, pre: Tensor) -> Tensor:
        if not self.threshold_known:
            return _topk_dense(pre, self.cfg.k)
        return pre * (pre > self.threshold_)

    def select(self, pre: Tensor) -> SparseCode:
        code = batch_topk_code(pre, self.cfg.k)
        if self.training and code.acts.numel():
            with torch.no_grad():
                smallest = code.acts.min()
                beta = self.cfg.batchtopk_threshold_beta if self.threshold_known else 0.0
                self.threshold_.mul_(beta).add_((1 - beta) * smallest)
        return code

    def _set_weights(self, w: dict[str, Tensor]) -> None:
        super()._set_weights(w)
        if not torch.all(w["threshold"] == w["threshold"][0]):
            raise AnatomistError("batchtopk weights: 'threshold' must hold one value for every latent")
        self.threshold_.copy_(w["threshold"])


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dpre = H, d/dtheta = -(theta / eps) * rect((pre - theta) / eps) (STE)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < ctx.eps / 2).to(g.dtype)
        g_theta = -(theta / ctx.eps) * near * g
        return g * (pre > theta), g_theta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - theta); no gradient to pre, d/dtheta = -(1 / eps) * rect((pre - theta) / eps) (STE)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < ctx.eps / 2).to(g.dtype)
        return None, (-(1 / ctx.eps) * near * g).reshape(-1, theta.shape[-1]).sum(0), None


@register(JumpReLUConfig)
class JumpReLUSAE(SparseDictionary):
    has_threshold = True
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold, dtype=cfg.torch_dtype)
        if self.log_space:
            self.log_threshold = nn.Parameter(init.log())  # [d_sae]; log keeps theta positive
        else:
            self.learned_threshold = nn.Parameter(init)  # [d_sae]; clamped at 0 after each step

    @property
    def log_space(self) -> bool:
        return self.cfg.jumprelu_threshold_param == "log"

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp() if self.log_space else self.learned_threshold

    def activation(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    def train_forward(self, x: Tensor, target: Tensor | None = None, dead_mask: Tensor | None = None) -> TrainOutput:
        self._target(x, target)
        pre = self.pre_acts(x)  # [batch, d_sae]
        theta, eps = self.threshold, self.cfg.jumprelu_bandwidth
        acts = _JumpReLU.apply(pre, theta, eps)
        recon = self.decode(acts)
        l0 = _Step.apply(pre, theta, eps).sum(-1).mean()
        return TrainOutput(recon, acts, _fired(acts), self.cfg.l0_coeff * l0, recon.new_zeros(()))

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        if not self.log_space:  # a negative threshold would let negative pre-activations through
            self.learned_threshold.clamp_(min=0)

    def _set_weights(self, w: dict[str, Tensor]) -> None:
        super()._set_weights(w)
        if not torch.all(w["threshold"] >= 0):
            raise AnatomistError("jumprelu weights: 'threshold' must not be negative")
        if self.log_space:
            self.log_threshold.copy_(w["threshold"].log())  # a zero threshold becomes -inf: a plain ReLU
        else:
            self.learned_threshold.copy_(w["threshold"])  # loaded exactly, bit for bit
