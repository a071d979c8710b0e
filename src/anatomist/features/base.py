"""The sparse-dictionary interface every architecture implements, its config and its registry.

A sparse dictionary reads an activation x [.., d_in] and writes a reconstruction (an SAE, target = x) or a
prediction of another site (a transcoder, target of width d_out):

    pre    = (x - b_dec) @ W_enc + b_enc        # [.., d_sae]  (x - b_dec only when apply_b_dec_to_input)
    acts   = activation(pre)                    # [.., d_sae]  ReLU / TopK / BatchTopK threshold / JumpReLU
    recon  = acts @ W_dec + b_dec               # [.., d_out]

Shapes follow SAELens (W_enc [d_in, d_sae], W_dec [d_sae, d_out]) so that the conversion is a rename.

Loss contract with the training loop. `train_forward` returns the pieces of the loss; the loop adds its own
reconstruction term, which must be the squared error summed over output dims and averaged over the batch,
mean_b ||target_b - recon_b||^2. `sparsity_loss` and `aux_loss` are already scaled to that reconstruction term:
the total objective of each paper is `recon_term + sparsity_loss + aux_loss`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from anatomist.core import AnatomistError, Config

Arch = Literal["relu", "relu-tied", "topk", "batchtopk", "jumprelu"]
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class SAEConfig(Config):
    """One sparse dictionary (SAE or transcoder): the fields every architecture shares.

    Each architecture has its own subclass (next to its module in `archs.py`) with only its own fields, the way
    SAELens has one config per architecture. `SAEConfig.parse({"arch": "topk", ...})` and
    `SAEConfig(arch="topk", ...)` build the subclass the `arch` key names; `SAEArchConfig` is the pydantic
    discriminated union for configs that hold a dictionary's config as a field.
    """

    arch: str = Field(description="relu (untied, L1), relu-tied, topk (+AuxK), batchtopk (+AuxK), jumprelu (L0); "
                      "linear: a dense basis (neurons, PCA, ICA, random) fitted as a baseline")
    d_in: int = Field(gt=0, description="width of the activation read")
    d_sae: int = Field(gt=0, description="number of latents (dictionary size)")
    d_out: int | None = Field(
        None, gt=0, description="transcoder: width of the site predicted; None = an SAE reconstructing its input"
    )
    normalize_decoder: bool = Field(
        True,
        description="keep decoder rows at unit norm (renormalised after each step, gradient component along "
        "each row removed before it), as every paper here prescribes; False = free norms (relu then weights "
        "its L1 by the row norms)",
    )
    apply_b_dec_to_input: bool | None = Field(
        None, description="subtract b_dec from the input before the encoder; None = yes for SAEs, no for transcoders"
    )
    autocast_bf16: bool = Field(
        False, description="run the dense encoder matmul in bfloat16 (CPU with AVX512-BF16, or GPU); params stay fp32"
    )
    dtype: Literal["float32", "float64", "bfloat16"] = Field("float32", description="parameter dtype")

    def __new__(cls, *args: Any, **data: Any) -> Any:
        # `SAEConfig(arch="topk", ...)` builds a TopKConfig: Python then runs that class's __init__ (validation)
        if cls is SAEConfig and "arch" in data:
            return super().__new__(config_class(str(data["arch"])))
        return super().__new__(cls)

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "config") -> Any:
        """Validate a dict as the config class of its `arch` (on the base class) or of `cls`."""
        if cls is SAEConfig:
            if "arch" not in data:
                raise AnatomistError(f"{source}: key 'arch' missing; known: {sorted(SAE_CONFIGS)}")
            return config_class(str(data["arch"])).parse(data, source)
        return super().parse(data, source)

    @property
    def out_dim(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def centers_input(self) -> bool:
        if self.apply_b_dec_to_input is None:
            return not self.is_transcoder
        return self.apply_b_dec_to_input

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


# Before one config class per architecture, a saved dictionary's config.yaml held every architecture's fields.
LEGACY_FIELDS = frozenset({"k", "l1_coeff", "l0_coeff", "jumprelu_init_threshold", "jumprelu_bandwidth",
                           "auxk_alpha", "auxk_k", "batchtopk_threshold_beta", "sparse_kernel"})


def upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A config written with every architecture's fields, less the ones its architecture never read."""
    own = config_class(str(data.get("arch"))).model_fields
    return {k: v for k, v in data.items() if k in own or k not in LEGACY_FIELDS}


