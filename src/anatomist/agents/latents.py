"""Unsupervised lenses on a gridworld policy: an SAE's latents and the polytope lens's region codes.

The probes of `anatomist.agents.lenses` are told what to look for; these two lenses are not, and the question is
whether what they find lines up with the goal (where the cheese is, which way it lies) or with the proxy (which
way the corner lies). Both read the policy's `hidden` ReLU layer on the probe states (the agent on random free
squares of held-out test levels), split by level into 70% selection / 30% scoring states.

- **SAE** (Bricken et al. 2023, *Towards Monosemanticity*; TopK as Gao et al. 2024): a small TopK SAE is fitted
  to the hidden activations (`anatomist.dictionaries.fit.fit_rows`). For each label family (the goal's quadrant
  of the level, the goal's direction, the proxy's direction) and each of its classes c, the latent with the best
  AUC for "label == c" on the selection states is scored by its AUC on the scoring states; the family's number
  is the mean over classes. Picking the best of many latents finds some signal in noise, so the same selection
  on shuffled labels is the chance level, and the raw hidden units (the neuron basis) and an SAE on the
  untrained policy are the baselines. Direction families are scored only on states where goal and proxy
  directions differ.
- **Polytope lens** (Black et al. 2022, *Interpreting Neural Networks through the Polytope Lens*): the binary
  spline code of `hidden` (which units are on) is clustered with k-medoids under Hamming distance
  (`anatomist.regions`), and the clusters are scored against each label family (purity over its chance level
  and NMI), on the trained and on the untrained policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from torch import nn

from anatomist.agents.envs import GridWorld
from anatomist.agents.lenses import activations
from anatomist.agents.levels import Level
from anatomist.core.errors import AnatomistError
from anatomist.dictionaries.fit import fit_rows
from anatomist.features.base import SAEConfig
from anatomist.regions.cluster import cluster, score_clusters
from anatomist.regions.codes import spline_codes

FAMILIES = ("goal_quadrant", "goal_direction", "proxy_direction")
DIRECTION_FAMILIES = ("goal_direction", "proxy_direction")


def goal_quadrants(env: GridWorld, levels: list[Level]) -> np.ndarray:
    """Per level, the quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of its goal's centre."""
    out = []
    for level in levels:
        rows, cols = np.nonzero(env.goal_squares(level))
        if len(rows) == 0:
            raise AnatomistError("goal_quadrants: a level has no goal square")
        h, w = level.shape
        out.append(2 * int(rows.mean() >= (h - 1) / 2) + int(cols.mean() >= (w - 1) / 2))
    return np.array(out)


def state_labels(states: dict[str, np.ndarray], quadrants: np.ndarray) -> dict[str, np.ndarray]:
    """Each probe state's label in every family."""
    return {"goal_quadrant": quadrants[states["level"]], "goal_direction": states["goal_direction"],
            "proxy_direction": states["proxy_direction"]}


