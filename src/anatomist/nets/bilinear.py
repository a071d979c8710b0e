"""Bilinear layers, g(x) = (Wx) ⊙ (Vx), and a bilinear MLP: a gated linear unit without the gate's nonlinearity.

Everything a bilinear layer computes is a quadratic form of its input, which is what lets
`anatomist.mechanisms.bilinear` read a trained one from its weights alone. Module layout:

    BilinearLayer   w  nn.Linear(d_in, d_hidden)   weight W [d_hidden, d_in], bias b_W (optional)
                    v  nn.Linear(d_in, d_hidden)   weight V [d_hidden, d_in], bias b_V (optional)
    BilinearMLP     bilinear  BilinearLayer(d_in, d_hidden)
                    head      nn.Linear(d_hidden, d_out)     the linear read-out (logits)
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BilinearLayer", "BilinearMLP"]


class BilinearLayer(nn.Module):
    """g(x) = w(x) ⊙ v(x): two linear maps multiplied elementwise, no activation function."""

    def __init__(self, d_in: int, d_hidden: int, bias: bool = False):
        super().__init__()
        self.w = nn.Linear(d_in, d_hidden, bias=bias)
        self.v = nn.Linear(d_in, d_hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w(x) * self.v(x)


class BilinearMLP(nn.Module):
    """head(g(x)): one bilinear layer and a linear read-out, e.g. a classifier's logits."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, bias: bool = False):
        super().__init__()
        self.bilinear = BilinearLayer(d_in, d_hidden, bias=bias)
        self.head = nn.Linear(d_hidden, d_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.bilinear(x.flatten(1)))
