"""The SAE and polytope lenses on a gridworld policy, and the agent runs' report pages."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anatomist.agents.envs import held_out_levels, make_env
from anatomist.agents.latents import _aucs, best_latent_auc, goal_quadrants, region_scores, split_by_level
from anatomist.agents.levels import Level
from anatomist.core.errors import AnatomistError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_column_aucs_match_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, (40, 3)).astype(float)
    codes[:, 2] = 1.0  # constant: no ranking at all
    target = rng.random(40) < 0.4
    pos, neg = codes[target], codes[~target]
    for j in range(3):  # P(pos > neg) + P(tie) / 2 over every pair
        pairs = pos[:, j][:, None] - neg[:, j][None, :]
        assert _aucs(codes, target)[j] == pytest.approx((pairs > 0).mean() + 0.5 * (pairs == 0).mean())
    assert _aucs(codes, target)[2] == pytest.approx(0.5)


def test_best_latent_finds_a_planted_latent_and_not_a_shuffled_one() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    codes = rng.random((600, 20))
    for latent, cls in ((7, 0), (3, 1), (12, 2)):
        codes[:, latent] += 2.0 * (y == cls)  # one latent fires for each class
    select = np.arange(600) < 400
    planted = best_latent_auc(codes, y, select, ~select)
    assert planted["auc"] > 0.95 and planted["distinct_latents"] == 3
    shuffled = best_latent_auc(codes, rng.permutation(y), select, ~select)
    assert 0.35 < shuffled["auc"] < 0.65  # the best of 20 noise latents on selection does not carry over


def test_best_latent_needs_both_classes_on_both_sides() -> None:
    y = np.array([0, 0, 1, 1])
    with pytest.raises(AnatomistError, match="no class"):
        best_latent_auc(np.ones((4, 2)), y, np.array([True, True, False, False]), np.array([False, False, True, True]))


def test_goal_quadrant_is_read_from_the_goal_square() -> None:
    env = make_env("maze-cheese", 1)
    level = held_out_levels(env, 1)[0]
    h, w = level.shape
    for (r, c), quadrant in (((0, 0), 0), ((0, w - 1), 1), ((h - 1, 0), 2), ((h - 1, w - 1), 3)):
        cheese = np.zeros((h, w), dtype=bool)
        cheese[r, c] = True
        moved = Level(level.walls, level.start, {**level.objects, "cheese": cheese}, seed=0)
        assert goal_quadrants(env, [moved])[0] == quadrant


def test_split_by_level_keeps_each_level_on_one_side() -> None:
    states = {"level": np.repeat(np.arange(10), 3)}
    select, score = split_by_level(states)
    assert not set(states["level"][select]) & set(states["level"][score])
    assert select.sum() == 21


class _Switch(nn.Module):
    """A 'policy' whose ReLU pre-activation is +x0 and -x0 in two units: its region is the sign of input 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[0, 0], self.fc.weight[1, 0] = 1.0, -1.0
        self.hidden = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.fc(x))


def test_region_clusters_separate_the_label_the_codes_encode() -> None:
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(200, 4)).astype(np.float32)
    labels = {"goal_direction": (obs[:, 0] > 0).astype(int), "proxy_direction": rng.integers(0, 2, 200)}
    labels["goal_quadrant"] = labels["goal_direction"]
    scores = region_scores(_Switch(), obs, labels, "hidden", 2, 0)
    assert scores["distinct_codes"] == 2
    # directions are scored only where goal and proxy directions differ; there the codes give the goal exactly
    assert scores["goal_direction"]["purity"] == pytest.approx(1.0)
    assert scores["goal_quadrant"]["nmi"] == pytest.approx(1.0)
    assert scores["proxy_direction"]["purity"] == pytest.approx(1.0)  # = 1 - goal where they differ (binary)


def _image_links(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _dangling_links(page: str, folder: Path) -> list[str]:
    """Relative links and sources of a page that name no file (a run folder's page has no report around it)."""
    return [link for link in re.findall(r'(?:href|src)="([^"#:]+)"', page) if not (folder / link).is_file()]


def test_agent_lens_and_grid_pages_link_their_images(tmp_path: Path) -> None:
    from anatomist.runs import KINDS, load_run_config, run

    lens = run(load_run_config("agent-lens", list(KINDS["agent-lens"].config.smoke)), tmp_path / "lens", threads=1)
    assert {"sae", "polytope"} <= set(lens.value)
    for folder in (tmp_path / "lens", tmp_path / "lens" / "agent"):
        page = (folder / "report.html").read_text()
        links = _image_links(page)
        assert {Path(p).name for p in links} == {"learning_curve.png", "trajectories.png"}
        assert all((folder / p).is_file() for p in links) and not _dangling_links(page, folder)
    assert "SAE latents" in (tmp_path / "lens" / "report.html").read_text()
    grid = load_run_config("goal-misgen", [*KINDS["goal-misgen"].config.smoke, "rand_fracs=[0.5]"])
    run(grid, tmp_path / "grid", threads=1)
    page = (tmp_path / "grid" / "report.html").read_text()
    assert _image_links(page) == ["misgeneralization.png"] and not _dangling_links(page, tmp_path / "grid")
    assert 'href="rf0.5_s0/report.html"' in page and (tmp_path / "grid" / "rf0.5_s0" / "report.html").is_file()
    (tmp_path / "grid" / "rf0.5_s0" / "report.html").unlink()  # a cell finished before runs wrote pages
    run(grid, tmp_path / "grid", threads=1)
    cell_page = (tmp_path / "grid" / "rf0.5_s0" / "report.html").read_text()
    assert "misgeneralized" in cell_page and len(_image_links(cell_page)) == 2
