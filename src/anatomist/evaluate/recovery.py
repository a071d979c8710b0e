"""How well a decomposition recovers a known answer, and how sparse its importances are.

General functions on tensors, so every lens can use them: pass ground-truth pieces and found
pieces of any shape (matrices, vectors) with the piece index first; they are compared flattened.

* `match` / `mmcs` / `ml2r`: for each true piece, the found piece with the largest cosine
  similarity (MMCS averages these maxima); ML2R averages ‖best match‖ / ‖true piece‖
  (1 means no shrinkage).
* `ci_l0`, `alive`: mean number of subcomponents with importance above a threshold per input;
  subcomponents important on at least one input.
* `identity_pattern_error`: on one-hot inputs each feature should switch on exactly one
  subcomponent of its own (the importances form a permuted identity), judged per feature
  (how many are on, the largest off-pattern importance), never as a mean over all entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anatomist.core.errors import AnatomistError


@dataclass(frozen=True)
class Match:
    """Per true piece: best cosine, index of the found piece achieving it, and norm ratio found/true."""

    cosine: Tensor  # [n_true]
    index: Tensor  # [n_true], long
    norm_ratio: Tensor  # [n_true]

    @property
    def mmcs(self) -> float:
        return float(self.cosine.mean())

    @property
    def ml2r(self) -> float:
        return float(self.norm_ratio.mean())

    @property
    def worst(self) -> float:
        return float(self.cosine.min())

    def summary(self) -> dict[str, float]:
        return {"mmcs": self.mmcs, "ml2r": self.ml2r, "min_cosine": self.worst}


def cosine_matrix(truth: Tensor, found: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of every true piece with every found piece, flattened: `[n_true, n_found]`."""
    if truth.shape[1:] != found.shape[1:]:
        raise AnatomistError(
            f"ground truth pieces have shape {list(truth.shape[1:])} but found pieces {list(found.shape[1:])}"
        )
    t = truth.flatten(1).double()
    f = found.flatten(1).double()
    return (t @ f.T) / (t.norm(dim=1, keepdim=True) * f.norm(dim=1)[None, :]).clamp_min(eps)


@torch.no_grad()
def match(truth: Tensor, found: Tensor) -> Match:
    """Best found piece for each true piece by cosine similarity (signs count: a flipped piece is not a match)."""
    cos = cosine_matrix(truth, found)
    best, idx = cos.max(dim=1)
    ratio = found.flatten(1).double()[idx].norm(dim=1) / truth.flatten(1).double().norm(dim=1).clamp_min(1e-12)
    return Match(best.float(), idx, ratio.float())


def mmcs(truth: Tensor, found: Tensor) -> float:
    """Mean over true pieces of the max cosine similarity with any found piece."""
    return match(truth, found).mmcs


def ml2r(truth: Tensor, found: Tensor) -> float:
    """Mean over true pieces of ‖best-matching found piece‖ / ‖true piece‖."""
    return match(truth, found).ml2r


def ci_l0(importances: Tensor, threshold: float = 0.01) -> float:
    """Mean number of subcomponents with importance > threshold per input (`[..., C]`)."""
    return float((importances > threshold).float().sum(-1).mean())


def alive(importances: Tensor, threshold: float = 0.1) -> Tensor:
    """Which subcomponents are important (> threshold) on at least one input: bool `[C]`."""
    return (importances > threshold).flatten(0, -2).any(dim=0)


ON = 0.5  # an importance above this counts as "on" in the identity-pattern check


def identity_pattern_error(importances: Tensor) -> dict[str, float]:
    """How far one-hot importances `[n_features, C]` are from a permuted identity, feature by feature.

    A mean over all n × C entries cannot tell a clean pattern from one with an extra subcomponent
    fully on per feature (it is ≤ 2/C for any one-hot-like pattern), so the pattern is judged per
    feature: `on_min` / `on_max`, the fewest and most subcomponents on (> 0.5) for any feature;
    `max_off`, the largest importance off the pattern (each feature's own subcomponent is the one
    the optimal assignment gives it); `min_own`, the smallest importance of a feature's own
    subcomponent; `n_distinct`, how many features' largest importance sits on a subcomponent no
    other feature's largest sits on; `clean` (1 or 0), every feature exactly one on, its own, and
    nothing else above 0.5. `max_error` is the largest |importance − ideal| over all entries.
    """
    from scipy.optimize import linear_sum_assignment

    ci = importances.detach().double().cpu()
    n, C = ci.shape
    if n > C:
        raise AnatomistError(f"{n} features cannot each get their own subcomponent out of C={C}")
    rows, cols = linear_sum_assignment(-ci.numpy())
    own = torch.zeros_like(ci, dtype=torch.bool)
    own[torch.as_tensor(rows), torch.as_tensor(cols)] = True
    on = (ci > ON).sum(1)
    off = ci.masked_fill(own, float("-inf")).max(1).values if C > 1 else torch.zeros(n, dtype=ci.dtype)
    argmax = ci.argmax(dim=1)
    distinct = int(sum(int((argmax == a).sum()) == 1 for a in argmax))
    clean = bool((on == 1).all() and (ci[own] > ON).all() and (off <= ON).all())
    return {
        "on_min": float(on.min()),
        "on_max": float(on.max()),
        "max_off": float(off.max()),
        "min_own": float(ci[own].min()),
        "n_distinct": float(distinct),
        "clean": float(clean),
        "max_error": float((ci - own.double()).abs().max()),
    }