class TrainOutput(NamedTuple):
    """What one training forward gives the loop (see the module docstring for the loss contract)."""

    recon: Tensor  # [batch, d_out] reconstruction (SAE) or prediction (transcoder)
    acts: Tensor  # [batch, d_sae] latent activations, dense; topk/batchtopk: detached (no penalty uses them)
    #               and a buffer reused by the next train_forward call (clone to keep it)
    fired: Tensor  # [d_sae] bool: the latent was active for at least one input of the batch
    sparsity_loss: Tensor  # scalar: L1 (relu), L0 (jumprelu), 0 (topk/batchtopk); already scaled
    aux_loss: Tensor  # scalar: AuxK (topk/batchtopk, needs dead_mask), 0 otherwise; already scaled


SAE_REGISTRY: dict[str, type[SparseDictionary]] = {}  # arch -> module class
SAE_CONFIGS: dict[str, type[SAEConfig]] = {}  # arch -> its config class


def register(config_cls: type[SAEConfig]) -> Any:
    """Class decorator: `@register(TopKConfig)` makes a module class `make_sae`'s choice for that config's arch."""
    arch = config_cls.model_fields["arch"].default

    def deco(cls: type[SparseDictionary]) -> type[SparseDictionary]:
        SAE_REGISTRY[arch] = cls
        SAE_CONFIGS[arch] = config_cls
        cls.arch = arch
        return cls

    return deco


def config_class(arch: str) -> type[SAEConfig]:
    if arch not in SAE_CONFIGS:
        raise AnatomistError(f"unknown SAE architecture '{arch}'; known: {sorted(SAE_CONFIGS)}")
    return SAE_CONFIGS[arch]


def make_sae(cfg: SAEConfig) -> SparseDictionary:
    """A freshly initialised dictionary of `cfg.arch`."""
    config_class(cfg.arch)  # an unknown arch: the error names the known ones
    return SAE_REGISTRY[cfg.arch](cfg)


