"""Vision transformers as first-class models: where the residual stream, attention and MLP outputs live, and
which token is which.

A ViT (Dosovitskiy et al. 2021) cuts an image into a grid of patches, embeds each as a token, prepends a
CLS token (and, in DINOv2 with registers, Darcet et al. 2024, a few register tokens), and runs a stack of
pre-norm blocks, each adding an attention output and an MLP output to the residual stream:

    x_{k+1} = x_k + attn_k(norm(x_k)) + mlp_k(norm(x_k + attn_k(...)))

(DINOv2 scales both by a learned `layer_scale`.) Prisma (Joseph et al. 2025) reads these same places across
75+ vision models; here `vision_layout(model)` finds them in any Hugging Face ViT-like model by its structure
(the block list, each block's attention and MLP children), so ViTModel/ViTForImageClassification,
CLIPVisionModel, SiglipVisionModel, Dinov2Model and Dinov2WithRegistersModel all get the same named sites:

    resid_pre.k   input of block k (the residual stream before it; k = 0: the embeddings)
    resid.k       output of block k (the residual stream after it: hidden_states[k + 1])
    attn.k        block k's attention output, before it is added to the stream
    mlp.k         block k's MLP output, before it is added

and `token_roles` says, per position, whether a token is the CLS token, a register, or the patch at grid
position (row, col), so every lens (SAE training, dashboards) can split rows by role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.nets.sites import Site, get_module

Role = Literal["cls", "register", "patch"]
SITE_NAMES = ("resid_pre", "resid", "attn", "mlp")
# child names of a block's attention and MLP across the HF vision families (and their older layouts)
_ATTN_NAMES = ("attention", "self_attn", "attn")
_MLP_NAMES = ("mlp", "ffn")
_CLS_PARAMS = ("cls_token", "class_embedding")


@dataclass(frozen=True)
class TokenRole:
    """One token position: its role and, for a patch, its grid row and column (else -1)."""

    position: int
    role: Role
    row: int = -1
    col: int = -1

    @property
    def label(self) -> str:
        return f"patch ({self.row}, {self.col})" if self.role == "patch" else self.role


def image_hw(x: Tensor) -> tuple[int, int]:
    """(H, W) of images [..., H, W]."""
    return int(x.shape[-2]), int(x.shape[-1])


def is_vision_transformer(model: nn.Module) -> bool:
    """Whether `model` has a vision transformer's config (a patch size): what `vision_layout` reads."""
    config = getattr(model, "config", None)
    return getattr(getattr(config, "vision_config", config), "patch_size", None) is not None


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class VisionLayout:
    """The named places of one vision transformer (see the module docstring)."""

    model_type: str
    layers: str  # module path of the block list, e.g. "vit.layers" or "encoder.layers"
    n_layers: int
    d_model: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    has_cls: bool
    n_registers: int
    attn_child: str
    mlp_child: str

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: CLS and registers."""
        return int(self.has_cls) + self.n_registers

    def grid(self, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """Patch rows and columns for images of `image_hw` pixels (default: the config's image size)."""
        h, w = image_hw or self.image_size
        return h // self.patch_size[0], w // self.patch_size[1]

    def n_tokens(self, image_hw: tuple[int, int] | None = None) -> int:
        rows, cols = self.grid(image_hw)
        return self.n_prefix + rows * cols

    def token_roles(self, image_hw: tuple[int, int] | None = None) -> list[TokenRole]:
        """Every position's role: CLS first (where there is one), then registers, then patches row-major."""
        roles = [TokenRole(0, "cls")] if self.has_cls else []
        roles += [TokenRole(len(roles) + i, "register") for i in range(self.n_registers)]
        rows, cols = self.grid(image_hw)
        patches = [(r, c) for r in range(rows) for c in range(cols)]
        return roles + [TokenRole(self.n_prefix + i, "patch", r, c) for i, (r, c) in enumerate(patches)]

    def _block(self, layer: int) -> str:
        if not -self.n_layers <= layer < self.n_layers:
            raise AnatomistError(f"layer {layer} out of range: the model has {self.n_layers} blocks")
        return f"{self.layers}.{layer % self.n_layers}"

    def resid_pre(self, layer: int) -> Site:
        return Site(self._block(layer), "input")

    def resid(self, layer: int) -> Site:
        return Site(self._block(layer), "output")

    def attn(self, layer: int) -> Site:
        return Site(f"{self._block(layer)}.{self.attn_child}", "output")

    def mlp(self, layer: int) -> Site:
        return Site(f"{self._block(layer)}.{self.mlp_child}", "output")

    def site(self, name: str) -> Site:
        """'resid.3', 'resid_pre.0', 'attn.2' or 'mlp.1' as a module site of this model."""
        kind, _, layer = name.partition(".")
        if kind not in SITE_NAMES or not layer.lstrip("-").isdigit():
            raise AnatomistError(f"vision site '{name}': expected one of {', '.join(SITE_NAMES)} then '.LAYER' "
                                 "(e.g. resid.3)")
        return {"resid_pre": self.resid_pre, "resid": self.resid, "attn": self.attn, "mlp": self.mlp}[kind](int(layer))


def _child(block: nn.Module, names: tuple[str, ...], what: str, path: str) -> str:
    children = dict(block.named_children())
    for name in names:
        if name in children:
            return name
    raise AnatomistError(f"block '{path}' has no {what} child (looked for {', '.join(names)}; "
                         f"it has {', '.join(children)})")


def _find_blocks(model: nn.Module, within: str = "") -> str | None:
    """The first list of same-class blocks that have an attention child (one block is enough), under the path
    part `within` when given (a two-tower model's image tower)."""
    for path, module in model.named_modules():
        if within not in path:
            continue
        blocks = isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1
        if blocks and any(name in _ATTN_NAMES for name, _ in module[0].named_children()):
            return path
    return None


def _vision_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", config)  # a two-tower model (CLIPModel): its image tower
    if config is None or not hasattr(config, "patch_size") or not hasattr(config, "image_size"):
        raise AnatomistError(f"{type(model).__name__} is not a vision transformer: its config has no "
                             "patch_size / image_size")
    return config


def vision_layout(model: nn.Module) -> VisionLayout:
    """The residual-stream, attention and MLP sites and token roles of a Hugging Face ViT-like model."""
    config = _vision_config(model)
    two_towers = getattr(getattr(model, "config", None), "vision_config", None) is not None
    layers = _find_blocks(model, "vision" if two_towers else "")
    if layers is None:
        raise AnatomistError(f"{type(model).__name__}: found no list of transformer blocks")
    blocks = get_module(model, layers)
    assert isinstance(blocks, nn.ModuleList)
    first = blocks[0]
    has_cls = any(name.rsplit(".", 1)[-1] in _CLS_PARAMS for name, _ in model.named_parameters())
    return VisionLayout(
        model_type=str(getattr(config, "model_type", type(model).__name__)),
        layers=layers,
        n_layers=len(blocks),
        d_model=int(config.hidden_size),
        image_size=_pair(config.image_size),
        patch_size=_pair(config.patch_size),
        has_cls=has_cls,
        n_registers=int(getattr(config, "num_register_tokens", 0) or 0),
        attn_child=_child(first, _ATTN_NAMES, "attention", f"{layers}.0"),
        mlp_child=_child(first, _MLP_NAMES, "MLP", f"{layers}.0"),
    )
