"""Plots of the goal-misgeneralization kinds: learning curves, the rand_frac curve, agents' paths on test levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from anatomist.agents.envs import GridWorld, render_frames
from anatomist.agents.levels import Level
from anatomist.agents.measure import like, policy_agent
from anatomist.runs.plots import pyplot, save_figure


def plot_learning_curve(curve: list[dict[str, float]], path: Path, title: str) -> None:
    """Mean episode return and goal rate on training levels against environment steps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [p["env_steps"] for p in curve if "mean_return" in p]
    for key in ("mean_return", "mean_goal"):
        ax.plot(steps, [p[key] for p in curve if "mean_return" in p], label=key.removeprefix("mean_"))
    ax.set(xlabel="environment steps", title=title)
    ax.legend()
    save_figure(fig, path, dpi=100)


def plot_misgeneralization(curve: dict[str, dict[str, float]], path: Path, env: str) -> None:
    """Misgeneralization, goal and capability rates (means over seeds, t intervals) against rand_frac."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    fracs = [row["rand_frac"] for row in curve.values()]
    for key in ("misgeneralized", "goal", "capable"):
        mean = np.array([row[f"{key}.mean"] for row in curve.values()])
        low = np.array([row[f"{key}.low"] for row in curve.values()])
        high = np.array([row[f"{key}.high"] for row in curve.values()])
        ax.errorbar(fracs, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=key)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set(xlabel="rand_frac (share of decorrelated training levels)", ylabel="rate on test levels",
           ylim=(-0.02, 1.02), title=f"{env}: goal misgeneralization")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def paths(env: GridWorld, policy: nn.Module, levels: list[Level]) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """The first observation of each level and the squares the policy visits (sampled actions)."""
    batch = like(env, len(levels))
    obs = batch.play(levels)
    first = obs.copy()
    visited = [[(int(r), int(c))] for r, c in batch.pos]
    agent = policy_agent(policy)
    while not batch.finished.all():
        active = ~batch.finished
        obs = batch.step(agent(batch, obs))[0]
        for slot in np.nonzero(active)[0]:
            visited[slot].append((int(batch.pos[slot, 0]), int(batch.pos[slot, 1])))
    return first, visited


def plot_trajectories(env: GridWorld, policy: nn.Module, levels: list[Level], path: Path) -> None:
    """A panel per test level: the level (goal in yellow, proxy squares outlined red) and the agent's path."""
    first, visited = paths(env, policy, levels)
    frames = render_frames(first, env.channels)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(levels), figsize=(2.2 * len(levels), 2.4), squeeze=False)
    for ax, frame, route, level in zip(axes[0], frames, visited, levels, strict=True):
        ax.imshow(frame, interpolation="nearest")
        if level.proxy is not None:
            rows, cols = np.nonzero(level.proxy)
            ax.scatter(cols, rows, marker="s", s=60, facecolors="none", edgecolors="red")
        ys, xs = zip(*route, strict=True)
        ax.plot(xs, ys, color="tab:blue", linewidth=1.5, alpha=0.8)
        ax.set(xticks=[], yticks=[], title=f"level {level.seed}", )
        ax.title.set_fontsize(7)
    save_figure(fig, path, dpi=100)
