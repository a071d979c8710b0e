"""Run kinds of goal misgeneralization in deep RL (Langosco et al. 2022), over `anatomist.agents`.

- `agent-train`: PPO on one gridworld at one `rand_frac` and seed (checkpointed, resumable), then the agent on
  held-out decisive test levels: capability, goal, proxy and misgeneralization rates with Wilson intervals, the
  same on training-distribution levels (keys-chests also: superfluous keys and share of chests opened per level),
  and the scripted goal- and proxy-seekers and a seeded random agent beside it. Writes
  `policy.safetensors`, `learning_curve.png` and `trajectories.png`.
- `goal-misgen`: a grid of `agent-train` runs over `rand_fracs` x `seeds` (a stopped grid continues: finished
  cells are read back, unfinished ones resume), each rate's mean over seeds with a t interval, and the curve of
  misgeneralization against rand_frac (`misgeneralization.png`).
- `agent-lens`: an agent (trained in `<out>/agent`, or continued there) under the lenses, on placed states (the
  agent on random squares) or on the agent's own rollouts: linear probes for the goal's and the proxy's direction
  and the goal's quadrant with shuffled-label and untrained-policy controls, the goal vector
  subtracted at a conv layer (steering), a TopK SAE's best latents and the polytope lens's region clusters
  against goal and proxy labels (`anatomist.agents.latents`).

Each run writes a `report.html` (`anatomist.report.agents`) beside its metrics and PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from anatomist.agents.envs import GridWorld, held_out_levels, make_env
from anatomist.agents.latents import goal_quadrants, polytope_report, sae_report
from anatomist.agents.lenses import probe_report, probe_states, rollout_states, steering_report
from anatomist.agents.levels import Level
from anatomist.agents.measure import (
    MEANS,
    Agent,
    over_seeds,
    play_levels,
    policy_agent,
    random_agent,
    rates,
    scripted_agent,
)
from anatomist.agents.ppo import GridPolicy, PPOConfig, policy_for, train_ppo
from anatomist.core.config import read_yaml_mapping
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors, save_tensors
from anatomist.core.metrics import METRICS
from anatomist.core.provenance import model_record
from anatomist.report.agents import PAGE, write_agent_page, write_grid_page
from anatomist.runs.base import CONFIG, Context, Outcome, RunConfig, register, run_or_continue
from anatomist.runs.plots.agents import plot_learning_curve, plot_misgeneralization, plot_trajectories

EnvName = Literal["maze-cheese", "coin-run-lite", "keys-chests"]
POLICY = "policy.safetensors"
HELD_OUT_TRAIN_STREAM = 999_999  # training-distribution evaluation levels come from a stream no run trains on

# --- agent-train ---------------------------------------------------------------------------------


class AgentTrainConfig(RunConfig):
    """Train a PPO agent on a goal-misgeneralization gridworld and measure it on held-out test levels."""

    kind: Literal["agent-train"] = "agent-train"
    env: EnvName = Field("maze-cheese", description="the gridworld")
    env_params: dict[str, Any] = Field(default_factory=dict, description=(
        "the environment's own parameters: maze-cheese size, region, openness; coin-run-lite length, height; "
        "keys-chests size, train_counts, test_counts, inner_walls"))
    rand_frac: float = Field(0.0, ge=0, le=1, description="share of training levels drawn from the test distribution")
    seed: int = Field(0, description="seed of the network, the sampling and the training level stream")
    ppo: PPOConfig = Field(PPOConfig.parse({}), description="PPO settings")
    test_levels: int = Field(300, gt=0, description="held-out (decisive) test levels, each played once")
    test_seed: int = Field(0, description="stream of the test levels (the same for every agent of a comparison)")
    scripted: bool = Field(True, description="also play the scripted goal- and proxy-seekers and a random agent on "
                                             "the test levels")

    smoke: ClassVar[tuple[str, ...]] = ("ppo.env_steps=512", "ppo.num_envs=8", "ppo.n_steps=16", "test_levels=12")
    resumable_changes: ClassVar[frozenset[str]] = frozenset({"test_levels", "scripted"})


def make_run_env(cfg: AgentTrainConfig, num_envs: int) -> GridWorld:
    return make_env(cfg.env, num_envs, cfg.rand_frac, seed=cfg.seed, **cfg.env_params)


def measure(env: GridWorld, policy: GridPolicy, levels: list[Level]) -> dict[str, Any]:
    return rates(play_levels(env, levels, policy_agent(policy)))


@register(AgentTrainConfig, trains=True)
def agent_train(cfg: AgentTrainConfig, ctx: Context) -> Outcome:
    env = make_run_env(cfg, cfg.ppo.num_envs)
    policy, curve = train_ppo(env, cfg.ppo, cfg.seed, ctx.out, ctx.resume, desc=f"{cfg.env} rf={cfg.rand_frac:g}")
    save_tensors(ctx.out / POLICY, policy.state_dict())
    torch.manual_seed(cfg.seed)  # the evaluation's sampled actions, the same on a rerun
    held_out = held_out_levels(env, cfg.test_levels, cfg.test_seed)
    train_like = [env.make_level("train", HELD_OUT_TRAIN_STREAM * 1_000_000 + k) for k in range(cfg.test_levels)]
    test, train = measure(env, policy, held_out), measure(env, policy, train_like)
    metrics: dict[str, Any] = {"test": test, "train_distribution": train,
                               "learning_curve": {str(i + 1): p for i, p in enumerate(curve)}}
    if cfg.scripted:
        players: dict[str, Agent] = {"goal": scripted_agent("goal"), "proxy": scripted_agent("proxy"),
                                     "random": random_agent(cfg.seed)}
        metrics["scripted"] = {who: _scripted_row(env, held_out, agent) for who, agent in players.items()}
    plot_learning_curve(curve, ctx.out / "learning_curve.png", f"{cfg.env}, rand_frac {cfg.rand_frac:g}")
    plot_trajectories(env, policy, held_out[:6], ctx.out / "trajectories.png")
    write_agent_page(ctx.out, ctx.out, metrics, _agent_title(cfg))
    summary = (f"{cfg.env} rand_frac {cfg.rand_frac:g} seed {cfg.seed}: on {cfg.test_levels} test levels capable "
               f"{test['capable']['rate']:.2f}, goal {test['goal']['rate']:.2f}, misgeneralized "
               f"{test['misgeneralized']['rate']:.2f}; goal {train['goal']['rate']:.2f} on training levels")
    return Outcome(metrics, summary, models=[model_record(f"{cfg.env} PPO policy", policy)],
                   access=["weights", "training_data"], value=policy)


def _agent_title(cfg: AgentTrainConfig) -> str:
    return f"{cfg.env} agent, rand_frac {cfg.rand_frac:g}, seed {cfg.seed}"


def _scripted_row(env: GridWorld, levels: list[Level], agent: Agent) -> dict[str, float]:
    r = rates(play_levels(env, levels, agent))
    return {**{k: r[k]["rate"] for k in ("capable", "goal", "proxy", "misgeneralized")},
            **{k: r[k] for k in MEANS if k in r}}


def load_agent(folder: str | Path) -> tuple[AgentTrainConfig, GridWorld, GridPolicy]:
    """An `agent-train` run folder's config, an environment like its own, and its trained policy."""
    folder = Path(folder)
    if not (folder / POLICY).is_file():
        raise AnatomistError(f"{folder}: no {POLICY}; is it a finished agent-train run?")
    cfg = AgentTrainConfig.parse(read_yaml_mapping(folder / CONFIG), source=str(folder / CONFIG))
    env = make_run_env(cfg, 1)
    policy = policy_for(env, cfg.ppo)
    policy.load_state_dict(load_tensors(folder / POLICY))
    return cfg, env, policy.eval()


