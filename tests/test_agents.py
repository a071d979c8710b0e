"""Goal-misgeneralization gridworlds, PPO, the measurement and the lenses (anatomist.agents)."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn

from anatomist.agents.envs import ENVS, SingleGridEnv, each_object_reachable, held_out_levels, make_env
from anatomist.agents.lenses import goal_vectors, probe_accuracy, rollout_states
from anatomist.agents.levels import Level, corner_region, decisive, distances, one_hot
from anatomist.agents.measure import over_seeds, play_levels, random_agent, rates, scripted_agent, seed_interval, wilson
from anatomist.agents.ppo import GridPolicy, PPOConfig, gae, policy_for, train_ppo
from anatomist.core.checkpoint import Checkpointer
from anatomist.core.errors import AnatomistError
from anatomist.nets.sites import splice

pytestmark = pytest.mark.usefixtures("one_thread")

LEVELS = 300


def train_levels(name: str, rand_frac: float, n: int = LEVELS) -> list[Level]:
    env = make_env(name, 1, rand_frac)
    return [env.make_level("train", k) for k in range(n)]


def goal_of(level: Level) -> np.ndarray:
    return level.objects.get("cheese", level.objects.get("coin"))  # type: ignore[return-value]


@pytest.mark.parametrize("name", list(ENVS))
@pytest.mark.parametrize("rand_frac", [0.0, 0.2, 1.0])
def test_share_of_decorrelated_training_levels_is_rand_frac(name: str, rand_frac: float) -> None:
    levels = train_levels(name, rand_frac)
    share = np.mean([lv.decorrelated for lv in levels])
    assert abs(share - rand_frac) <= 4 * math.sqrt(rand_frac * (1 - rand_frac) / LEVELS) + 1e-9


@pytest.mark.parametrize("name", ["maze-cheese", "coin-run-lite"])
def test_goal_sits_on_the_proxy_in_correlated_levels_and_spreads_in_decorrelated_ones(name: str) -> None:
    levels = train_levels(name, 0.5)
    on_proxy = np.array([(goal_of(lv) & lv.proxy).any() for lv in levels])  # type: ignore[operator]
    decorrelated = np.array([lv.decorrelated for lv in levels])
    assert on_proxy[~decorrelated].all()
    assert on_proxy[decorrelated].mean() < 0.3  # anywhere: rarely on the proxy squares
    assert len({tuple(np.argwhere(goal_of(lv))[0]) for lv in np.array(levels)[decorrelated]}) > 10


def test_maze_proxy_is_the_top_right_corner() -> None:
    level = train_levels("maze-cheese", 0.0, 1)[0]
    assert level.objects["cheese"][0, -1] and level.objects["cheese"].sum() == 1
    assert (level.proxy == corner_region(7, 1)).all()  # type: ignore[union-attr]


def test_keys_chests_counts_flip_between_train_and_test() -> None:
    env = make_env("keys-chests", 1, 0.0)
    for level in train_levels("keys-chests", 0.0, 50):
        assert level.objects["key"].sum() < level.objects["chest"].sum()
    for level in held_out_levels(env, 50):
        assert level.objects["key"].sum() > level.objects["chest"].sum() == level.meta["chests"]


@pytest.mark.parametrize("name", list(ENVS))
def test_levels_are_reproducible_from_their_seed_and_differ_across_seeds(name: str) -> None:
    a, b = make_env(name, 1, 0.3), make_env(name, 4, 0.3, seed=7)
    for split in ("train", "test"):
        one, two = a.make_level(split, 123), b.make_level(split, 123)
        assert (one.walls == two.walls).all() and one.start == two.start
        assert all((one.objects[k] == two.objects[k]).all() for k in one.objects)
    walls = {a.make_level("train", k).walls.tobytes() for k in range(20)}
    assert len(walls) > 15
    first, second = make_env(name, 8, 0.3, seed=3), make_env(name, 8, 0.3, seed=3)
    assert (first.reset()[0] == second.reset()[0]).all()


@pytest.mark.parametrize("name", list(ENVS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_no_impossible_level(name: str, split: str) -> None:
    env = make_env(name, 1, 0.5)
    for k in range(80):
        level = env.make_level(split, k)
        assert not level.walls[level.start]
        if name == "keys-chests":
            assert each_object_reachable(level.walls, level.start, level.objects["key"] | level.objects["chest"])
            continue
        reach = distances(level.walls | level.objects.get("lava", np.zeros_like(level.walls)), level.start)
        assert (reach[goal_of(level)] > 0).all() and (reach[level.proxy] >= 0).any()  # type: ignore[index]
        if split == "test":
            assert decisive(level, goal_of(level))


def test_each_object_reachable_spots_a_shielded_chest() -> None:
    walls = np.zeros((3, 3), dtype=bool)
    chest = np.zeros((3, 3), dtype=bool)
    chest[0, 0] = True
    keys = np.zeros((3, 3), dtype=bool)
    keys[0, 1] = keys[1, 0] = True  # the corner chest is walled in by two keys
    assert not each_object_reachable(walls, (2, 2), chest | keys)
    keys[1, 0] = False
    assert each_object_reachable(walls, (2, 2), chest | keys)


@pytest.mark.parametrize("name", list(ENVS))
def test_scripted_proxy_seeker_is_fully_misgeneralized_and_goal_seeker_never(name: str) -> None:
    env = make_env(name, 1)
    levels = held_out_levels(env, 40)
    proxy = rates(play_levels(env, levels, scripted_agent("proxy")))
    goal = rates(play_levels(env, levels, scripted_agent("goal")))
    assert proxy["misgeneralized"]["rate"] == 1.0 and proxy["capable"]["rate"] == 1.0
    assert goal["misgeneralized"]["rate"] == 0.0 and goal["goal"]["rate"] == 1.0
    if name != "keys-chests":  # a key hoarder still opens the chests afterwards, if time allows
        assert proxy["goal"]["rate"] == 0.0


def test_key_hoarder_takes_every_spare_key_and_chest_opener_none() -> None:
    env = make_env("keys-chests", 1)
    levels = held_out_levels(env, 40)  # 4 keys, 2 chests: 2 keys are spare
    hoarder = rates(play_levels(env, levels, scripted_agent("proxy")))
    opener = rates(play_levels(env, levels, scripted_agent("goal")))
    assert hoarder["mean_superfluous_keys"] == 2.0 and opener["mean_superfluous_keys"] == 0.0
    assert hoarder["mean_chests_opened_share"] == opener["mean_chests_opened_share"] == 1.0
    assert hoarder["mean_length"] > opener["mean_length"]  # the spare keys cost the hoarder steps
    maze = make_env("maze-cheese", 1)
    assert "mean_superfluous_keys" not in rates(play_levels(maze, held_out_levels(maze, 5), scripted_agent("goal")))


def test_chest_opener_solves_keys_chests_training_levels() -> None:
    """Training levels (2 keys, 4 chests) are solved by opening as many chests as there are keys."""
    env = make_env("keys-chests", 1)
    levels = train_levels("keys-chests", 0.0, 30)
    outcome = rates(play_levels(env, levels, scripted_agent("goal")))
    assert outcome["goal"]["rate"] == 1.0 and outcome["mean_chests_opened_share"] == 0.5


def test_trained_keys_chests_rates_read_against_a_random_agent_and_average_over_seeds() -> None:
    env = make_env("keys-chests", 1)
    levels = held_out_levels(env, 40)
    wanderer = [rates(play_levels(env, levels, random_agent(seed))) for seed in (0, 1)]
    opener = rates(play_levels(env, levels, scripted_agent("goal")))
    assert all(0.0 < w["mean_chests_opened_share"] < opener["mean_chests_opened_share"] for w in wanderer)
    assert wanderer[0]["mean_length"] != wanderer[1]["mean_length"]  # seeded: two seeds, two walks
    combined = over_seeds([wanderer[0], opener])
    assert combined["mean_superfluous_keys"]["mean"] == pytest.approx(wanderer[0]["mean_superfluous_keys"] / 2)


def _row_level(keys: list[int], chest: int) -> Level:
    """A 5x5 open room: start at the top-left, keys and one chest along the top row."""
    walls = np.zeros((5, 5), dtype=bool)
    key_grid = np.zeros((5, 5), dtype=bool)
    key_grid[0, keys] = True
    return Level(walls, (0, 0), {"key": key_grid, "chest": one_hot((5, 5), (0, chest))}, 0, meta={"chests": 1})


def test_a_key_is_taken_by_moving_into_it_and_a_spare_one_is_the_proxy() -> None:
    env = make_env("keys-chests", 1, size=5, inner_walls=0)
    right = 3
    env.play([_row_level([1, 2], 3)])
    env.step(np.array([right]))  # into the first key: taken, the agent stays put
    assert env.counts["held"][0] == 1 and tuple(env.pos[0]) == (0, 0) and not env.flags["proxy"][0]
    env.step(np.array([right]))
    assert tuple(env.pos[0]) == (0, 1) and not env.objects["key"][0, 0, 1]
    env.step(np.array([right]))  # a second key for the one chest: no chest can ever use it
    assert env.counts["held"][0] == 2 and env.flags["proxy"][0] and tuple(env.pos[0]) == (0, 1)
    env.step(np.array([right]))
    _, reward, term, _, info = env.step(np.array([right]))  # onto the chest, holding keys: opened, level done
    assert reward[0] == 1.0 and term[0] and info["goal"][0] and info["keys_taken"][0] == 2
    env.play([_row_level([3], 1)])
    _, reward, term, _, _ = env.step(np.array([right]))  # onto the chest with no key: it stays closed
    assert reward[0] == 0.0 and not term[0] and env.objects["chest"][0, 0, 1] and env.counts["held"][0] == 0


def test_coin_run_start_columns_bound_where_the_agent_starts() -> None:
    left = make_env("coin-run-lite", 1, length=11, start_cols=0.5)
    anywhere = make_env("coin-run-lite", 1, length=11, start_cols=1.0)
    assert max(left.make_level("train", k).start[1] for k in range(100)) < 5
    starts = [anywhere.make_level("train", k) for k in range(100)]
    assert max(lv.start[1] for lv in starts) >= 8
    assert not any((lv.proxy[lv.start]) for lv in starts)  # type: ignore[index]


def test_scripted_goal_seeker_solves_training_levels() -> None:
    env = make_env("maze-cheese", 1)
    levels = train_levels("maze-cheese", 0.0, 30)
    assert rates(play_levels(env, levels, scripted_agent("goal")))["goal"]["rate"] == 1.0


def test_wilson_and_seed_intervals_match_known_values() -> None:
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    seeded = seed_interval([0.2, 0.4, 0.6])  # mean 0.4, sd 0.2, t(2) = 4.303
    assert seeded["mean"] == pytest.approx(0.4)
    assert seeded["high"] - seeded["mean"] == pytest.approx(4.3027 * 0.2 / math.sqrt(3), rel=1e-3)


def test_gae_matches_a_hand_computation() -> None:
    rewards, values = torch.tensor([[1.0], [1.0]]), torch.tensor([[0.5], [0.25]])
    adv, returns = gae(rewards, values, torch.zeros(2, 1), torch.tensor([2.0]), gamma=0.5, lam=0.5)
    assert adv[:, 0].tolist() == pytest.approx([1.0625, 1.75])
    assert returns[:, 0].tolist() == pytest.approx([1.5625, 2.0])
    ended, _ = gae(rewards, values, torch.tensor([[1.0], [0.0]]), torch.tensor([2.0]), gamma=0.5, lam=0.5)
    assert ended[0, 0].item() == pytest.approx(0.5)  # no bootstrapping across the episode's end


def test_ppo_improves_return_on_a_trivial_level() -> None:
    env = make_env("maze-cheese", 16, size=5, openness=1.0, max_steps=12)
    cfg = PPOConfig(env_steps=16 * 16 * 20, num_envs=16, n_steps=16, lr=2e-3, hidden=32, conv=(4, 4))
    _, curve = train_ppo(env, cfg, seed=0)
    first, last = np.mean([p["mean_return"] for p in curve[:3]]), np.mean([p["mean_return"] for p in curve[-3:]])
    assert last > first + 0.25


def test_ppo_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = PPOConfig(env_steps=8 * 8 * 4, num_envs=8, n_steps=8, checkpoint_every=2, hidden=16, conv=(4, 4))
    _, curve = train_ppo(make_env("coin-run-lite", 8), cfg, seed=1, run_dir=tmp_path)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.steps() == [2, 4]
    with pytest.raises(AnatomistError, match="earlier run"):
        train_ppo(make_env("coin-run-lite", 8), cfg, seed=1, run_dir=tmp_path)
    resumed_policy, resumed = train_ppo(make_env("coin-run-lite", 8), cfg, seed=1, run_dir=tmp_path, resume=True)
    assert resumed == curve  # finished: nothing left to train, the curve comes back from the checkpoint
    policy = policy_for(make_env("coin-run-lite", 1), cfg)
    ckpt.load_model(policy, 4)
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(),
                                                 resumed_policy.state_dict().values(), strict=True))


def test_vector_env_follows_the_gymnasium_api_and_single_env_passes_the_checker() -> None:
    env = make_env("keys-chests", 5, 0.5)
    assert isinstance(env, gymnasium.vector.VectorEnv)
    obs, _ = env.reset(seed=2)
    assert env.observation_space.contains(obs) and obs.shape == (5, *env.single_observation_space.shape)
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert reward.shape == term.shape == trunc.shape == (5,) and "_episode" in info
    check_env(SingleGridEnv("maze-cheese"), skip_render_check=True)


def test_bad_settings_are_named() -> None:
    with pytest.raises(AnatomistError, match="rand_frac"):
        make_env("maze-cheese", 2, 1.5)
    with pytest.raises(AnatomistError, match="known: maze-cheese"):
        make_env("maze", 2)
    with pytest.raises(AnatomistError, match="train_counts"):
        make_env("keys-chests", 2, train_counts=(3, 3))
    with pytest.raises(AnatomistError, match="actions"):
        make_env("coin-run-lite", 2).step(np.array([0, 7]))
    with pytest.raises(AnatomistError, match="start_cols"):
        make_env("coin-run-lite", 1, start_cols=0.0)


def test_subtracting_the_goal_vector_at_the_first_conv_erases_the_goal_from_the_policy_input() -> None:
    """conv1 is linear in its input, so its goal vector is the conv of the goal plane: subtracting it at the
    level's first observation gives exactly the policy's output on that observation without the goal."""
    torch.manual_seed(0)
    env = make_env("maze-cheese", 1)
    levels = held_out_levels(env, 6)
    policy = policy_for(env, PPOConfig())
    vectors = goal_vectors(policy, env, levels, "conv1")
    obs = torch.as_tensor(make_env("maze-cheese", 6).play(levels))
    without = obs.clone()
    without[:, env.channels.index("cheese")] = 0
    with splice(policy, {"conv1": lambda v: v - vectors}):
        steered = policy(obs)[0]
    assert torch.allclose(steered, policy(without)[0], atol=1e-5)
    assert not torch.allclose(policy(obs)[0], policy(without)[0], atol=1e-5)


def test_probe_reads_a_planted_direction_and_not_shuffled_labels() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    x = rng.normal(size=(600, 20))
    x[:, :4] += 3 * np.eye(4)[y]  # the label is linearly present
    train, test = np.arange(600) < 400, np.arange(600) >= 400
    assert probe_accuracy(x, y, train, test, 0) > 0.9
    shuffled = y.copy()
    shuffled[train] = rng.permutation(y[train])
    assert probe_accuracy(x, shuffled, train, test, 0) < 0.4


class AlwaysRight(nn.Module):
    """A policy that moves right (almost) surely: its rollout's squares are known in advance."""

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.full((obs.shape[0], 4), -30.0)
        logits[:, 3] = 30.0
        return logits, torch.zeros(obs.shape[0])


