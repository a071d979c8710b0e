"""The cross-layer stressor (issue 15): a computed feature whose write is spread over two MLP layers, each layer's
share superposed with another feature on one direction. A crosscoder of both layers' outputs should recover it, a
dictionary of one layer's output should not; the function stays the base's."""

from __future__ import annotations

import pytest
import torch

from anatomist.stress import LENSES, STRESSORS, Budget, base_scenario
from anatomist.stress.stressors import linear_r2
from anatomist.stress.toy import MLP2_OUT, sites, task_labels

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = Budget(rows=4096, sae_steps=300)


def test_linear_r2_known_answers() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(20_000, generator=gen), torch.randn(20_000, generator=gen)
    rows = torch.stack([a, b, torch.zeros(20_000)], dim=1)  # a zero column must not break the fit
    assert linear_r2(rows, 2 * a - b + 1) == pytest.approx(1.0)
    assert linear_r2(rows[:, :1], a + b) == pytest.approx(0.5, abs=0.02)  # half of the variance is b's


def test_cross_layer_computes_the_base_function_with_the_feature_spread_over_two_layers() -> None:
    stressed = STRESSORS["cross_layer"](base_scenario(), 0, 0)
    sc = stressed.scenario
    x = sc.fit_batch(2000, 3)
    assert torch.allclose(sc.model(x), task_labels(x), atol=1e-5)
    assert stressed.output_change is not None and stressed.output_change < 1e-5
    assert sites(sc.model, x)[MLP2_OUT].abs().max() > 0.1  # the second layer does write
    e = stressed.extra  # g = ReLU(x0 − θ): neither layer's output holds it linearly, both together do
    assert e["r2_layer1_out"] < 0.7 and e["r2_layer2_out"] < 0.3 and e["r2_both_outs"] > 0.999


def test_a_crosscoder_of_both_layers_recovers_it_and_one_layers_dictionary_does_not() -> None:
    sc = STRESSORS["cross_layer"](base_scenario(), 0, 0).scenario
    assert LENSES["crosscoder"](sc, FAST, 0).score(sc) >= 0.9
    assert LENSES["sae_mlp_out"](sc, FAST, 0).score(sc) < 0.8  # g + s on one direction: one latent for both
    assert LENSES["neurons"](sc, FAST, 0).score(sc) == pytest.approx(1.0)  # layer 1 computes g in one neuron
    assert LENSES["spd"](sc, Budget(spd_steps=2), 0).score(sc) is None  # no piece of one layer to compare


def test_the_second_mlp_of_the_base_is_empty_and_stays_empty_under_drift() -> None:
    base = base_scenario()
    assert not base.model.mlp2.mlp_in.weight.any()
    drifted = STRESSORS["drift"](base, 0, 5).scenario.model
    assert not drifted.mlp2.mlp_in.weight.any() and not drifted.mlp2.mlp_out.weight.any()


def test_the_output_dictionaries_read_the_base_features() -> None:
    sc = base_scenario()
    assert LENSES["sae_mlp_out"](sc, FAST, 0).score(sc) >= 0.9
    assert LENSES["crosscoder"](sc, FAST, 0).score(sc) >= 0.9