# --- goal-misgen ---------------------------------------------------------------------------------


class GoalMisgenConfig(RunConfig):
    """Agents over a grid of rand_frac x seeds: misgeneralization against rand_frac, with intervals."""

    kind: Literal["goal-misgen"] = "goal-misgen"
    agent: AgentTrainConfig = Field(AgentTrainConfig.parse({}), description="every cell's config (rand_frac, seed "
                                                                             "set per cell)")
    rand_fracs: list[float] = Field([0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0], min_length=1,
                                    description="shares of decorrelated training levels")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds per rand_frac")

    smoke: ClassVar[tuple[str, ...]] = ("rand_fracs=[0.0, 1.0]", "seeds=[0]", "agent.ppo.env_steps=512",
                                        "agent.ppo.num_envs=8", "agent.ppo.n_steps=16", "agent.test_levels=12",
                                        "agent.scripted=false")


def cell_config(cfg: GoalMisgenConfig, rand_frac: float, seed: int) -> AgentTrainConfig:
    return cfg.agent.replace(rand_frac=rand_frac, seed=seed)


def finished_metrics(config: RunConfig, folder: Path) -> dict[str, Any] | None:
    """The test rates of a cell that already finished with this exact config (None: run or continue it)."""
    if not (folder / METRICS).is_file() or read_yaml_mapping(folder / CONFIG) != config.model_dump(mode="json"):
        return None
    return _test_rates(load_json(folder / METRICS)["numbers"])


