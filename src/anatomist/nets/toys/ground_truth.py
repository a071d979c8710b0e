"""What a toy model really computes, in the shapes lenses are scored against.

Every toy hands back one `GroundTruth`. The conventions, shared by all toys:

* `weights[name]` is the weight of the module at path `name` (`model.get_submodule(name)`),
  in `nn.Linear` layout: `[d_out, d_in]`.
* `components[name]` is `[n_mech, d_out, d_in]`: the true mechanisms of that weight, one
  slice each, in the same layout. Where it is given, `components[name].sum(0) == weights[name]`.
  A module is listed here only when its decomposition is known in closed form.
* `n_components[name]` is how many components a faithful decomposition of that module should
  find (e.g. the TMS +ID identity layer: `d_hidden`, even though any orthonormal basis of it
  is as good as the standard one).
* `feature_directions` is `[n_features, d]`: feature i's direction in the space where features
  live in superposition (TMS: column i of W in the hidden space; residual MLP: row i of W_E).
* `label_fn` maps a batch of inputs to the labels the model was trained on.

What a parameter decomposition of the toy is scored on is data here too, so a scorer needs no
branch per toy: `targets` (the layers the papers decompose), `per_feature` (layers where each
feature should switch on its own subcomponent), `owned_per_feature` (layers where the number of
features owning exactly one subcomponent is reported), `feature_rows` (a layer whose true weight's
column f is feature f's piece, for the SPD paper's row scores) and `identity` (layers whose true
map is the identity, scored by how many pieces it becomes and how well they sum to I).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroundTruth:
    """The known answer for one trained toy (see the module docstring for the conventions)."""

    feature_directions: Tensor
    weights: dict[str, Tensor]
    components: dict[str, Tensor]
    n_components: dict[str, int]
    label_fn: Callable[[Tensor], Tensor]
    description: str = ""
    extra: dict[str, Tensor] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    per_feature: list[str] = field(default_factory=list)
    owned_per_feature: list[str] = field(default_factory=list)
    feature_rows: str | None = None
    identity: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return self.feature_directions.shape[0]

    def factors(self, name: str) -> tuple[Tensor, Tensor]:
        """Rank-one factors `(u [n_mech, d_out], v [n_mech, d_in])` of `components[name]`.

        Component c equals `outer(u[c], v[c])`; the norm sits on `u`, `v` has unit norm. Computed
        by SVD, so the sign of each pair is arbitrary (it cancels in the product).
        """
        comps = self.components[name]
        u, s, vh = torch.linalg.svd(comps, full_matrices=False)
        return u[:, :, 0] * s[:, :1], vh[:, 0, :]
