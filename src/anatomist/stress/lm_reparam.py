"""Does a decomposition of a language model survive an exact reparameterisation of the model? (issue 15)

The stress table measures robustness on a planted toy; this measures it on the language model itself. Two models
compute the same function (`anatomist.stress.llama`, logits equal to < 1e-5):

* A: the model with every RMSNorm gain folded into the maps that read it (no residual-stream activation changes);
* B: A with its residual stream rotated by a Haar-random orthogonal R, and every MLP's units permuted and
  rescaled (the rotation is what moves the residual stream and the MLP's input and output; the permutation acts
  only inside the MLPs).

Each lens is fitted on A's activations and, separately, on B's; B's directions are mapped back into A's
coordinates (a residual-stream direction v of B is Rᵀv in A) and matched to A's the way the toy scores a lens:
MMCS, the mean over A's directions of the best cosine with any of B's (`evaluate.recovery.match`; a basis's
directions with both signs). The control is the same lens fitted again on A with another seed: a lens is as robust
as it can be when it matches across the reparameterisation as well as it matches itself across seeds. A
basis-free method (PCA, an SAE trained from an init that does not depend on the basis) should match across as
well as across seeds; the neuron basis of the residual stream (its axes) should not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anatomist.evaluate.recovery import match
from anatomist.features.bases import BASES
from anatomist.interpret.reading import site_rows
from anatomist.nets.sites import Site
from anatomist.stress.compare import directions_of, fit_on_rows
from anatomist.stress.llama import fold_rmsnorm, haar_orthogonal, permute_rescale_mlp, rotate_residual


@dataclass
class ReparamRows:
    """Activations of the same tokens in A and in B at the site a lens reads (and, for a transcoder, its target),
    and R (B's residual stream is R times A's)."""

    a: Tensor
    b: Tensor
    a_target: Tensor | None
    b_target: Tensor | None
    rotation: Tensor


@torch.no_grad()
def reparameterised_pair(model: Any, seed: int = 0) -> tuple[Any, Any, Tensor]:
    """(A, B, R): copies of a Llama-style model, A with its norms folded, B also rotated and MLP-permuted/rescaled."""
    a = fold_rmsnorm(copy.deepcopy(model))
    rotation = haar_orthogonal(a.config.hidden_size, seed)
    b = permute_rescale_mlp(rotate_residual(copy.deepcopy(a), rotation), seed=seed)
    return a.eval(), b.eval(), rotation.float()


def pair_rows(a: Any, b: Any, rotation: Tensor, ids: Tensor, site: str, target: str | None = None) -> ReparamRows:
    """Rows of A and B at `site` (and `target`) on the same token ids."""
    read = Site.parse(site)
    goal = Site.parse(target) if target else None
    return ReparamRows(site_rows(a, ids, read), site_rows(b, ids, read),
                       site_rows(a, ids, goal) if goal else None, site_rows(b, ids, goal) if goal else None,
                       rotation)


def back_to_a(directions: Tensor, rotation: Tensor) -> Tensor:
    """Directions of B's residual stream (rows) in A's coordinates: v ↦ Rᵀv."""
    return directions @ rotation.to(directions.dtype)


def _directions(name: str, rows: Tensor, target: Tensor | None, settings: dict[str, Any], seed: int) -> Tensor:
    sae = fit_on_rows(name, rows, target, seed=seed, **settings)
    return directions_of(sae, name in BASES)


def reparam_match(name: str, rows: ReparamRows, settings: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """{"reparam_mmcs": A's lens matched by B's (mapped back), "reparam_control": A's matched by A's at seed + 1}.

    `settings`: d_sae, k, steps, batch_size of the dictionaries (ignored by bases).
    """
    in_a = _directions(name, rows.a, rows.a_target, settings, seed)
    in_b = back_to_a(_directions(name, rows.b, rows.b_target, settings, seed), rows.rotation)
    again = _directions(name, rows.a, rows.a_target, settings, seed + 1)
    own = in_a[: len(in_a) // 2] if name in BASES else in_a  # a basis's directions once (they come with both signs)
    return {"reparam_mmcs": match(own, in_b).mmcs, "reparam_control": match(own, again).mmcs}