def _test_rates(numbers: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's flat `test.<outcome>.rate` numbers back into the nested shape `over_seeds` reads."""
    keys = ("capable", "goal", "proxy", "misgeneralized", "misgeneralized_given_capable")
    means = {k: numbers[f"test.{k}"] for k in MEANS if f"test.{k}" in numbers}  # absent in cells run before them
    return {"levels": numbers["test.levels"], **{k: {"rate": numbers[f"test.{k}.rate"]} for k in keys}, **means}


def cell_rates(cfg: GoalMisgenConfig, rand_frac: float, seed: int, folder: Path) -> dict[str, Any]:
    config = cell_config(cfg, rand_frac, seed)
    reused = finished_metrics(config, folder)
    if reused is not None:
        if not (folder / PAGE).is_file():  # a cell finished before runs wrote pages
            write_agent_page(folder, folder, load_json(folder / METRICS)["numbers"], _agent_title(config))
        return reused
    result = run_or_continue(config, folder, threads=1)
    return _test_rates(result.metrics.numbers)


@register(GoalMisgenConfig, composite=True)
def goal_misgen(cfg: GoalMisgenConfig, ctx: Context) -> Outcome:
    curve: dict[str, Any] = {}
    for frac in cfg.rand_fracs:
        per_seed = [cell_rates(cfg, frac, s, ctx.out / f"rf{frac:g}_s{s}") for s in cfg.seeds]
        curve[f"{frac:g}"] = {"rand_frac": frac, **_flat(over_seeds(per_seed))}
    plot_misgeneralization(curve, ctx.out / "misgeneralization.png", cfg.agent.env)
    (ctx.out / "curve.json").write_text(json.dumps(curve, indent=1))
    cells = [f"rf{frac:g}_s{s}" for frac in cfg.rand_fracs for s in cfg.seeds]
    write_grid_page(ctx.out, curve, cells, f"{cfg.agent.env}: goal misgeneralization against rand_frac")
    first, last = curve[f"{cfg.rand_fracs[0]:g}"], curve[f"{cfg.rand_fracs[-1]:g}"]
    summary = (f"{cfg.agent.env}, {len(cfg.seeds)} seeds: misgeneralized {first['misgeneralized.mean']:.2f} at "
               f"rand_frac {cfg.rand_fracs[0]:g} -> {last['misgeneralized.mean']:.2f} at {cfg.rand_fracs[-1]:g} "
               f"(goal {first['goal.mean']:.2f} -> {last['goal.mean']:.2f})")
    return Outcome({"by_rand_frac": curve, "seeds": len(cfg.seeds)}, summary, access=["weights", "training_data"])


def _flat(seeded: dict[str, Any]) -> dict[str, float]:
    """{'goal': {'mean', 'low', 'high'}} -> {'goal.mean', ...}: one table row per rand_frac."""
    out: dict[str, float] = {}
    for key, value in seeded.items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in value.items() if k != "n_seeds"}
    return out


# --- agent-lens ----------------------------------------------------------------------------------


class AgentLensConfig(RunConfig):
    """Probes (goal vs proxy direction, with controls) and goal-vector steering on a trained gridworld agent."""

    kind: Literal["agent-lens"] = "agent-lens"
    agent: AgentTrainConfig = Field(AgentTrainConfig.parse({"rand_frac": 1.0}),
                                    description="the agent, trained into <out>/agent (continued if there)")
    agent_run: str | None = Field(None, description="a finished agent-train run folder to study instead of training "
                                  "`agent` (e.g. a cell of a goal-misgen grid)")
    probe_site: str = Field("hidden", description="policy site the probes read (hidden, relu2, relu1)")
    probe_levels: int = Field(150, gt=1, description="test levels the probe states come from (70% train, 30% test)")
    states: Literal["placed", "rollout"] = Field("placed", description=(
        "probe states: the agent placed on random free squares, or the squares the trained policy itself visits "
        "playing the probe levels (sampled actions)"))
    states_per_level: int = Field(8, gt=0, description="random agent squares per probe level (placed states)")
    steer_site: str = Field("relu2", description="policy site where the goal vector is subtracted")
    steer_levels: int = Field(300, gt=0, description="test levels played with and without steering")
    coefficients: list[float] = Field([0.0, 1.0, 2.0], min_length=1, description="multiples of the goal vector "
                                                                                 "subtracted (0: unsteered)")
    sae_latents: int = Field(128, gt=0, description="latents of the TopK SAE fitted to the probe site")
    sae_k: int = Field(8, gt=0, description="active latents per state of that SAE")
    sae_steps: int = Field(1000, gt=0, description="Adam steps fitting the SAE")
    regions: int = Field(16, gt=1, description="k-medoids clusters of the probe site's spline codes")
    seed: int = Field(0, description="seed of the probe states, the untrained control and the sampled actions")

    smoke: ClassVar[tuple[str, ...]] = ("agent.ppo.env_steps=512", "agent.ppo.num_envs=8", "agent.ppo.n_steps=16",
                                        "agent.test_levels=12", "agent.scripted=false", "probe_levels=20",
                                        "states_per_level=4", "steer_levels=10", "sae_latents=16", "sae_k=2",
                                        "sae_steps=20", "regions=4")


