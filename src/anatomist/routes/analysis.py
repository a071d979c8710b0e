"""The routing-as-control analysis: one call runs every measure of the lens on held-out text.

`analyze(model, ids, tokenizer, ...)` reads the routers of a band of MoE layers and reports
1. path statistics and the most used paths with their tokens;
2. cross-layer stability of control vs content;
3. linear probes (token identity, position bucket, this layer's and the next layer's expert)
   from control, content, content cut to control's size, and the full hidden state;
4. monosemanticity against offline token labels (`anatomist.data.token_labels`): groupings by
   single-layer expert, by path, and by k-means clusters of control / content / full hidden
   states at the same number of groups as there are paths, each next to its chance level;
5. for the most frequent tokens, how many paths each one takes (one token, several functions).
It returns a nested dict; the `routes` run kind (`anatomist.runs.routes`) writes it and the plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.data.token_labels import LABELS, token_labels
from anatomist.routes.control import router_basis, split_coordinates
from anatomist.routes.paths import Routing, collect_routing, group_scores, path_groups, path_stats, stability, top_paths
from anatomist.routes.probes import FEATURES, probe_layer


class AnalyzeConfig(Config):
    """What `analyze` measures and how much of it."""

    band: list[int] | None = Field(default=None, description="indices of the MoE layers forming the band (None: all)")
    top_tokens: int = Field(default=20, ge=2, description="the most frequent tokens that get a token-identity label")
    n_position_buckets: int = Field(default=7, ge=2, description="log2 position buckets (7: 0, 1, 2-3, ..., 32+)")
    probe_tokens: int = Field(default=8000, ge=100, description="tokens sampled for each linear probe (75% train)")
    max_clusters: int = Field(default=4096, ge=2, description="cap on k for the k-means matched to the paths")
    n_top_paths: int = Field(default=12, ge=1, description="most used paths listed with their tokens")
    seed: int = Field(default=0, description="seed for splits, shuffles and k-means")


def _kmeans(x: torch.Tensor, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans  # heavy (~1.5 s): loaded when clustering, not at CLI start

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=2048, max_iter=50)
    return km.fit_predict(x.double().numpy()).astype(np.int64)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    # per-layer blocks get equal weight in a concatenation: scale each to unit mean squared norm
    return x / x.square().sum(-1).mean().sqrt().clamp_min(1e-12)


def band_features(routing: Routing) -> dict[str, torch.Tensor]:
    """Control, content and full hidden states of every band layer, concatenated per token."""
    parts: dict[str, list[torch.Tensor]] = {"control": [], "content": [], "full": []}
    for i, layer in enumerate(routing.layers):
        control, content = split_coordinates(layer, routing.hidden[i])
        parts["control"].append(_standardise(control))
        parts["content"].append(_standardise(content))
        parts["full"].append(_standardise(routing.hidden[i]))
    return {k: torch.cat(v, dim=1) for k, v in parts.items()}


def monosemanticity(
    routing: Routing, labels: dict[str, np.ndarray], max_clusters: int = 4096, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """{grouping: {label: group_scores}} for experts, paths and k-means groupings at matched group counts.

    Groupings: `expert@L` (the top-1 expert at layer L: n_experts groups); `kmeansE_{part}@L`
    (k-means with k = n_experts on that layer's control / content / full hidden state: matched to
    one expert); `path_len{j}` (paths over the band's first j layers) and `path` (the whole band);
    `kmeans_{part}` (k-means on the band's concatenated control / content / full states with k = the
    number of distinct paths, capped at `max_clusters`: matched to paths).
    """
    top1 = routing.top1
    n_experts = routing.layers[0].n_experts
    groupings: dict[str, np.ndarray] = {}
    for i, layer in enumerate(routing.layers):
        groupings[f"expert@{layer.name}"] = top1[:, i].numpy()
        control, content = split_coordinates(layer, routing.hidden[i])
        for part, x in (("control", control), ("content", content), ("full", routing.hidden[i])):
            groupings[f"kmeansE_{part}@{layer.name}"] = _kmeans(x, n_experts, seed)
    for j in range(2, top1.shape[1] + 1):
        groupings["path" if j == top1.shape[1] else f"path_len{j}"] = path_groups(top1[:, :j])[0].numpy()
    k = int(min(len(np.unique(groupings["path"])), max_clusters, len(top1)))
    for part, x in band_features(routing).items():
        groupings[f"kmeans_{part}"] = _kmeans(x, k, seed)
    return {g: {lab: group_scores(a, y, seed) for lab, y in labels.items()} for g, a in groupings.items()}


def token_path_diversity(top1: torch.Tensor, token_ids: np.ndarray, strings: list[str], n: int = 10) -> list[dict]:
    """For the n most frequent tokens: how many distinct paths they take and how concentrated."""
    ids, counts = np.unique(token_ids, return_counts=True)
    out = []
    for t in ids[np.argsort(-counts, kind="stable")[:n]]:
        rows = np.nonzero(token_ids == t)[0]
        _, _, c = path_groups(top1[torch.from_numpy(rows)])
        p = c.double() / c.sum()
        out.append(
            {
                "token": strings[int(rows[0])],
                "count": int(len(rows)),
                "n_paths": int(len(c)),
                "top_path_share": float(p.max()),
                "path_entropy_bits": float(-(p * p.log2()).sum()),
            }
        )
    return out


def analyze(
    model: nn.Module,
    ids: torch.Tensor,
    tokenizer: Any,
    config: AnalyzeConfig | None = None,
    label_ids: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The whole routes analysis on token ids [n_seqs, seq_len]: a nested dict of numbers and tables.

    `label_ids` are the ids the tokenizer reads, when the model's own ids differ from them (the
    tiny MoE LM uses a reduced vocabulary); by default `ids`.
    """
    cfg = config or AnalyzeConfig()
    label_ids = ids if label_ids is None else label_ids
    if label_ids.shape != ids.shape:
        raise AnatomistError(f"label_ids {list(label_ids.shape)} must have the shape of ids {list(ids.shape)}")
    routing = collect_routing(model, ids, cfg.band)
    flat_ids = label_ids.reshape(-1).numpy()
    strings = _strings(tokenizer, flat_ids)
    tl = token_labels(label_ids, tokenizer, top_tokens=cfg.top_tokens, n_position_buckets=cfg.n_position_buckets)
    labels = {name: tl[name].values for name in LABELS}
    top1 = routing.top1
    n_experts = routing.layers[0].n_experts
    results: dict[str, Any] = {
        "layers": [lay.name for lay in routing.layers],
        "n_experts": n_experts,
        "router_rank": [len(router_basis(lay)) for lay in routing.layers],
        "d_model": routing.layers[0].d_model,
        "paths": path_stats(top1, n_experts),
        "top_paths": top_paths(top1, strings, n=cfg.n_top_paths),
        "token_path_diversity": token_path_diversity(top1, flat_ids, strings),
        "stability": stability(routing, cfg.seed),
        "probes": {
            lay.name: probe_layer(
                routing, i, {"token": labels["token"], "position": labels["position"]}, cfg.seed, cfg.probe_tokens
            )
            for i, lay in enumerate(routing.layers)
        },
        "monosemanticity": monosemanticity(routing, labels, cfg.max_clusters, cfg.seed),
    }
    return results


def _strings(tokenizer: Any, flat_ids: np.ndarray) -> list[str]:
    unique, inverse = np.unique(flat_ids, return_inverse=True)
    text = [tokenizer.decode([int(u)]) for u in unique]
    return [text[i] for i in inverse]


def summary(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an `analyze` result, averaged over the band's layers."""
    probes = results["probes"].values()
    out: dict[str, float] = {
        "n_paths": results["paths"]["n_paths"],
        "path_entropy_bits": results["paths"]["path_entropy_bits"],
        "top10_path_share": results["paths"]["top10_share"],
    }
    for key in ("control_cos", "control_cos_random_subspaces", "content_cos", "control_cos_shuffled"):
        if results["stability"]:  # a band of one layer has no consecutive pair
            out[f"stability_{key}"] = float(np.mean([s[key] for s in results["stability"]]))
    for target in ("token", "position", "expert", "next_expert"):
        for feat in FEATURES:
            accs = [p[target][feat]["accuracy"] for p in probes if target in p]
            out[f"probe_{target}_{feat}"] = float(np.mean(accs))
    mono = results["monosemanticity"]
    for lab in LABELS:  # share of each label's entropy a grouping explains beyond chance, layers averaged
        for prefix in ("expert@", "kmeansE_control@", "kmeansE_content@", "kmeansE_full@"):
            per_layer = [mono[g][lab]["mi_lift_frac"] for g in mono if g.startswith(prefix)]
            out[f"mono_{lab}_{prefix[:-1]}"] = float(np.mean(per_layer))
        for g in ("path", "kmeans_control", "kmeans_content", "kmeans_full"):
            out[f"mono_{lab}_{g}"] = mono[g][lab]["mi_lift_frac"]
    return out