def test_rollout_states_are_the_squares_the_policy_visits() -> None:
    env = make_env("maze-cheese", 1, size=5, openness=1.0, max_steps=6)
    levels = held_out_levels(env, 12)
    states = rollout_states(env, AlwaysRight(), levels, seed=0)
    agent = env.channels.index("agent")
    for k, level in enumerate(levels):
        squares = [tuple(np.argwhere(o[agent] > 0.5)[0]) for o in states["obs"][states["level"] == k]]
        assert 1 <= len(squares) <= 6 and squares[0] == level.start
        assert all(r == level.start[0] for r, _ in squares)  # only moves right: the start's row throughout
        assert [c for _, c in squares] == sorted(c for _, c in squares)
    assert set(states["goal_direction"]) <= {0, 1, 2, 3} and len(states["proxy_direction"]) == len(states["obs"])


def test_policy_sites_have_the_documented_shapes() -> None:
    policy = GridPolicy(3, 7, 7, hidden=32, conv=(4, 6))
    names = dict(policy.named_modules())
    assert {"relu1", "relu2", "hidden"} <= set(names)
    logits, value = policy(torch.zeros(2, 3, 7, 7))
    assert logits.shape == (2, 4) and value.shape == (2,)


def test_goal_misgen_grid_reuses_finished_cells_on_a_rerun(tmp_path: Path) -> None:
    from anatomist.runs import KINDS, load_run_config, run

    config = load_run_config("goal-misgen", [*KINDS["goal-misgen"].config.smoke, "rand_fracs=[0.5]"])
    first = run(config, tmp_path, threads=1)
    policy = tmp_path / "rf0.5_s0" / "policy.safetensors"
    written = policy.stat().st_mtime_ns
    second = run(config, tmp_path, threads=1)
    assert policy.stat().st_mtime_ns == written  # read back, not retrained
    assert first.metrics.tables == second.metrics.tables
    assert (tmp_path / "misgeneralization.png").is_file()