@register(AgentLensConfig, composite=True)
def agent_lens(cfg: AgentLensConfig, ctx: Context) -> Outcome:
    folder = Path(cfg.agent_run).expanduser() if cfg.agent_run else ctx.out / "agent"
    if cfg.agent_run is None:
        run_or_continue(cfg.agent, folder, threads=1)
    agent_cfg, env, policy = load_agent(folder)
    torch.manual_seed(cfg.seed)
    untrained = policy_for(env, agent_cfg.ppo).eval()
    levels = held_out_levels(env, max(cfg.probe_levels, cfg.steer_levels), agent_cfg.test_seed)
    probed = levels[: cfg.probe_levels]
    states = (rollout_states(env, policy, probed, cfg.seed) if cfg.states == "rollout"
              else probe_states(env, probed, cfg.states_per_level, cfg.seed))
    quadrants = goal_quadrants(env, probed)
    probes = probe_report(policy, untrained, states, cfg.probe_site, cfg.seed, quadrants)
    steering = steering_report(policy, env, levels[: cfg.steer_levels], cfg.steer_site, cfg.coefficients)
    sae = sae_report(policy, untrained, states, quadrants, cfg.probe_site, cfg.sae_latents, cfg.sae_k,
                     cfg.sae_steps, cfg.seed)
    polytope = polytope_report(policy, untrained, states, quadrants, cfg.probe_site, cfg.regions, cfg.seed)
    base, most = steering[f"coef_{cfg.coefficients[0]:g}"], steering[f"coef_{cfg.coefficients[-1]:g}"]
    g, p, q = probes["goal_direction"], probes["proxy_direction"], probes["goal_quadrant"]
    summary = (f"{agent_cfg.env} agent (rand_frac {agent_cfg.rand_frac:g}): probe at {cfg.probe_site} reads the goal "
               f"direction {g['trained']:.2f} (untrained {g['untrained_policy']:.2f}, shuffled "
               f"{g['shuffled_labels']:.2f}), the proxy direction {p['trained']:.2f} (untrained "
               f"{p['untrained_policy']:.2f}), the goal's quadrant {q['trained']:.2f} (shuffled "
               f"{q['shuffled_labels']:.2f}) on {len(states['obs'])} {cfg.states} states; goal vector "
               f"x{cfg.coefficients[-1]:g} at {cfg.steer_site}: goal "
               f"{base['goal']['rate']:.2f} -> {most['goal']['rate']:.2f}, proxy {base['proxy']['rate']:.2f} -> "
               f"{most['proxy']['rate']:.2f}; {_latent_summary(sae, polytope)}")
    lenses = {"probes": probes, "steering": steering, "sae": sae, "polytope": polytope}
    write_agent_page(ctx.out, folder, load_json(folder / METRICS)["numbers"], f"{_agent_title(agent_cfg)}: lenses",
                     lenses)
    return Outcome({**lenses, "states": int(len(states["obs"]))}, summary,
                   models=[model_record(str(folder / POLICY), policy)], access=["weights", "activations"],
                   value=lenses)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _latent_summary(sae: dict[str, Any], polytope: dict[str, Any]) -> str:
    """Best SAE latent AUC and region purity (over chance) for the goal's and the proxy's direction."""
    parts = []
    for family in ("goal_direction", "proxy_direction"):
        auc, regions = sae["sae"][family], polytope["trained"][family]
        parts.append(f"{family.split('_')[0]}: SAE latent AUC {_num(auc['auc'])} (shuffled "
                     f"{_num(auc['shuffled_labels'])}), region purity {regions['purity']:.2f} (chance "
                     f"{regions['chance_purity']:.2f})")
    return "; ".join(parts)

