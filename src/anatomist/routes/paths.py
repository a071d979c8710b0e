"""Expert paths: each token's top-1 expert across a band of MoE layers, and what those paths group.

`collect_routing` runs a model over token ids and reads, at every MoE layer of the band, the
hidden state its router reads (the router's input) and the router logits (its output), in one
forward pass that stops after the last router. A token's *path* is its tuple of top-1 experts.

Measures:
- `path_stats`: how many distinct paths, how concentrated (entropy, top-10 share), how evenly
  each layer's experts are used.
- `stability`: cosine of a token's control (content) vector at layer l with its control
  (content) vector at layer l+1, next to a shuffled-token baseline, and how much consecutive
  routers' row spaces overlap.
- `group_scores`: how monosemantic a grouping of tokens is with respect to a label (purity,
  mutual information), next to the same grouping with labels shuffled (same group sizes), which
  is the chance level for that many groups of those sizes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.grouping import entropy_bits, mutual_info_bits, purity
from anatomist.nets.sites import Site, capture
from anatomist.routes.control import MoELayer, control_content, find_moe_layers, router_basis


@dataclass(frozen=True)
class Routing:
    """Router inputs and logits of N tokens (row-major over the input ids) at L MoE layers."""

    layers: list[MoELayer]
    hidden: torch.Tensor  # [L, N, d] what each router reads
    logits: torch.Tensor  # [L, N, E] router logits

    @property
    def top1(self) -> torch.Tensor:
        """[N, L] each token's top-1 expert at each layer: its path."""
        return self.logits.argmax(-1).T

    def split(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(control, content) of all tokens at the i-th layer of the band."""
        return control_content(self.layers[i], self.hidden[i])


def select_layers(model: nn.Module, band: Sequence[int] | None = None) -> list[MoELayer]:
    """The MoE layers of `model`, or those at the given indices among them (a band)."""
    layers = find_moe_layers(model)
    if band is None:
        return layers
    bad = [i for i in band if not -len(layers) <= i < len(layers)]
    if bad:
        raise AnatomistError(f"MoE layer indices {bad} out of range: the model has {len(layers)} MoE layers")
    return [layers[i] for i in band]


@torch.no_grad()
def collect_routing(
    model: nn.Module, ids: torch.Tensor, band: Sequence[int] | None = None, batch_size: int = 32
) -> Routing:
    """Run `model` on token ids [n_seqs, seq_len] and read every router of the band."""
    if ids.ndim != 2:
        raise AnatomistError(f"collect_routing takes token ids [n_seqs, seq_len], got shape {list(ids.shape)}")
    layers = select_layers(model, band)
    sites = [Site(lay.router_name, w) for lay in layers for w in ("input", "output")]
    hidden: list[list[torch.Tensor]] = [[] for _ in layers]
    logits: list[list[torch.Tensor]] = [[] for _ in layers]
    model.eval()
    for i in range(0, len(ids), batch_size):
        got = capture(model, ids[i : i + batch_size], sites)
        for j, lay in enumerate(layers):
            hidden[j].append(got[Site(lay.router_name, "input")].reshape(-1, lay.d_model).float())
            logits[j].append(got[Site(lay.router_name, "output")].reshape(-1, lay.n_experts).float())
    return Routing(layers, torch.stack([torch.cat(h) for h in hidden]), torch.stack([torch.cat(g) for g in logits]))


def path_groups(top1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group tokens by path: (group id per token [N], the distinct paths [P, L], tokens per path [P])."""
    paths, inverse, counts = torch.unique(top1, dim=0, return_inverse=True, return_counts=True)
    return inverse, paths, counts


def path_stats(top1: torch.Tensor, n_experts: int) -> dict[str, float]:
    """How many paths the tokens take and how concentrated they are."""
    n, n_layers = top1.shape
    _, _, counts = path_groups(top1)
    c = np.sort(counts.numpy())[::-1]
    h = entropy_bits(c)
    per_layer = [entropy_bits(np.bincount(top1[:, j].numpy(), minlength=n_experts)) for j in range(n_layers)]
    return {
        "n_tokens": int(n),
        "n_layers": int(n_layers),
        "n_paths": int(len(c)),
        "possible_paths": int(n_experts**n_layers),
        "path_entropy_bits": h,
        "max_entropy_bits": float(min(np.log2(n), n_layers * np.log2(n_experts))),
        "path_perplexity": float(2**h),
        "top10_share": float(c[:10].sum() / n),
        "singleton_share": float((c == 1).sum() / n),
        "expert_entropy_bits_per_layer_mean": float(np.mean(per_layer)),
        "expert_entropy_bits_max": float(np.log2(n_experts)),
    }


def top_paths(top1: torch.Tensor, strings: Sequence[str], n: int = 10, examples: int = 8) -> list[dict[str, object]]:
    """The n most used paths, each with its share and its most frequent tokens."""
    if len(strings) != len(top1):
        raise AnatomistError(f"top_paths: {len(strings)} token strings for {len(top1)} tokens")
    inverse, paths, counts = path_groups(top1)
    out = []
    for g in counts.argsort(descending=True)[:n].tolist():
        members = (inverse == g).nonzero().squeeze(1).tolist()
        common = Counter(strings[i] for i in members).most_common(examples)
        out.append(
            {
                "path": paths[g].tolist(),
                "count": int(counts[g]),
                "share": float(counts[g] / len(top1)),
                "tokens": [[s, c] for s, c in common],
            }
        )
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


def _random_basis(rank: int, d: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=torch.float64))
    return q.T  # [rank, d], orthonormal rows


