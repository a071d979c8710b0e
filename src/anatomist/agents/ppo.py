"""PPO (Schulman et al. 2017, *Proximal Policy Optimization Algorithms*) for the gridworld agents.

A small convolutional actor-critic (`GridPolicy`) is trained on a batch of environments: each update collects
`n_steps` steps from every environment, computes advantages with GAE (Schulman et al. 2016, λ-returns), and takes
`epochs` passes of minibatch Adam steps on the clipped surrogate objective plus a value loss and an entropy bonus,
with global gradient-norm clipping. Advantages are normalised per minibatch.

The policy's modules are named so that `anatomist.nets.sites` can read and patch them: `relu1`, `relu2` (the
conv feature maps, [B, C, H, W]) and `hidden` (the ReLU layer before the heads, [B, hidden]).

Training checkpoints (`anatomist.core.checkpoint`) after every `checkpoint_every` updates with the optimizer,
the RNG state, the learning curve and the level stream's position; a resumed run continues from there on fresh
levels (the episodes in flight at the checkpoint are not saved).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from anatomist.agents.envs import GridWorld
from anatomist.core.checkpoint import Checkpointer
from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.core.progress import TrainingLog


class PPOConfig(Config):
    """PPO's settings (defaults: a demo-size agent trained in a few minutes on one core)."""

    env_steps: int = Field(100_000, gt=0, description="environment steps in all (over every environment)")
    num_envs: int = Field(64, gt=0, description="environments stepped together")
    n_steps: int = Field(64, gt=0, description="steps per environment per update (rollout length)")
    epochs: int = Field(2, gt=0, description="passes over each rollout")
    minibatches: int = Field(4, gt=0, description="minibatches per pass")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate (decayed linearly to 0)")
    gamma: float = Field(0.97, gt=0, le=1, description="discount")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE λ")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip ε")
    value_coef: float = Field(0.5, ge=0, description="weight of the value loss")
    entropy_coef: float = Field(0.01, ge=0, description="weight of the entropy bonus")
    max_grad_norm: float = Field(0.5, gt=0, description="global gradient-norm clip")
    hidden: int = Field(64, gt=0, description="width of the hidden ReLU layer")
    conv: tuple[int, int] = Field((8, 8), description="channels of the two 3x3 conv layers")
    checkpoint_every: int = Field(20, gt=0, description="updates between checkpoints")

    @property
    def updates(self) -> int:
        return max(1, self.env_steps // (self.num_envs * self.n_steps))


class GridPolicy(nn.Module):
    """Actor-critic over whole-level one-hot grids: conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> linear -> ReLU -> heads."""

    def __init__(self, channels: int, height: int, width: int, actions: int = 4, hidden: int = 64,
                 conv: tuple[int, int] = (8, 8)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, conv[0], 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(conv[0], conv[1], 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(conv[1] * height * width, hidden)
        self.hidden = nn.ReLU()
        self.policy = nn.Linear(hidden, actions)
        self.value = nn.Linear(hidden, 1)
        gains: list[tuple[nn.Conv2d | nn.Linear, float]] = [
            (self.conv1, math.sqrt(2)), (self.conv2, math.sqrt(2)), (self.fc, math.sqrt(2)),
            (self.policy, 0.01), (self.value, 1.0)]  # a near-uniform first policy
        for layer, gain in gains:
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action logits [B, A], values [B])."""
        x = self.relu2(self.conv2(self.relu1(self.conv1(obs))))
        h = self.hidden(self.fc(x.flatten(1)))
        return self.policy(h), self.value(h).squeeze(-1)


def policy_for(env: GridWorld, cfg: PPOConfig) -> GridPolicy:
    c, h, w = env.single_observation_space.shape  # type: ignore[misc]
    return GridPolicy(c, h, w, int(env.single_action_space.n), cfg.hidden, cfg.conv)  # type: ignore[attr-defined]


@dataclass
class Rollout:
    obs: torch.Tensor  # [T, N, C, H, W]
    actions: torch.Tensor  # [T, N]
    logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor  # the episode ended at this step
    last_value: torch.Tensor  # [N]


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns ([T, N] each); no bootstrapping across an episode's end.

    A truncated episode (time limit) is treated as ended too: the agent sees no clock, and its levels are short.
    """
    steps = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * lam * alive * running
        adv[t] = running
    return adv, adv + values


def act(policy: nn.Module, obs: np.ndarray, greedy: bool = False) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Actions (sampled, or the most likely with `greedy`), their log-probabilities and the values."""
    with torch.no_grad():
        logits, value = policy(torch.as_tensor(obs))
    dist = torch.distributions.Categorical(logits=logits)
    action = logits.argmax(-1) if greedy else dist.sample()
    return action.numpy(), dist.log_prob(action), value


def collect(env: GridWorld, policy: GridPolicy, obs: np.ndarray, n_steps: int,
            episodes: list[dict[str, float]]) -> tuple[Rollout, np.ndarray]:
    """`n_steps` steps of every environment; finished episodes' outcomes are appended to `episodes`."""
    keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "dones")}
    for _ in range(n_steps):
        action, logp, value = act(policy, obs)
        next_obs, reward, term, trunc, info = env.step(action)
        for k, v in zip(keep, (torch.as_tensor(obs), torch.as_tensor(action), logp, value,
                               torch.as_tensor(reward), torch.as_tensor(term | trunc, dtype=torch.float32)),
                        strict=True):
            keep[k].append(v)
        for i in np.nonzero(info["_episode"])[0]:
            episodes.append({"return": float(info["return"][i]), "length": float(info["length"][i]),
                             "goal": float(info["goal"][i])})
        obs = next_obs
    with torch.no_grad():
        last_value = policy(torch.as_tensor(obs))[1]
    stacked = {k: torch.stack(v) for k, v in keep.items()}
    return Rollout(**stacked, last_value=last_value), obs


