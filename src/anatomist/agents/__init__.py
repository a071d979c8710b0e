"""Goal misgeneralization in deep RL (Langosco et al. 2022): gridworlds with a goal/proxy split, PPO agents,
the paper's measurement, and anatomist's lenses turned on the policy.

- `envs`: vectorised `maze-cheese`, `coin-run-lite`, `keys-chests` (Gymnasium `VectorEnv` / `Env`);
- `levels`: level generation, reachability and decisive test levels;
- `ppo`: the actor-critic network and PPO trainer (checkpointed, resumable);
- `measure`: capability / goal / proxy / misgeneralization rates with intervals, scripted and random agents;
- `lenses`: linear probes for goal vs proxy direction on placed or rollout states, the goal ("cheese") vector;
- `latents`: an SAE's latents and the polytope lens's region codes against goal and proxy labels.
"""

from anatomist.agents.envs import (
    ENVS,
    CoinRunLite,
    GridWorld,
    KeysChests,
    MazeCheese,
    SingleGridEnv,
    held_out_levels,
    make_env,
)
from anatomist.agents.measure import over_seeds, play_levels, policy_agent, random_agent, rates, scripted_agent
from anatomist.agents.ppo import GridPolicy, PPOConfig, train_ppo

__all__ = [
    "ENVS",
    "CoinRunLite",
    "GridPolicy",
    "GridWorld",
    "KeysChests",
    "MazeCheese",
    "PPOConfig",
    "SingleGridEnv",
    "make_env",
    "over_seeds",
    "play_levels",
    "policy_agent",
    "random_agent",
    "rates",
    "scripted_agent",
    "held_out_levels",
    "train_ppo",
]
