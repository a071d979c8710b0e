"""Lenses on a gridworld policy: does it represent where the goal is, where the proxy is, or both?

- **Linear probes** (Alain & Bengio 2016) on a hidden layer read through `anatomist.nets.sites`: from states with
  the agent placed on random squares of held-out test levels, a logistic regression predicts the first move of
  a shortest path to the goal (`goal_direction`) and to the proxy (`proxy_direction`). Accuracies are scored on
  held-out levels and only on states where the two directions differ (elsewhere a probe for one reads the
  other). Two controls: the same probe on shuffled labels, and on the same architecture untrained.
- **A goal vector** (Turner et al. 2023, *Understanding and controlling a maze-solving policy network*, their
  "cheese vector"): at a site, the activation on a level's first observation minus the activation with the goal
  removed from it. Subtracting it (times a coefficient) at every step while the agent plays that level should
  make the agent act as if there were no goal; the change in goal and proxy success says how much of the
  policy's goal-seeking runs through that direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from anatomist.agents.envs import GridWorld
from anatomist.agents.levels import Level, first_step, pick
from anatomist.agents.measure import Agent, like, play_levels, policy_agent, pursuit_targets, rates
from anatomist.nets.sites import Site, capture, splice

GOAL_CHANNEL = {"maze-cheese": "cheese", "coin-run-lite": "coin", "keys-chests": "chest"}


def probe_states(env: GridWorld, levels: list[Level], per_level: int, seed: int) -> dict[str, np.ndarray]:
    """Observations with the agent on random free squares, and the goal and proxy directions from each."""
    rng = np.random.default_rng(seed)
    batch = like(env, len(levels))
    batch.play(levels)
    obs, goal_dir, proxy_dir, level_ids = [], [], [], []
    for _ in range(per_level):
        for slot, level in enumerate(levels):
            batch.pos[slot] = pick(rng, ~level.walls & ~_occupied(level))
        frame = batch.observe()
        for slot in range(len(levels)):
            here = (int(batch.pos[slot, 0]), int(batch.pos[slot, 1]))
            pursuits = (pursuit_targets(batch, slot, "goal"), pursuit_targets(batch, slot, "proxy"))
            steps = [first_step(blocked, here, targets) for blocked, targets in pursuits]
            if None in steps:
                continue
            obs.append(frame[slot])
            goal_dir.append(steps[0])
            proxy_dir.append(steps[1])
            level_ids.append(slot)
    return {"obs": np.stack(obs), "goal_direction": np.array(goal_dir), "proxy_direction": np.array(proxy_dir),
            "level": np.array(level_ids)}


def _occupied(level: Level) -> np.ndarray:
    occupied = np.zeros_like(level.walls)
    for grid in level.objects.values():
        occupied |= grid
    return occupied


def activations(policy: nn.Module, obs: np.ndarray, site: str) -> np.ndarray:
    """The policy's activation at `site` on each observation, flattened: [n, features]."""
    value = capture(policy, torch.as_tensor(obs), site)[Site.parse(site)]
    return value.flatten(1).numpy()


def probe_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    """Held-out accuracy of a logistic-regression probe trained on the `train` rows."""
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(max_iter=500, C=1.0, random_state=seed)
    clf.fit(scaler.transform(x[train]), y[train])
    return float((clf.predict(scaler.transform(x[test])) == y[test]).mean())


def probe_report(policy: nn.Module, untrained: nn.Module, states: dict[str, np.ndarray], site: str,
                 seed: int = 0) -> dict[str, Any]:
    """Goal- and proxy-direction probe accuracies on held-out levels, with the shuffled and untrained controls.

    Scored on the held-out states whose goal and proxy directions differ; `chance` is the majority class there.
    """
    levels = states["level"]
    train = levels < np.quantile(levels, 0.7)
    test = ~train & (states["goal_direction"] != states["proxy_direction"])
    rng = np.random.default_rng(seed)
    x_trained, x_untrained = activations(policy, states["obs"], site), activations(untrained, states["obs"], site)
    out: dict[str, Any] = {"site": site, "train_states": int(train.sum()), "test_states": int(test.sum())}
    for label in ("goal_direction", "proxy_direction"):
        y = states[label]
        shuffled = y.copy()
        shuffled[train] = rng.permutation(y[train])
        out[label] = {"trained": probe_accuracy(x_trained, y, train, test, seed),
                      "shuffled_labels": probe_accuracy(x_trained, shuffled, train, test, seed),
                      "untrained_policy": probe_accuracy(x_untrained, y, train, test, seed),
                      "chance": float(np.bincount(y[test]).max() / max(1, test.sum()))}
    return out


def goal_vectors(policy: nn.Module, env: GridWorld, levels: list[Level], site: str) -> torch.Tensor:
    """Per level: activation at `site` on its first observation minus that with the goal taken out of it."""
    batch = like(env, len(levels))
    obs = batch.play(levels)
    without = obs.copy()
    without[:, env.channels.index(GOAL_CHANNEL[env.name])] = 0.0
    site_ = Site.parse(site)
    return capture(policy, torch.as_tensor(obs), site_)[site_] - capture(policy, torch.as_tensor(without), site_)[site_]


def steered_agent(policy: nn.Module, site: str, vectors: torch.Tensor, coefficient: float) -> Agent:
    """The policy with `coefficient` x its level's vector subtracted at `site` (slot i of the batch: level i)."""
    inner = policy_agent(policy, greedy=True)

    def agent(env: GridWorld, obs: np.ndarray) -> np.ndarray:
        with splice(policy, {site: lambda v: v - coefficient * vectors}):
            return inner(env, obs)

    return agent


def steering_report(policy: nn.Module, env: GridWorld, levels: list[Level], site: str,
                    coefficients: list[float]) -> dict[str, Any]:
    """Goal / proxy / misgeneralization rates (greedy actions) with the goal vector subtracted at each coefficient."""
    vectors = goal_vectors(policy, env, levels, site)
    out: dict[str, Any] = {"site": site, "vector_norm": float(vectors.flatten(1).norm(dim=1).mean())}
    for coef in coefficients:
        outcome = play_levels(env, levels, steered_agent(policy, site, vectors, coef))
        out[f"coef_{coef:g}"] = rates(outcome)
    return out
