"""Bilinear layers read from their weights: interaction tensors and their eigendecomposition.

A bilinear layer g(x) = (Wx) ⊙ (Vx) is a quadratic form per output: g_a(x) = xᵀ (w_a v_aᵀ) x, where
w_a, v_a are the a-th rows of W and V. Only the symmetric part of w_a v_aᵀ matters in a quadratic
form, so the layer is fully described by the third-order tensor

    B_a = ½ (w_a v_aᵀ + v_a w_aᵀ)                      B ∈ R^{d_out × d_in × d_in}

and contracting it twice with x gives the layer's output exactly. Biases are folded in by
augmenting the input with a constant 1 (W' = [W | b_W], x' = [x; 1]).

For a direction u in the output space (a class's row of the read-out matrix, say), the projected
output uᵀg(x) = xᵀQx with the interaction matrix Q = Σ_a u_a B_a. Q is symmetric, so it
eigendecomposes into orthogonal directions: uᵀg(x) = Σ_i λ_i (v_iᵀx)². A handful of large |λ_i|
usually carry most of the output (Pearce et al. 2024), and each v_i lives in input space — for an
image classifier, an image.

    >>> from anatomist.mechanisms import bilinear
    >>> dec = bilinear.decompose_mlp(model.bilinear, model.head)   # per-class Q and its eigenvectors
    >>> dec.eigen.vectors[3, :784, 0]                              # class 3's top eigenvector (an image)
    >>> dec.forward(x, top=4)                                      # logits keeping 4 eigenvectors per class
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.nets.bilinear import BilinearLayer, BilinearMLP

__all__ = [
    "BilinearLayer",
    "BilinearMLP",
    "BilinearWeights",
    "Eigen",
    "MLPDecomposition",
    "augment",
    "bilinear_weights",
    "contract",
    "decompose_mlp",
    "eigendecompose",
    "find_bilinear_layers",
    "interaction_matrix",
    "interaction_tensor",
    "output_interactions",
    "truncation_accuracy",
]


def augment(x: Tensor) -> Tensor:
    """[..., d_in] -> [..., d_in + 1]: the input with a constant 1 appended (the bias coordinate)."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


@dataclass(frozen=True)
class BilinearWeights:
    """W and V of one bilinear layer, with biases (if any) as the last input column."""

    w: Tensor  # [d_hidden, d_in'], d_in' = d_in + 1 when biased
    v: Tensor  # [d_hidden, d_in']
    biased: bool

    def inputs(self, x: Tensor) -> Tensor:
        """The layer's input in the coordinates of `w`/`v`: [..., d_in] -> [..., d_in']."""
        return augment(x) if self.biased else x


def bilinear_weights(layer: nn.Module, name: str = "layer") -> BilinearWeights:
    """W and V (biases folded in) of a `BilinearLayer`; any other module is a clear error."""
    if not isinstance(layer, BilinearLayer):
        raise AnatomistError(
            f"{name}: {type(layer).__name__} is not a bilinear layer; expected anatomist's BilinearLayer "
            "(children w, v: nn.Linear; forward w(x) * v(x)), e.g. a gated MLP without its activation"
        )
    w, v = layer.w, layer.v
    if (w.bias is None) != (v.bias is None):
        raise AnatomistError(f"{name}: w and v must both have a bias or both have none")
    if w.bias is None or v.bias is None:
        return BilinearWeights(w.weight.detach(), v.weight.detach(), biased=False)
    W = torch.cat([w.weight, w.bias[:, None]], dim=1).detach()
    V = torch.cat([v.weight, v.bias[:, None]], dim=1).detach()
    return BilinearWeights(W, V, biased=True)


