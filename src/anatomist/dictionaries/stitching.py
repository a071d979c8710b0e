"""SAE stitching (Leask et al., "Sparse autoencoders do not find canonical units of analysis").

Two dictionaries on one site, a small one S and a large one L. Each latent of L is matched to S by the
cosine of decoder rows: a latent whose best cosine is below `threshold` is *novel* (S has nothing like
it), the others are *reconstruction* latents. Linking every pair with cosine ≥ threshold splits the
reconstruction latents and their S counterparts into groups (connected components).

The path from S to L: first insert L's novel latents into S, a few at a time; then swap the groups one by
one (remove the group's S latents, add its L latents); last, drop the S latents that no L latent matched.
A stitched dictionary encodes x with both S and L as each would alone (so TopK selections are the ones
each SAE makes), keeps the chosen latents of each, and decodes
    x̂ = Σ_kept(S) a_i d_i + Σ_kept(L) a_j d_j + (1 − t)·b_S + t·b_L,
with t the fraction of S latents removed, so the path starts at S and ends at L exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from anatomist.core import AnatomistError, Config
from anatomist.features.base import SparseDictionary


class StitchConfig(Config):
    """How two dictionaries are matched and how finely the path is sampled."""

    threshold: float = Field(0.7, gt=0, lt=1, description="decoder cosine at or above which latents are matched")
    novel_points: int = Field(8, ge=1, description="points at which the path is measured while inserting novel latents")
    swap_points: int = Field(8, ge=1, description="points at which the path is measured while swapping groups")
    seed: int = Field(0, description="order in which novel latents are inserted and groups swapped")
    batch_size: int = Field(4096, gt=0, description="rows encoded at once")


@dataclass
class Matching:
    """How the latents of a large dictionary relate to those of a small one."""

    max_cos: Tensor  # [F_large] best decoder cosine of each large latent to the small dictionary
    novel: Tensor  # [n_novel] large latents with no small counterpart
    groups: list[tuple[Tensor, Tensor]]  # (small latents, large latents) of each connected component
    unmatched_small: Tensor  # small latents no large latent matches

    def summary(self, n_large: int) -> dict[str, Any]:
        return {
            "novel_fraction": len(self.novel) / n_large,
            "reconstruction_fraction": 1 - len(self.novel) / n_large,
            "n_novel": len(self.novel),
            "n_groups": len(self.groups),
            "n_unmatched_small": len(self.unmatched_small),
            "mean_max_cos": float(self.max_cos.mean()),
        }


def _unit(w: Tensor) -> Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def match_latents(small: SparseDictionary, large: SparseDictionary, threshold: float = 0.7) -> Matching:
    """Match `large`'s latents to `small`'s by decoder cosine (see the module docstring)."""
    if small.cfg.out_dim != large.cfg.out_dim:
        raise AnatomistError(f"stitching needs one site: decoders write {small.cfg.out_dim} and {large.cfg.out_dim}")
    cos = _unit(large.W_dec.detach().float()) @ _unit(small.W_dec.detach().float()).T  # [F_large, F_small]
    linked = cos >= threshold
    max_cos = cos.max(1).values
    novel = (~linked.any(1)).nonzero().flatten()
    # connected components of the bipartite graph: label propagation over small∪large nodes
    n_l, n_s = linked.shape
    label = torch.arange(n_l + n_s)
    li, si = linked.nonzero(as_tuple=True)
    a, b = li, si + n_l
    while True:
        m = torch.minimum(label[a], label[b])
        new = label.clone()
        new.scatter_reduce_(0, a, m, reduce="amin")
        new.scatter_reduce_(0, b, m, reduce="amin")
        new = new[new]  # jump to the root's label
        if torch.equal(new, label):
            break
        label = new
    groups = []
    has_edge = torch.zeros(n_l + n_s, dtype=torch.bool)
    has_edge[a], has_edge[b] = True, True
    for g in label[has_edge].unique():
        members = ((label == g) & has_edge).nonzero().flatten()
        groups.append((members[members >= n_l] - n_l, members[members < n_l]))
    unmatched_small = (~linked.any(0)).nonzero().flatten()
    return Matching(max_cos, novel, groups, unmatched_small)


class StitchedSAE:
    """Chosen latents of a small and a large dictionary decoded together (see the module docstring)."""

    def __init__(self, small: SparseDictionary, large: SparseDictionary, keep_small: Tensor, keep_large: Tensor):
        self.small, self.large = small, large
        self.keep_small, self.keep_large = keep_small, keep_large  # [F_small], [F_large] bool
        self.t = 1 - float(keep_small.float().mean())  # share of the small latents removed

    def encode(self, x: Tensor) -> Tensor:
        """[.., F_small + F_large]: each dictionary's own code, the dropped latents zeroed."""
        return torch.cat([self.small.encode(x) * self.keep_small, self.large.encode(x) * self.keep_large], -1)

    def decode(self, acts: Tensor) -> Tensor:
        n = self.small.cfg.d_sae
        b = (1 - self.t) * self.small.b_dec + self.t * self.large.b_dec
        return acts[..., :n] @ self.small.W_dec + acts[..., n:] @ self.large.W_dec + b


