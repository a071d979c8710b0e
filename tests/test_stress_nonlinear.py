"""Stressors added to the stress table (issue 15): a feature on a circle, and obfuscation against a fixed SAE
latent. Each test checks that the lens that should recover the planted truth does and one that should not does not.
"""

from __future__ import annotations

import math

import pytest
import torch

from anatomist.stress import LENSES, STRESSORS, Budget, base_scenario, stress_table
from anatomist.stress.lenses import plane_share
from anatomist.stress.table import markdown

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = Budget(rows=4096, sae_steps=300)


def test_plane_share_known_answers() -> None:
    plane = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    inside = torch.tensor([[0.6, 0.8, 0, 0], [1.0, 0, 0, 0]])
    outside = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    assert plane_share(plane, inside, 1) == pytest.approx(0.5)  # one direction holds half of a plane
    assert plane_share(plane, inside, 2) == pytest.approx(1.0)  # two independent ones in it hold all of it
    assert plane_share(plane, outside, 2) == pytest.approx(0.0)
    tilted = torch.tensor([[math.cos(0.3), 0, math.sin(0.3), 0]])
    assert plane_share(plane, tilted, 1) == pytest.approx(0.5 * math.cos(0.3) ** 2)


def test_the_circle_feature_sits_on_seven_angles_of_a_unit_circle() -> None:
    sc = STRESSORS["circle"](base_scenario(), 0, 0).scenario
    x = sc.fit_batch(5000, 0)
    on = sc.truth.labels(x)[:, 0]
    assert 0.05 < on.float().mean() < 0.2 and sc.truth.circle
    radius = x[on][:, :2].norm(dim=1)
    assert torch.allclose(radius, torch.ones_like(radius), atol=1e-6)
    angles = torch.atan2(x[on][:, 1], x[on][:, 0]).remainder(2 * math.pi) * 7 / (2 * math.pi)
    assert torch.allclose(angles, angles.round(), atol=1e-4) and len(angles.round().unique()) == 7
    assert (x[~on][:, :2] == 0).all()


def _circle_cells(lenses: list[str]) -> dict[str, dict[str, object]]:
    return stress_table(lenses, ["circle"], FAST)["cells"]["circle"]


def test_circle_is_split_by_one_dimensional_readings_and_held_by_two_dimensional_ones() -> None:
    cells = _circle_cells(["sae_topk", "neurons", "probe", "polytope"])
    for lens in ("sae_topk", "neurons"):  # one latent / one neuron holds at most half of the plane
        assert cells[lens]["score"] <= 0.5 + 1e-6 and cells[lens]["verdict"] == "missed"
    assert cells["sae_topk"]["pair"] >= 0.9  # a pair of SAE latents (two of the days) spans the plane
    assert cells["neurons"]["pair"] == pytest.approx(1.0)  # neurons 0 and 1 read cos and sin
    # presence is a magnitude: the days surround the origin, so no linear probe detects it; (cos, sin) is linear
    assert cells["probe"]["score"] < 0.65 and cells["probe"]["pair"] > 0.99
    # a ReLU bit fires for the days with cos φ > θ: 3 of 7, balanced accuracy (3/7 + 1) / 2 ≈ 0.71
    assert cells["polytope"]["score"] == pytest.approx((3 / 7 + 1) / 2, abs=0.05)
    assert "/ pair" in markdown({"cells": {"circle": cells}, "stressors": {"circle": {"output_change": None}}})


def test_the_planted_base_is_read_in_full_by_the_same_lenses() -> None:
    """The control for the circle test: without the circle, one SAE latent / neuron per feature suffices."""
    sc = base_scenario()
    assert LENSES["neurons"](sc, FAST, 0).score(sc) == pytest.approx(1.0)
    assert LENSES["sae_topk"](sc, FAST, 0).score(sc) >= 0.9


def test_obfuscation_against_a_fixed_sae_latent_and_the_refit_control() -> None:
    stressed = STRESSORS["obfuscate_sae"](base_scenario(), 0, 150)
    e = stressed.extra
    assert stressed.fitted_before and stressed.output_change is not None and stressed.output_change < 0.1
    assert e["latent_before"] > 0.9  # the attacked latent detected the feature
    assert e["latent_after"] < 0.6 and e["detection_removed"] > 0.8  # and no longer does
    assert e["latent_mean_after"] < 0.2 * e["latent_mean_before"]
    assert e["refit_best_latent"] > 0.9  # the feature is still there: a refitted SAE has a latent for it