def ppo_loss(policy: GridPolicy, cfg: PPOConfig, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
             adv: torch.Tensor, returns: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + value loss - entropy bonus on one minibatch; returns (loss, its terms)."""
    logits, values = policy(obs)
    dist = torch.distributions.Categorical(logits=logits)
    ratio = (dist.log_prob(actions) - old_logp).exp()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
    value_loss = 0.5 * (values - returns).pow(2).mean()
    entropy = dist.entropy().mean()
    loss = -surrogate + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    clipped = ((ratio - 1).abs() > cfg.clip).float().mean()
    terms = {"policy_loss": -surrogate, "value_loss": value_loss, "entropy": entropy, "clip_frac": clipped}
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def update(policy: GridPolicy, optimizer: torch.optim.Optimizer, cfg: PPOConfig, roll: Rollout) -> dict[str, float]:
    """`epochs` passes of minibatch steps over one rollout; returns the last pass's mean terms."""
    adv, returns = gae(roll.rewards, roll.values, roll.dones, roll.last_value, cfg.gamma, cfg.gae_lambda)
    flat = [t.flatten(0, 1) for t in (roll.obs, roll.actions, roll.logp, adv, returns)]
    n = flat[0].shape[0]
    size = max(1, n // cfg.minibatches)
    terms: dict[str, float] = {}
    for _ in range(cfg.epochs):
        order = torch.randperm(n)
        terms = {}
        for start in range(0, n - size + 1, size):
            idx = order[start:start + size]
            loss, parts = ppo_loss(policy, cfg, *(t[idx] for t in flat))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v * size / n
    return terms


def curve_point(episodes: list[dict[str, float]]) -> dict[str, float]:
    """Mean return, length and goal rate of the episodes that finished during one update."""
    if not episodes:
        return {"episodes": 0.0}
    return {"episodes": float(len(episodes)), **{f"mean_{k}": float(np.mean([e[k] for e in episodes]))
                                                 for k in ("return", "length", "goal")}}


def train_ppo(env: GridWorld, cfg: PPOConfig, seed: int, run_dir: str | Path | None = None, resume: bool = False,
              desc: str = "ppo") -> tuple[GridPolicy, list[dict[str, float]]]:
    """Train a `GridPolicy` on `env` with PPO; returns it and the learning curve (a point per update).

    With `run_dir`, checkpoints go to `run_dir/checkpoints` and progress lines to `run_dir/metrics.jsonl`;
    `resume` continues from the newest checkpoint.
    """
    torch.manual_seed(seed)
    policy = policy_for(env, cfg)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    ckpt = Checkpointer(run_dir) if run_dir is not None else None
    start, curve = 0, []
    if ckpt is not None:
        ckpt.prepare(resume)
        if resume and ckpt.latest() is not None:
            state = ckpt.load(policy, optimizer, max_step=cfg.updates)
            start, curve = state["step"], state["extra"]["curve"]
            env.next_level = state["extra"]["next_level"]
    obs, _ = env.reset()  # the environment's own level stream, from where a resumed run left it
    log = TrainingLog(run_dir, desc, cfg.updates, start)
    for step in range(start, cfg.updates):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * (1 - step / cfg.updates)
        episodes: list[dict[str, float]] = []
        roll, obs = collect(env, policy, obs, cfg.n_steps, episodes)
        terms = update(policy, optimizer, cfg, roll)
        point = {"env_steps": float((step + 1) * cfg.num_envs * cfg.n_steps), **curve_point(episodes), **terms}
        if not all(math.isfinite(v) for v in terms.values()):
            raise AnatomistError(f"{desc}: PPO loss not finite at update {step + 1} ({terms})")
        curve.append(point)
        log.step(step + 1, point)
        done = step + 1
        if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.updates):
            ckpt.save(done, policy, optimizer, extra={"curve": curve, "next_level": env.next_level})
    return policy, curve