def find_bilinear_layers(model: nn.Module) -> dict[str, BilinearLayer]:
    """Every `BilinearLayer` in `model` by module path; none at all is an error."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, BilinearLayer)}
    if not found:
        raise AnatomistError(
            f"{type(model).__name__} has no bilinear layer (anatomist's BilinearLayer: w(x) * v(x)); "
            "the bilinear lens reads only layers without an elementwise nonlinearity"
        )
    return found


def interaction_tensor(W: Tensor, V: Tensor) -> Tensor:
    """B [d_out, d_in, d_in], symmetric in its last two indices, with xᵀB_a x = (Wx)_a (Vx)_a.

    W, V: [d_out, d_in] in nn.Linear layout (augment them with their biases first, see
    `bilinear_weights`). Memory is d_out·d_in²: for a wide layer prefer `interaction_matrix`.
    """
    _check_pair(W, V)
    B = W[:, :, None] * V[:, None, :]  # [d_out, d_in, d_in]: outer(w_a, v_a)
    return 0.5 * (B + B.transpose(1, 2))


def contract(B: Tensor, x: Tensor) -> Tensor:
    """[batch, d_out]: xᵀB_a x for every output a. B [d_out, d_in, d_in], x [batch, d_in]."""
    return torch.einsum("aij,bi,bj->ba", B, x, x)


def interaction_matrix(W: Tensor, V: Tensor, u: Tensor) -> Tensor:
    """Q = Σ_a u_a B_a [d_in, d_in] for an output direction u [d_out], without building B."""
    return output_interactions(W, V, u[None])[0]


def output_interactions(W: Tensor, V: Tensor, U: Tensor) -> Tensor:
    """Q_c [n_dirs, d_in, d_in] for each row u_c of U [n_dirs, d_out] (e.g. a read-out matrix).

    Q_c = ½ (Wᵀ diag(u_c) V + Vᵀ diag(u_c) W): d_out never appears in the result's size.
    """
    _check_pair(W, V)
    if U.ndim != 2 or U.shape[1] != W.shape[0]:
        raise AnatomistError(f"output directions must be [n, {W.shape[0]}] to match the layer, got {list(U.shape)}")
    Q = torch.einsum("ca,ai,aj->cij", U, W, V)  # [n_dirs, d_in, d_in]
    return 0.5 * (Q + Q.transpose(1, 2))


@dataclass(frozen=True)
class Eigen:
    """Eigendecomposition of symmetric matrices Q = Σ_i λ_i v_i v_iᵀ, sorted by |λ| (largest first)."""

    values: Tensor  # [..., k]
    vectors: Tensor  # [..., d_in, k]: column i is v_i

    def contributions(self, x: Tensor) -> Tensor:
        """[batch, ..., k]: λ_i (v_iᵀx)², whose sum over i is xᵀQx. x [batch, d_in]."""
        proj = torch.einsum("bd,...dk->b...k", x, self.vectors)
        return self.values * proj.square()

    def forward(self, x: Tensor, top: int | None = None) -> Tensor:
        """[batch, ...]: Σ_{i < top} λ_i (v_iᵀx)², the quadratic form keeping the top eigenvectors."""
        return self.contributions(x)[..., :top].sum(-1)

    def matrix(self, top: int | None = None) -> Tensor:
        """[..., d_in, d_in]: Σ_{i < top} λ_i v_i v_iᵀ."""
        vecs = self.vectors[..., :top]
        return (vecs * self.values[..., None, :top]) @ vecs.transpose(-1, -2)


def eigendecompose(Q: Tensor) -> Eigen:
    """Eigenvalues and eigenvectors of symmetric Q [..., d, d], sorted by |λ| descending.

    Solved in float64 (cheap at these sizes, and small eigenvalues stay meaningful), returned in Q's dtype.
    """
    if Q.ndim < 2 or Q.shape[-1] != Q.shape[-2]:
        raise AnatomistError(f"interaction matrices must be square [..., d, d], got {list(Q.shape)}")
    values, vectors = torch.linalg.eigh(Q.double())
    order = values.abs().argsort(dim=-1, descending=True)
    values = values.gather(-1, order)
    vectors = vectors.gather(-1, order[..., None, :].expand_as(vectors))
    return Eigen(values.to(Q.dtype), vectors.to(Q.dtype))


@dataclass(frozen=True)
class MLPDecomposition:
    """A bilinear layer followed by a linear read-out, as one quadratic form per output.

    output_c(x) = x'ᵀ Q_c x' + offset_c, with x' the (augmented) input and Q_c eigendecomposed.
    """

    weights: BilinearWeights
    q: Tensor  # [n_out, d_in', d_in']
    eigen: Eigen  # values [n_out, d_in'], vectors [n_out, d_in', d_in']
    offset: Tensor  # [n_out]: the read-out's bias (zeros when it has none)

    def contributions(self, x: Tensor) -> Tensor:
        """[batch, n_out, d_in']: each eigenvector's term λ_i (v_iᵀx')², by |λ| within each output."""
        return self.eigen.contributions(self.weights.inputs(x.flatten(1)))

    def forward(self, x: Tensor, top: int | None = None) -> Tensor:
        """[batch, n_out]: the outputs keeping only each output's `top` eigenvectors (None: all, exact)."""
        return self.contributions(x)[..., :top].sum(-1) + self.offset


def decompose_mlp(layer: nn.Module, head: nn.Module | Tensor, name: str = "layer") -> MLPDecomposition:
    """Express head(layer(x)) through the read-out directions: per-output Q_c and its eigenvectors.

    `head` is the linear map after the bilinear layer (an nn.Linear, or its weight [n_out, d_hidden]).
    """
    weights = bilinear_weights(layer, name)
    if isinstance(head, nn.Linear):
        U, bias = head.weight.detach(), head.bias
        offset = bias.detach() if bias is not None else U.new_zeros(U.shape[0])
    elif isinstance(head, Tensor):
        U, offset = head.detach(), head.new_zeros(head.shape[0])
    else:
        raise AnatomistError(f"head after {name}: expected nn.Linear or a weight tensor, got {type(head).__name__}")
    q = output_interactions(weights.w, weights.v, U)
    return MLPDecomposition(weights, q, eigendecompose(q), offset)


@torch.no_grad()
def truncation_accuracy(dec: MLPDecomposition, x: Tensor, labels: Tensor, tops: list[int | None]) -> dict[str, float]:
    """Accuracy of the classifier when every class keeps only its `top` eigenvectors (None: all, the model).

    Returns {"1": acc, "2": acc, ..., "all": acc}; x [N, d_in] (or images, flattened here), labels [N].
    """
    cum = dec.contributions(x).cumsum(-1)  # [N, n_out, d_in']: running sums over eigenvectors by |λ|
    out = {}
    for top in tops:
        k = cum.shape[-1] if top is None else min(top, cum.shape[-1])
        logits = cum[..., k - 1] + dec.offset
        out["all" if top is None else str(top)] = float((logits.argmax(-1) == labels).float().mean())
    return out


def _check_pair(W: Tensor, V: Tensor) -> None:
    if W.ndim != 2 or W.shape != V.shape:
        raise AnatomistError(
            f"W and V must be matrices of one shape [d_out, d_in], got {list(W.shape)} and {list(V.shape)}"
        )