def insertion_effects(small: SparseDictionary, large: SparseDictionary, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Change of the small dictionary's MSE [F_large] when one latent of `large` is inserted alone (< 0: it helps).

    The paper's own test of novelty. With e = x − x̂_S and a_j the latent's activation, the new error is
    ‖e − a_j d_j‖², so ΔMSE_j = mean over rows of a_j²‖d_j‖² − 2 a_j (e · d_j): every latent at once.
    """
    delta = torch.zeros(large.cfg.d_sae, dtype=torch.float64)
    with torch.no_grad():
        w = large.W_dec.float()  # [F_large, d]
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].float()
            e = xb - small.decode(small.encode(xb))  # [b, d]
            a = large.encode(xb)  # [b, F_large]
            delta += (a.pow(2) * w.pow(2).sum(-1) - 2 * a * (e @ w.T)).sum(0).double()
    return (delta / len(x)).float()


def _auc(scores: Tensor, positive: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def _points(n: int, k: int) -> list[int]:
    """Up to k+1 evenly spaced counts from 0 to n (both ends kept)."""
    return sorted({round(i * n / k) for i in range(k + 1)})


def stitch_path(
    small: SparseDictionary, large: SparseDictionary, x: Tensor, cfg: StitchConfig | None = None
) -> dict[str, Any]:
    """Match `large` to `small`, walk the stitching path on rows x [n, d_in] and report the MSE along it.

    Returns the matching summary; how often a latent inserted alone lowers the small SAE's MSE (all, novel,
    reconstruction latents) and `cosine_auc`, how well a low max-cosine predicts that (the paper's cheap
    proxy; 0.5 = no better than chance); `path` (a list of {stage, n_novel_added, n_groups_swapped, mse, fvu}),
    the endpoints' own MSEs (`mse_small`, `mse_large`), `monotone` (the MSE never rose along the path) and
    `novel_mse_drop` / `swap_mse_change` (MSE change over each stage).
    """
    cfg = cfg or StitchConfig.parse({})
    match = match_latents(small, large, cfg.threshold)
    gen = torch.Generator().manual_seed(cfg.seed)
    novel = match.novel[torch.randperm(len(match.novel), generator=gen)]
    groups = [match.groups[i] for i in torch.randperm(len(match.groups), generator=gen).tolist()]
    x = x.to(torch.float32)
    with torch.no_grad():
        a_s = torch.cat([small.encode(x[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)])
        a_l = torch.cat([large.encode(x[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)])
    var = float((x - x.mean(0)).pow(2).sum(-1).mean())

    def mse(keep_s: Tensor, keep_l: Tensor) -> float:
        st = StitchedSAE(small, large, keep_s, keep_l)
        with torch.no_grad():
            recon = st.decode(torch.cat([a_s * keep_s, a_l * keep_l], -1))
        return float((recon - x).pow(2).sum(-1).mean())

    keep_s = torch.ones(small.cfg.d_sae, dtype=torch.bool)
    keep_l = torch.zeros(large.cfg.d_sae, dtype=torch.bool)
    path: list[dict[str, Any]] = []

    def record(stage: str, n_novel: int, n_groups: int) -> None:
        m = mse(keep_s, keep_l)
        path.append({"stage": stage, "n_novel_added": n_novel, "n_groups_swapped": n_groups, "mse": m,
                     "fvu": m / var})

    for n in _points(len(novel), cfg.novel_points):
        keep_l[novel[:n]] = True
        record("insert novel" if n else "small", n, 0)
    for g in _points(len(groups), cfg.swap_points)[1:]:
        for s_idx, l_idx in groups[:g]:
            keep_s[s_idx], keep_l[l_idx] = False, True
        record("swap groups", len(novel), g)
    keep_s[:] = False
    record("large", len(novel), len(groups))
    mses = [p["mse"] for p in path]
    n_after_novel = len(_points(len(novel), cfg.novel_points))
    helps = insertion_effects(small, large, x, cfg.batch_size) < 0  # [F_large]
    is_novel = torch.zeros(large.cfg.d_sae, dtype=torch.bool)
    is_novel[match.novel] = True
    return {
        **match.summary(large.cfg.d_sae),
        "helps_alone_fraction": float(helps.float().mean()),
        "novel_helps_alone_fraction": float(helps[is_novel].float().mean()) if is_novel.any() else float("nan"),
        "reconstruction_helps_alone_fraction": float(helps[~is_novel].float().mean()) if (~is_novel).any()
        else float("nan"),
        "cosine_auc": _auc(-match.max_cos, helps),
        "threshold": cfg.threshold,
        "mse_small": mse(torch.ones_like(keep_s), torch.zeros_like(keep_l)),
        "mse_large": mse(torch.zeros_like(keep_s), torch.ones_like(keep_l)),
        "novel_mse_drop": mses[0] - mses[n_after_novel - 1],
        "swap_mse_change": mses[-1] - mses[n_after_novel - 1],
        "monotone": all(b <= a * (1 + 1e-6) for a, b in zip(mses, mses[1:], strict=False)),
        "path": path,
    }


def stage_dictionaries(small: SparseDictionary, large: SparseDictionary, match: Matching,
                       ) -> dict[str, StitchedSAE]:
    """The path's landmarks as dictionaries: small, small + every novel latent of large, large."""
    ones_s, zeros_l = torch.ones(small.cfg.d_sae, dtype=torch.bool), torch.zeros(large.cfg.d_sae, dtype=torch.bool)
    with_novel = zeros_l.clone()
    with_novel[match.novel] = True
    return {
        "small": StitchedSAE(small, large, ones_s, zeros_l),
        "small+novel": StitchedSAE(small, large, ones_s, with_novel),
        "large": StitchedSAE(small, large, ~ones_s, ~zeros_l),
    }
