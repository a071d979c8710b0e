"""Lenses on a gridworld policy: does it represent where the goal is, where the proxy is, or both?

- **Linear probes** (Alain & Bengio 2016) on a hidden layer read through `anatomist.nets.sites`: on states of
  held-out test levels, a logistic regression predicts the first move of a shortest path to the goal
  (`goal_direction`), to the proxy (`proxy_direction`), and the goal's quadrant of the level (`goal_quadrant`:
  where the cheese is, whatever the agent's square). The states are either *placed* (the agent put on random free
  squares: every part of the level, also where the policy never goes) or *rollout* (the squares the trained
  policy itself visits playing those levels: what it represents while it acts). Direction accuracies are scored
  on held-out levels and only on states where the two directions differ (elsewhere a probe for one reads the
  other), the quadrant on every held-out state. Two controls: the same probe on shuffled labels, and on the same
  architecture untrained.
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
from anatomist.core.errors import AnatomistError
from anatomist.nets.sites import Site, capture, splice

GOAL_CHANNEL = {"maze-cheese": "cheese", "coin-run-lite": "coin", "keys-chests": "chest"}


def probe_states(env: GridWorld, levels: list[Level], per_level: int, seed: int) -> dict[str, np.ndarray]:
    """Observations with the agent on random free squares, and the goal and proxy directions from each."""
    rng = np.random.default_rng(seed)
    batch = like(env, len(levels))
    batch.play(levels)
    rows: dict[str, list[Any]] = {"obs": [], "goal_direction": [], "proxy_direction": [], "level": []}
    for _ in range(per_level):
        for slot, level in enumerate(levels):
            batch.pos[slot] = pick(rng, ~level.walls & ~_occupied(level))
        frame = batch.observe()
        for slot in range(len(levels)):
            _add_state(rows, batch, frame, slot)
    return _stacked(rows)


def rollout_states(env: GridWorld, policy: nn.Module, levels: list[Level], seed: int) -> dict[str, np.ndarray]:
    """The observations the policy itself meets playing each level once (sampled actions), with their directions."""
    torch.manual_seed(seed)
    batch = like(env, len(levels))
    frame = batch.play(levels)
    agent = policy_agent(policy)
    rows: dict[str, list[Any]] = {"obs": [], "goal_direction": [], "proxy_direction": [], "level": []}
    while not batch.finished.all():
        for slot in np.nonzero(~batch.finished)[0]:
            _add_state(rows, batch, frame, int(slot))
        frame = batch.step(agent(batch, frame))[0]
    return _stacked(rows)


def _add_state(rows: dict[str, list[Any]], batch: GridWorld, frame: np.ndarray, slot: int) -> None:
    """Slot `slot`'s observation with its goal and proxy directions (skipped where either is unreachable)."""
    here = (int(batch.pos[slot, 0]), int(batch.pos[slot, 1]))
    pursuits = (pursuit_targets(batch, slot, "goal"), pursuit_targets(batch, slot, "proxy"))
    steps = [first_step(blocked, here, targets) for blocked, targets in pursuits]
    if None in steps:
        return
    for key, value in zip(rows, (frame[slot], steps[0], steps[1], slot), strict=True):
        rows[key].append(value)


def _stacked(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    if not rows["obs"]:
        raise AnatomistError("probe states: no state with both a goal and a proxy direction")
    return {key: np.stack(values) if key == "obs" else np.array(values) for key, values in rows.items()}


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
                 seed: int = 0, quadrants: np.ndarray | None = None) -> dict[str, Any]:
    """Goal- and proxy-direction probe accuracies on held-out levels, with the shuffled and untrained controls.

    Directions are scored on the held-out states whose goal and proxy directions differ, the goal's quadrant (when
    `quadrants`, one per level, is given) on every held-out state; `chance` is the majority class there.
    """
    levels = states["level"]
    train = levels < np.quantile(levels, 0.7)
    differ = ~train & (states["goal_direction"] != states["proxy_direction"])
    rng = np.random.default_rng(seed)
    x_trained, x_untrained = activations(policy, states["obs"], site), activations(untrained, states["obs"], site)
    out: dict[str, Any] = {"site": site, "train_states": int(train.sum()), "test_states": int(differ.sum())}
    labels = {name: (states[name], differ) for name in ("goal_direction", "proxy_direction")}
    if quadrants is not None:
        labels["goal_quadrant"] = (quadrants[levels], ~train)
    for label, (y, test) in labels.items():
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