def _unit_rows(w: Tensor) -> Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class SparseDictionary(nn.Module):
    """Base of every architecture: parameters, linear encoder/decoder, decoder-norm maintenance, weight export.

    Subclasses define `activation(pre)` (inference) and `train_forward`. The canonical weights, shared by all
    file formats, are `export_weights()`: W_enc, b_enc, W_dec, b_dec (+ threshold for jumprelu/batchtopk).
    """

    arch: ClassVar[str]
    has_threshold: ClassVar[bool] = False
    tied: ClassVar[bool] = False  # the tied SAE has no W_enc parameter (it is a view of W_dec)

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.metadata: dict[str, Any] = {}  # model_name, site, provenance... (kept by save_sae / load_sae)
        dt = cfg.torch_dtype
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.out_dim
        # Gao et al.: random unit decoder rows, encoder initialised to the decoder's transpose (SAE case).
        w_dec = _unit_rows(torch.randn(d_sae, d_out, dtype=torch.float32)).to(dt)
        w_enc = w_dec.t().clone() if d_out == d_in else _unit_rows(torch.randn(d_sae, d_in)).t().to(dt)
        if not self.tied:
            self.W_enc = nn.Parameter(w_enc.contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dt))  # [d_sae]
        self.W_dec = nn.Parameter(w_dec)  # [d_sae, d_out]
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dt))  # [d_out]

    # ---- inference -------------------------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [..., d_sae]; the matmul runs in bf16 when cfg.autocast_bf16.

        x: float activations [..., d_in], a tensor or a numpy array, of any float dtype (converted to the
        dictionary's dtype and device).
        """
        x = self._as_input(x, "input")
        self._check_width(x, self.cfg.d_in, "input")
        if self.cfg.centers_input:
            x = x - self.b_dec
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast_bf16):
            pre = x @ self.W_enc + self.b_enc
        return pre.to(self.b_enc.dtype)

    def activation(self, pre: Tensor) -> Tensor:
        """Hook each architecture defines: its inference rule, pre-activations [..., d_sae] to activations."""
        raise NotImplementedError(f"{type(self).__name__} defines no activation rule")

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations [..., d_sae] (inference rule: BatchTopK uses its saved threshold)."""
        return self.activation(self.pre_acts(x))

    def decode(self, acts: Tensor) -> Tensor:
        """Reconstruction / prediction [..., d_out] from latent activations [..., d_sae]."""
        acts = self._as_input(acts, "latent activations")
        self._check_width(acts, self.cfg.d_sae, "latent activations")
        return acts @ self.W_dec + self.b_dec

    def _as_input(self, x: Any, what: str) -> Tensor:
        """`x` as a tensor of this dictionary's dtype and device: float64 and numpy activations are common."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise AnatomistError(f"{type(self).__name__}: {what} must be a tensor or numpy array, "
                                 f"not {type(x).__name__}")
        if not x.is_floating_point():
            raise AnatomistError(f"{type(self).__name__}: {what} must be floating point, not {x.dtype}")
        return x.to(self.b_enc.device, self.b_enc.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # ---- training --------------------------------------------------------------------------------------------
    def train_forward(self, x: Tensor, target: Tensor | None = None, dead_mask: Tensor | None = None) -> TrainOutput:
        """One training forward on a batch x [batch, d_in]; target [batch, d_out] defaults to x (SAE).

        dead_mask [d_sae] bool marks latents that have not fired for a long time (the loop tracks it);
        TopK/BatchTopK use it for AuxK. A hook each architecture defines.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no training forward")

    def _target(self, x: Tensor, target: Tensor | None) -> Tensor:
        if target is None:
            if self.cfg.is_transcoder:
                raise AnatomistError("a transcoder needs the target activations (train_forward(x, target))")
            return x
        self._check_width(target, self.cfg.out_dim, "target")
        if target.shape[:-1] != x.shape[:-1]:
            raise AnatomistError(f"target shape {tuple(target.shape)} does not match input shape {tuple(x.shape)}")
        return target

    @torch.no_grad()
    def before_step(self) -> None:
        """Remove from the decoder gradient its component along each (unit) row, so Adam moves along the sphere."""
        w = self.decoder_param
        if self.cfg.normalize_decoder and w.grad is not None:
            w.grad.addcmul_(torch.linalg.vecdot(w.grad, w).unsqueeze(-1), w, value=-1)

    @torch.no_grad()
    def after_step(self) -> None:
        """Put the decoder rows back on the unit sphere after the optimizer step."""
        if self.cfg.normalize_decoder:
            w = self.decoder_param
            w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @property
    def has_decoder_bias(self) -> bool:
        """Whether b_dec is learned (the paper's tied ReLU SAE has none: b_dec stays 0)."""
        return True

    @property
    def decoder_param(self) -> nn.Parameter:
        """The parameter holding the decoder rows (the tied SAE keeps only this one)."""
        return self.W_dec

    # ---- weights shared by every file format -----------------------------------------------------------------
    def export_weights(self) -> dict[str, Tensor]:
        """The canonical weights: W_enc [d_in,d_sae], b_enc, W_dec [d_sae,d_out], b_dec (+ threshold [d_sae])."""
        out: dict[str, Tensor] = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.has_threshold:
            out["threshold"] = self.threshold
        return {k: v.detach() for k, v in out.items()}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.cfg
        shapes = {"W_enc": (c.d_in, c.d_sae), "b_enc": (c.d_sae,), "W_dec": (c.d_sae, c.out_dim), "b_dec": (c.out_dim,)}
        if self.has_threshold:
            shapes["threshold"] = (c.d_sae,)
        return shapes

    @torch.no_grad()
    def import_weights(self, weights: dict[str, Tensor], source: str = "weights") -> None:
        """Load canonical weights; a missing key or a shape that does not fit the config is an error naming it."""
        shapes = self.weight_shapes()
        missing = [k for k in shapes if k not in weights]
        if missing:
            raise AnatomistError(f"{source}: missing key(s) {missing} for a {self.arch} dictionary")
        for key, shape in shapes.items():
            if tuple(weights[key].shape) != shape:
                raise AnatomistError(
                    f"{source}: '{key}' has shape {tuple(weights[key].shape)}, the config needs {shape}"
                )
        self._set_weights({k: weights[k].to(self.b_enc.dtype) for k in shapes})

    def _set_weights(self, w: dict[str, Tensor]) -> None:
        for key in ("b_enc", "W_dec", "b_dec") if self.tied else ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, key).copy_(w[key])

    @property
    def threshold(self) -> Tensor:
        raise AttributeError(f"a {self.arch} dictionary has no threshold")

    @staticmethod
    def _check_width(t: Tensor, width: int, what: str) -> None:
        if t.shape[-1] != width:
            raise AnatomistError(f"{what} has shape {tuple(t.shape)}; its last dimension must be {width}")