def stability(routing: Routing, seed: int = 0) -> list[dict[str, float | str]]:
    """Per consecutive pair of layers: mean cosine of each token's control (content, full) vector across them.

    References: the same cosines with tokens paired at random ("_shuffled"), and the control
    cosine had each router's row space been a random subspace of the same rank
    ("control_cos_random_subspaces"): low control similarity is only telling below that.
    """
    gen = torch.Generator().manual_seed(seed)
    out: list[dict[str, float | str]] = []
    for i in range(len(routing.layers) - 1):
        ctrl_a, cont_a = routing.split(i)
        ctrl_b, cont_b = routing.split(i + 1)
        perm = torch.randperm(ctrl_a.shape[0], generator=gen)  # pairs of different tokens: the baseline
        ba, bb = router_basis(routing.layers[i]), router_basis(routing.layers[i + 1])
        # reference: the same hidden states read through independent random subspaces of the same ranks
        qa, qb = (_random_basis(len(b), b.shape[1], gen) for b in (ba, bb))
        ha, hb = routing.hidden[i].double(), routing.hidden[i + 1].double()
        out.append(
            {
                "layer": routing.layers[i].name,
                "next_layer": routing.layers[i + 1].name,
                "control_cos": float(_cos(ctrl_a, ctrl_b).mean()),
                "control_cos_shuffled": float(_cos(ctrl_a, ctrl_b[perm]).mean()),
                "control_cos_random_subspaces": float(_cos(ha @ qa.T @ qa, hb @ qb.T @ qb).mean()),
                "content_cos": float(_cos(cont_a, cont_b).mean()),
                "content_cos_shuffled": float(_cos(cont_a, cont_b[perm]).mean()),
                "hidden_cos": float(_cos(routing.hidden[i], routing.hidden[i + 1]).mean()),
                # mean squared cosine of the principal angles between the two row spaces; r/d for random ones
                "subspace_overlap": float((ba @ bb.T).square().sum() / min(len(ba), len(bb))),
                "subspace_overlap_random": float(max(len(ba), len(bb)) / ba.shape[1]),
            }
        )
    return out


def group_scores(groups: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Purity and mutual information of a grouping against a label, and both at chance (labels shuffled).

    Tokens with label -1 (not covered) are dropped. More, smaller groups score higher by chance;
    the shuffled numbers keep the group sizes, so `*_lift` = score - chance compares groupings
    of different sizes fairly.
    """
    groups, labels = np.asarray(groups), np.asarray(labels)
    if groups.shape != labels.shape:
        raise AnatomistError(f"group_scores: groups {list(groups.shape)} and labels {list(labels.shape)} differ")
    keep = labels >= 0
    groups, labels = groups[keep], labels[keep]
    if len(labels) == 0:
        raise AnatomistError("group_scores: no token has a label")
    shuffled = np.random.default_rng(seed).permutation(labels)
    score, score0 = purity(groups, labels), purity(groups, shuffled)
    mi, mi0 = mutual_info_bits(groups, labels), mutual_info_bits(groups, shuffled)
    h = entropy_bits(np.bincount(np.unique(labels, return_inverse=True)[1]))
    return {
        "n_groups": int(len(np.unique(groups))),
        "n_tokens": int(len(labels)),
        "purity": score,
        "purity_chance": score0,
        "purity_lift": score - score0,
        "mi_bits": mi,
        "mi_chance_bits": mi0,
        "mi_lift_bits": mi - mi0,
        "mi_lift_frac": (mi - mi0) / h if h > 0 else 0.0,  # share of the label's entropy explained beyond chance
        "label_entropy_bits": h,
    }