def split_by_level(states: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(selection, scoring) masks: the first 70% of levels select, the rest score (as the probes split)."""
    select = states["level"] < np.quantile(states["level"], 0.7)
    return select, ~select


def best_latent_auc(codes: np.ndarray, y: np.ndarray, select: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Mean over classes c of y: the scoring-state AUC for "y == c" of the latent that was best on selection states.

    A class absent from either side's positives or negatives is skipped (its AUC is undefined).
    """
    aucs, picked = [], []
    for c in np.unique(y):
        target = y == c
        if not _both_classes(target[select]) or not _both_classes(target[score]):
            continue
        best = int(np.argmax(_aucs(codes[select], target[select])))
        aucs.append(float(roc_auc_score(target[score], codes[score, best])))
        picked.append(best)
    if not aucs:
        raise AnatomistError("best_latent_auc: no class has positives and negatives on both sides of the split")
    return {"auc": float(np.mean(aucs)), "classes": len(aucs), "distinct_latents": len(set(picked))}


def _both_classes(target: np.ndarray) -> bool:
    return bool(target.any() and (~target).any())


def _aucs(codes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Every column's AUC for `target` at once, by Mann-Whitney U on tied-average ranks (a constant column: 0.5)."""
    ranks = rankdata(codes, axis=0)
    n_pos, n_neg = int(target.sum()), int((~target).sum())
    return (ranks[target].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def family_aucs(codes: np.ndarray, labels: dict[str, np.ndarray], select: np.ndarray, score: np.ndarray,
                rng: np.random.Generator) -> dict[str, Any]:
    """Per family: the best latent's AUC, and the same on labels shuffled across states (chance of the selection).

    None where no class of the family has positives and negatives among both the selection and scoring states.
    """
    out: dict[str, Any] = {}
    for family, y in labels.items():
        keep = _scored(family, labels)
        shuffled = rng.permutation(y)
        out[family] = {"auc": _auc_or_none(codes, y, select, score & keep),
                       "shuffled_labels": _auc_or_none(codes, shuffled, select, score & keep)}
    return out


def _auc_or_none(codes: np.ndarray, y: np.ndarray, select: np.ndarray, score: np.ndarray) -> float | None:
    """None where too few states leave no class scorable (a handful of levels), rather than failing the run."""
    try:
        return best_latent_auc(codes, y, select, score)["auc"]
    except AnatomistError:
        return None


def _scored(family: str, labels: dict[str, np.ndarray]) -> np.ndarray:
    """Direction families are scored where goal and proxy directions differ (elsewhere one reads the other)."""
    if family in DIRECTION_FAMILIES:
        return labels["goal_direction"] != labels["proxy_direction"]
    return np.ones_like(labels["goal_direction"], dtype=bool)


def fit_policy_sae(rows: np.ndarray, d_sae: int, k: int, steps: int, seed: int) -> np.ndarray:
    """A TopK SAE fitted to `rows` [n, d]; returns its latent codes on the same rows [n, d_sae]."""
    x = torch.as_tensor(rows, dtype=torch.float32)
    cfg = SAEConfig.parse({"arch": "topk", "d_in": x.shape[1], "d_sae": d_sae, "k": k})
    sae = fit_rows(x, cfg, steps=steps, batch_size=min(256, len(x)), seed=seed)
    with torch.no_grad():
        return sae.encode(x).numpy()


def sae_report(policy: nn.Module, untrained: nn.Module, states: dict[str, np.ndarray], quadrants: np.ndarray,
               site: str, d_sae: int, k: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """Best-latent AUCs per family for the SAE on the trained policy, the raw units, and the untrained policy's SAE."""
    labels = state_labels(states, quadrants)
    select, score = split_by_level(states)
    trained_rows, untrained_rows = (activations(p, states["obs"], site) for p in (policy, untrained))
    sae_codes = fit_policy_sae(trained_rows, d_sae, k, steps, seed)
    alive = float((sae_codes > 0).any(0).mean())
    return {"site": site, "d_sae": d_sae, "k": k, "alive_latents": alive,
            "sae": family_aucs(sae_codes, labels, select, score, np.random.default_rng(seed)),
            "neurons": family_aucs(trained_rows, labels, select, score, np.random.default_rng(seed)),
            "untrained_sae": family_aucs(fit_policy_sae(untrained_rows, d_sae, k, steps, seed), labels, select,
                                         score, np.random.default_rng(seed))}


def region_scores(policy: nn.Module, obs: np.ndarray, labels: dict[str, np.ndarray], site: str, k: int,
                  seed: int) -> dict[str, Any]:
    """k-medoids clusters of the spline codes at `site`, scored against each family (purity, chance, NMI)."""
    codes = spline_codes(policy, torch.as_tensor(obs), [site])
    clusters = cluster(codes, k, "hamming", seed=seed)
    out: dict[str, Any] = {"distinct_codes": int(len(np.unique(codes.bits, axis=0)))}
    for family, y in labels.items():
        y_scored = np.where(_scored(family, labels), y, -1)
        out[family] = score_clusters(clusters.assignment, y_scored, seed=seed)
    return out


def polytope_report(policy: nn.Module, untrained: nn.Module, states: dict[str, np.ndarray], quadrants: np.ndarray,
                    site: str, k: int, seed: int = 0) -> dict[str, Any]:
    """Region-code clusters against goal and proxy labels, on the trained and the untrained policy."""
    labels = state_labels(states, quadrants)
    return {"site": site, "k": k,
            "trained": region_scores(policy, states["obs"], labels, site, k, seed),
            "untrained": region_scores(untrained, states["obs"], labels, site, k, seed)}
