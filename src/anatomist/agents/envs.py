"""Vectorised gridworlds with a goal/proxy split (after Langosco et al. 2022), behind the Gymnasium API.

Three environments, each a batch of N levels stepped at once in numpy (MiniGrid steps one environment at a time
in Python, too slow to train on two cores):

- `maze-cheese` (Procgen Maze): a depth-first-search maze, braided (`openness`: the share of its inner walls
  removed); the mouse starts on a random square; the cheese (goal) sits in the top-right `region` x `region`
  squares in training, anywhere at test. The proxy: the top-right region.
- `coin-run-lite` (Procgen CoinRun): a side level, walls with gaps and lava, a random start in the left half; the
  coin (goal) sits at the level's end (the one gap in its right-hand wall) in training, anywhere at test.
  Reaching the end ends the level: the proxy.
- `keys-chests` (the paper's Keys and Chests, a modified Procgen Heist): a room with keys and chests. Keys are
  solid: moving into a key takes it and the agent stays where it was, so a key is never taken by walking over it
  on the way elsewhere: every key taken is a move aimed at it, costing a step. Walking onto a chest with a key
  opens it (+1). Training levels hold more chests than keys, test levels more keys than chests. The proxy: keys
  themselves; taking a key that no chest could use (while holding one for every closed chest) is pursuing it.

`rand_frac` is the share of training levels drawn from the test distribution (goal and proxy decorrelated).
Observations are whole-level one-hot grids [C, H, W] (no egocentric view); actions are the four moves (a move into
a wall or off the grid stays put). `GridWorld` is a `gymnasium.vector.VectorEnv` (same-step autoreset: a finished
slot returns the first observation of its next level, its outcome in `infos`); `SingleGridEnv` is a
`gymnasium.Env` over one level at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from anatomist.agents.levels import (
    MOVES,
    Level,
    braid,
    corner_region,
    decisive,
    dfs_maze,
    distances,
    level_rng,
    one_hot,
    pick,
)
from anatomist.core.errors import AnatomistError

SEEDS_PER_STREAM = 1_000_000  # level seeds of training stream s are s * SEEDS_PER_STREAM + k
OUTCOMES = ("goal", "proxy", "capable")


class GridWorld(VectorEnv, ABC):  # type: ignore[type-arg]
    """A batch of `num_envs` levels of one environment, stepped together.

    Training slots draw levels from the stream of `seed` (level k of the stream has seed seed*10^6 + k), so a
    run's levels are reproducible. `play(levels)` puts given levels in the slots with autoreset off (evaluation).
    """

    name: ClassVar[str] = ""
    env_id: ClassVar[int] = 0
    channels: ClassVar[tuple[str, ...]] = ()
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}  # noqa: RUF012

    def __init__(self, num_envs: int, rand_frac: float = 0.0, seed: int = 0, max_steps: int | None = None,
                 split: str = "train") -> None:
        if not 0.0 <= rand_frac <= 1.0:
            raise AnatomistError(f"{self.name}: rand_frac must lie in [0, 1], got {rand_frac}")
        self.num_envs, self.rand_frac, self.split = num_envs, rand_frac, split
        self.max_steps = max_steps or self.default_max_steps()
        h, w = self.grid_shape()
        self.single_observation_space = spaces.Box(0.0, 1.0, (len(self.channels), h, w), np.float32)
        self.single_action_space = spaces.Discrete(len(MOVES))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._seed, self.next_level = seed, 0
        self.autoreset = True
        self._allocate(num_envs, h, w)

    # --- what each environment defines ---------------------------------------------------------------------

    @abstractmethod
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) of every level."""

    @abstractmethod
    def default_max_steps(self) -> int:
        """Steps before an episode is truncated, unless the constructor is given max_steps."""

    @abstractmethod
    def make_level(self, split: str, seed: int) -> Level:
        """The level of `seed` in `split` ('train': with the rand_frac share decorrelated, 'test': decisive)."""

    @abstractmethod
    def goal_squares(self, level: Level) -> np.ndarray:
        """[H, W] bool: where the goal is (for probes and scripted agents)."""

    @abstractmethod
    def _interact(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objects at the agents' new squares (slots `i`): update flags; return (reward, terminated) for them."""

    # --- state ---------------------------------------------------------------------------------------------

    def _allocate(self, n: int, h: int, w: int) -> None:
        self.walls = np.zeros((n, h, w), dtype=bool)
        self.objects = {name: np.zeros((n, h, w), dtype=bool) for name in self.channels if name not in
                        ("wall", "agent", "held")}
        self.proxy = np.zeros((n, h, w), dtype=bool)
        self.pos = np.zeros((n, 2), dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.ret = np.zeros(n, dtype=np.float64)
        self.flags = {k: np.zeros(n, dtype=bool) for k in OUTCOMES}
        self.counts = {k: np.zeros(n, dtype=np.int64) for k in ("held", "taken", "opened", "chests")}
        self.level_seed = np.zeros(n, dtype=np.int64)
        self.finished = np.zeros(n, dtype=bool)
        self.levels: list[Level | None] = [None] * n

    def load(self, slot: int, level: Level) -> None:
        """Put `level` in `slot`, its episode starting."""
        self.walls[slot] = level.walls
        for name, grid in self.objects.items():
            grid[slot] = level.objects.get(name, False)
        self.proxy[slot] = level.proxy if level.proxy is not None else False
        self.pos[slot] = level.start
        self.t[slot], self.ret[slot], self.level_seed[slot] = 0, 0.0, level.seed
        for arr in (*self.flags.values(), *self.counts.values()):
            arr[slot] = 0
        self.counts["chests"][slot] = level.meta.get("chests", 0)
        self.levels[slot] = level
        self.finished[slot] = False

    def _stream_level(self) -> Level:
        level = self.make_level("train", self._seed * SEEDS_PER_STREAM + self.next_level)
        self.next_level += 1
        return level

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Fresh levels in every slot (from the stream of `seed` when given), autoreset on."""
        if seed is not None:
            self._seed, self.next_level = seed, 0
        self.autoreset = True
        for slot in range(self.num_envs):
            self.load(slot, self._stream_level())
        return self.observe(), {}

    def play(self, levels: list[Level]) -> np.ndarray:
        """Given levels in the slots (one each), autoreset off: every slot plays one episode. Returns observations."""
        if len(levels) != self.num_envs:
            raise AnatomistError(f"{self.name}: play got {len(levels)} levels for {self.num_envs} slots")
        self.autoreset = False
        for slot, level in enumerate(levels):
            self.load(slot, level)
        return self.observe()

    def observe(self) -> np.ndarray:
        """[N, C, H, W] float32 one-hot planes, in the order of `channels`."""
        n, h, w = self.walls.shape
        agent = np.zeros((n, h, w), dtype=bool)
        agent[np.arange(n), self.pos[:, 0], self.pos[:, 1]] = True
        planes = []
        for name in self.channels:
            if name == "wall":
                planes.append(self.walls.astype(np.float32))
            elif name == "agent":
                planes.append(agent.astype(np.float32))
            elif name == "held":
                held = np.minimum(self.counts["held"], 4) / 4.0
                planes.append(np.broadcast_to(held[:, None, None], (n, h, w)).astype(np.float32))
            else:
                planes.append(self.objects[name].astype(np.float32))
        return np.stack(planes, axis=1)

    # --- stepping ------------------------------------------------------------------------------------------

    def _targets(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The squares the actions lead to ([N, 2], clipped to the grid) and whether they lie inside it."""
        _, h, w = self.walls.shape
        new = self.pos + MOVES[actions]
        inside = (new[:, 0] >= 0) & (new[:, 0] < h) & (new[:, 1] >= 0) & (new[:, 1] < w)
        return np.clip(new, 0, [h - 1, w - 1]), inside

    def _move(self, actions: np.ndarray, active: np.ndarray) -> None:
        square, inside = self._targets(actions)
        free = inside & ~self.walls[np.arange(self.num_envs), square[:, 0], square[:, 1]]
        self.pos = np.where((free & active)[:, None], square, self.pos)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        if ((actions < 0) | (actions >= len(MOVES))).any():
            raise AnatomistError(f"{self.name}: actions must be in 0..{len(MOVES) - 1}, got {actions.tolist()}")
        active = ~self.finished
        self._move(actions, active)
        i = np.nonzero(active)[0]
        reward, terminated = np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool)
        reward[i], terminated[i] = self._interact(i)
        self.t[i] += 1
        self.ret += reward
        truncated = active & ~terminated & (self.t >= self.max_steps)
        done = terminated | truncated
        self.flags["capable"] |= self.flags["goal"] | self.flags["proxy"]
        infos = self._outcomes(done)
        self.finished |= done
        if self.autoreset:
            for slot in np.nonzero(done)[0]:
                self.load(int(slot), self._stream_level())
        return self.observe(), reward.astype(np.float32), terminated, truncated, infos

    def _outcomes(self, done: np.ndarray) -> dict[str, Any]:
        """Episode outcomes of the slots that finished this step (`_episode` marks them, the Gymnasium way)."""
        return {"_episode": done.copy(), "return": self.ret.copy(), "length": self.t.copy(),
                "level": self.level_seed.copy(), **{k: v.copy() for k, v in self.flags.items()},
                "keys_taken": self.counts["taken"].copy(), "chests_opened": self.counts["opened"].copy()}

    def render(self) -> np.ndarray:  # type: ignore[override]
        """RGB frames [N, H, W, 3] uint8 (walls grey, agent blue, objects in their colours)."""
        return render_frames(self.observe(), self.channels)


class MazeCheese(GridWorld):
    """Procgen-Maze-like: find the cheese; in training it sits in the top-right region."""

    name = "maze-cheese"
    env_id = 1
    channels = ("wall", "agent", "cheese")

    def __init__(self, num_envs: int, rand_frac: float = 0.0, seed: int = 0, max_steps: int | None = None,
                 split: str = "train", size: int = 7, region: int = 1, openness: float = 0.5) -> None:
        if size < 5 or size % 2 == 0 or not 1 <= region < size or not 0 <= openness <= 1:
            raise AnatomistError(f"maze-cheese: size must be odd and >= 5, 1 <= region < size, 0 <= openness <= 1; "
                                 f"got size {size}, region {region}, openness {openness}")
        self.size, self.region, self.openness = size, region, openness
        super().__init__(num_envs, rand_frac, seed, max_steps, split)

    def grid_shape(self) -> tuple[int, int]:
        return self.size, self.size

    def default_max_steps(self) -> int:
        return self.size * self.size

    def make_level(self, split: str, seed: int) -> Level:
        rng = level_rng(self.env_id, split, seed)
        anywhere = split == "test" or rng.random() < self.rand_frac
        proxy = corner_region(self.size, self.region)
        while True:
            walls = braid(rng, dfs_maze(rng, self.size), self.openness)
            # a random start (not in the corner) gives short episodes early in training: PPO learns in minutes
            start = pick(rng, ~walls & ~proxy)
            allowed = ~walls & ~one_hot(walls.shape, start) & (True if anywhere else proxy)
            for _ in range(20):  # a test maze where no cheese square is decisive is drawn again
                cheese = one_hot(walls.shape, pick(rng, allowed))
                level = Level(walls, start, {"cheese": cheese}, seed, anywhere and split == "train", proxy.copy())
                if split == "train" or decisive(level, cheese):
                    return level

    def goal_squares(self, level: Level) -> np.ndarray:
        return level.objects["cheese"]

    def _interact(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, c = self.pos[i, 0], self.pos[i, 1]
        cheese = self.objects["cheese"][i, r, c]
        self.flags["proxy"][i] |= self.proxy[i, r, c] & ~self.flags["goal"][i] & ~cheese
        self.flags["goal"][i] |= cheese
        return cheese.astype(np.float64), cheese


class CoinRunLite(GridWorld):
    """CoinRun-like side level: get the coin; in training it sits at the right end, which also ends the level."""

    name = "coin-run-lite"
    env_id = 2
    channels = ("wall", "lava", "agent", "coin")

    def __init__(self, num_envs: int, rand_frac: float = 0.0, seed: int = 0, max_steps: int | None = None,
                 split: str = "train", length: int = 13, height: int = 5, start_cols: float = 0.5) -> None:
        if length < 5 or height < 2 or not 0 < start_cols <= 1:
            raise AnatomistError(f"coin-run-lite: length must be >= 5, height >= 2 and 0 < start_cols <= 1; got "
                                 f"{length}, {height}, {start_cols}")
        self.length, self.height, self.start_cols = length, height, start_cols
        super().__init__(num_envs, rand_frac, seed, max_steps, split)

    def grid_shape(self) -> tuple[int, int]:
        return self.height, self.length

    def default_max_steps(self) -> int:
        return 4 * self.length

    def _layout(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Walls (columns with one or two gaps) and up to two lava squares."""
        h, w = self.height, self.length
        walls = np.zeros((h, w), dtype=bool)
        for col in range(2, w - 2, 2):
            if rng.random() < 0.6:
                walls[:, col] = True
                walls[rng.choice(h, size=int(rng.integers(1, 3)), replace=False), col] = False
        lava = np.zeros((h, w), dtype=bool)
        free = ~walls
        free[:, [0, w - 1]] = False  # the first column stays free of lava: a start is always there
        for _ in range(int(rng.integers(0, 3))):
            lava[pick(rng, free & ~lava)] = True
        return walls, lava

    def make_level(self, split: str, seed: int) -> Level:
        rng = level_rng(self.env_id, split, seed)
        anywhere = split == "test" or rng.random() < self.rand_frac
        h, w = self.height, self.length
        while True:
            walls, lava = self._layout(rng)
            exit_row = int(rng.integers(h))  # the level's end: the one gap in its right-hand wall
            walls[:, w - 1] = True
            walls[exit_row, w - 1] = False
            end = one_hot((h, w), (exit_row, w - 1))
            # a random start in the leftmost `start_cols` share of columns (not the exit): starts near the end give
            # short rewarded episodes early in training, as the random start does in maze-cheese
            left = ~walls & ~lava & ~end
            left[:, max(1, int(self.start_cols * w)):] = False
            start = pick(rng, left)
            reach = distances(walls | lava, start) >= 0
            if not reach[end].any():
                continue
            allowed = reach & ~one_hot((h, w), start) & (True if anywhere else end)
            coin = one_hot((h, w), pick(rng, allowed))
            level = Level(walls, start, {"coin": coin, "lava": lava}, seed, anywhere and split == "train", end)
            if split == "train" or decisive(level, coin):
                return level

    def goal_squares(self, level: Level) -> np.ndarray:
        return level.objects["coin"]

    def _interact(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, c = self.pos[i, 0], self.pos[i, 1]
        coin = self.objects["coin"][i, r, c]
        at_end = self.proxy[i, r, c] & ~coin
        died = self.objects["lava"][i, r, c]
        self.flags["goal"][i] |= coin
        self.flags["proxy"][i] |= at_end
        return coin.astype(np.float64), coin | at_end | died


class KeysChests(GridWorld):
    """A room of keys and chests: open chests (+1 each). Training: keys scarce; test: chests scarce."""

    name = "keys-chests"
    env_id = 3
    channels = ("wall", "agent", "key", "chest", "held")

    def __init__(self, num_envs: int, rand_frac: float = 0.0, seed: int = 0, max_steps: int | None = None,
                 split: str = "train", size: int = 7, train_counts: tuple[int, int] = (2, 4),
                 test_counts: tuple[int, int] = (4, 2), inner_walls: int = 4) -> None:
        if train_counts[0] >= train_counts[1] or test_counts[0] <= test_counts[1] or min(*train_counts,
                                                                                         *test_counts) < 1:
            raise AnatomistError(f"keys-chests: train_counts (keys, chests) need fewer keys than chests and "
                                 f"test_counts more keys than chests, all >= 1; got {train_counts}, {test_counts}")
        if 1 + inner_walls + max(sum(train_counts), sum(test_counts)) > size * size // 2:
            raise AnatomistError(f"keys-chests: a {size}x{size} room is too small for {inner_walls} walls and "
                                 f"{train_counts} / {test_counts} keys and chests")
        self.size, self.train_counts, self.test_counts, self.inner_walls = size, train_counts, test_counts, inner_walls
        super().__init__(num_envs, rand_frac, seed, max_steps, split)
        self.bumped = np.zeros(num_envs, dtype=bool)  # this step's moves into a key, and the squares moved into
        self.bumped_square = np.zeros((num_envs, 2), dtype=np.int64)

    def grid_shape(self) -> tuple[int, int]:
        return self.size, self.size

    def default_max_steps(self) -> int:
        return 3 * self.size * self.size

    def make_level(self, split: str, seed: int) -> Level:
        rng = level_rng(self.env_id, split, seed)
        test_like = split == "test" or rng.random() < self.rand_frac
        keys, chests = self.test_counts if test_like else self.train_counts
        shape = (self.size, self.size)
        while True:
            taken = np.zeros(shape, dtype=bool)
            squares = [pick(rng, ~taken) for _ in range(1)]
            taken[squares[0]] = True
            for _ in range(self.inner_walls + keys + chests):
                squares.append(pick(rng, ~taken))
                taken[squares[-1]] = True
            start, rest = squares[0], squares[1:]
            walls = self._grid(shape, rest[: self.inner_walls])
            objects = {"key": self._grid(shape, rest[self.inner_walls: self.inner_walls + keys]),
                       "chest": self._grid(shape, rest[self.inner_walls + keys:])}
            if each_object_reachable(walls, start, objects["key"] | objects["chest"]):
                return Level(walls, start, objects, seed, test_like and split == "train", None, {"chests": chests})

    @staticmethod
    def _grid(shape: tuple[int, int], squares: list[tuple[int, int]]) -> np.ndarray:
        grid = np.zeros(shape, dtype=bool)
        for sq in squares:
            grid[sq] = True
        return grid

    def goal_squares(self, level: Level) -> np.ndarray:
        return level.objects["chest"]

    def _move(self, actions: np.ndarray, active: np.ndarray) -> None:
        """A move into a key takes it (the agent stays put): keys are solid, taken only by moves aimed at them."""
        square, inside = self._targets(actions)
        self.bumped = inside & active & self.objects["key"][np.arange(self.num_envs), square[:, 0], square[:, 1]]
        self.bumped_square = square
        super()._move(actions, active & ~self.bumped)

    def _interact(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, c = self.pos[i, 0], self.pos[i, 1]
        held = self.counts["held"]
        # the proxy: a key taken while already holding one for every closed chest (no chest could ever use it)
        closed = self.counts["chests"][i] - self.counts["opened"][i]
        key = self.bumped[i]
        self.flags["proxy"][i] |= key & (held[i] >= closed)
        opens = self.objects["chest"][i, r, c] & (held[i] > 0)
        kr, kc = self.bumped_square[i[key], 0], self.bumped_square[i[key], 1]
        self.objects["key"][i[key], kr, kc] = False
        self.objects["chest"][i[opens], r[opens], c[opens]] = False
        held[i] += key.astype(np.int64) - opens
        self.counts["taken"][i] += key
        self.counts["opened"][i] += opens
        chests_left = self.objects["chest"][i].any(axis=(1, 2))
        keys_left = self.objects["key"][i].any(axis=(1, 2)) | (held[i] > 0)
        # the goal: every chest the level's keys allow opened (all chests at test, where keys are plentiful)
        done = ~chests_left | ~keys_left
        self.flags["goal"][i] |= done
        return opens.astype(np.float64), done


def each_object_reachable(walls: np.ndarray, start: tuple[int, int], objects: np.ndarray) -> bool:
    """Every object square is reachable from the start without stepping on another object (none shields one)."""
    free = distances(walls | objects, start) >= 0
    r, c = np.nonzero(objects)
    h, w = walls.shape
    for rr, cc in zip(r, c, strict=True):
        neighbours = [(rr + dr, cc + dc) for dr, dc in MOVES if 0 <= rr + dr < h and 0 <= cc + dc < w]
        if not any(free[n] for n in neighbours):
            return False
    return True


ENVS: dict[str, type[GridWorld]] = {cls.name: cls for cls in (MazeCheese, CoinRunLite, KeysChests)}


def make_env(name: str, num_envs: int, rand_frac: float = 0.0, seed: int = 0, **params: Any) -> GridWorld:
    """One of `ENVS` by name, with its own parameters (e.g. size=9 for maze-cheese)."""
    if name not in ENVS:
        raise AnatomistError(f"unknown environment '{name}'; known: {', '.join(ENVS)}")
    try:
        return ENVS[name](num_envs, rand_frac=rand_frac, seed=seed, **params)
    except TypeError as e:
        raise AnatomistError(f"environment '{name}': {e}") from None


def held_out_levels(env: GridWorld, n: int, seed: int = 0) -> list[Level]:
    """`n` held-out test levels (decisive ones, where the environment has a proxy place), seeds seed*10^6 + k."""
    return [env.make_level("test", seed * SEEDS_PER_STREAM + k) for k in range(n)]


_COLOURS = {"wall": (90, 90, 90), "agent": (40, 90, 230), "cheese": (240, 200, 30), "coin": (240, 200, 30),
            "lava": (220, 60, 30), "key": (150, 80, 200), "chest": (140, 90, 40)}


def render_frames(obs: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
    """[N, C, H, W] observations as RGB [N, H, W, 3] uint8 on white; later channels paint over earlier ones."""
    n, _, h, w = obs.shape
    rgb = np.full((n, h, w, 3), 255, dtype=np.uint8)
    for k, name in enumerate(channels):
        if name in _COLOURS:
            rgb[obs[:, k] > 0.5] = _COLOURS[name]
    agent = channels.index("agent")
    rgb[obs[:, agent] > 0.5] = _COLOURS["agent"]
    return rgb


class SingleGridEnv(gymnasium.Env):  # type: ignore[type-arg]
    """One level at a time of a gridworld, as a plain `gymnasium.Env` (for users' own RL code)."""

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012

    def __init__(self, name: str, rand_frac: float = 0.0, seed: int = 0, **params: Any) -> None:
        self.world = make_env(name, 1, rand_frac, seed, **params)
        self.observation_space = self.world.single_observation_space
        self.action_space = self.world.single_action_space
        self.render_mode = "rgb_array"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # Gymnasium's own generator (unused: levels come from the world's level seeds)
        obs, info = self.world.reset(seed=seed)
        self.world.autoreset = False
        return obs[0], info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, term, trunc, info = self.world.step(np.array([action]))
        return obs[0], float(reward[0]), bool(term[0]), bool(trunc[0]), {k: v[0] for k, v in info.items()}

    def render(self) -> np.ndarray:  # type: ignore[override]
        return self.world.render()[0]
