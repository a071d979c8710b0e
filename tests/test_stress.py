"""Stress tests of lenses on the planted toy (`anatomist.stress`): each stressor's truth is read by a lens that
should read it and missed by one that should not; exact reparameterisations keep the outputs to < 1e-5.

Budgets are short (a few hundred steps on a few thousand rows), enough for the 8-feature toy.
"""

from __future__ import annotations

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.stress import LENSES, STRESSORS, Budget, base_scenario, stress_table
from anatomist.stress.table import markdown
from anatomist.stress.toy import relative_change, sites, task_labels

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = Budget(rows=4096, sae_steps=300, e2e_steps=200, spd_steps=300, l3d_steps=200)


def _score(lens: str, stressor: str, budget: Budget = FAST) -> float | None:
    sc = STRESSORS[stressor](base_scenario(), 0, 0).scenario
    return LENSES[lens](sc, budget, 0).score(sc)


def test_the_planted_base_computes_its_task_exactly() -> None:
    sc = base_scenario()
    x = sc.fit_batch(1000, 0)
    assert torch.allclose(sc.model(x), task_labels(x), atol=1e-6)
    assert (x[:, -1] == 0).all()  # the trigger input is never on in the lens's data


@pytest.mark.parametrize("name", ["permute_rescale", "rotate_residual", "split_neuron"])
def test_exact_reparameterisations_keep_the_outputs(name: str) -> None:
    sc = base_scenario()
    stressed = STRESSORS[name](sc, 3, 0)
    assert stressed.output_change is not None and stressed.output_change < 1e-5
    x = torch.randn(256, sc.model.embed.in_features)  # off the data distribution too, trigger included
    assert relative_change(sc.model, stressed.scenario.model, x) < 1e-5
    # the weights did move: the same function in another parameterisation
    before, after = sc.model.mlp.mlp_in.weight, stressed.scenario.model.mlp.mlp_in.weight
    assert before.shape != after.shape or (before - after).abs().max() > 0.1


def test_rotation_hides_the_features_from_the_axes_but_not_from_an_sae() -> None:
    assert _score("resid_axes", "none") == pytest.approx(1.0)
    assert _score("resid_axes", "rotate_residual") < 0.8
    assert _score("sae_topk", "rotate_residual") >= 0.9


def test_split_neurons_break_the_neuron_basis_but_not_the_polytope_codes() -> None:
    assert _score("neurons", "none") == pytest.approx(1.0)
    assert _score("neurons", "split_neuron") < 0.9
    assert _score("polytope", "split_neuron") >= 0.9


def test_permuting_and_rescaling_neurons_leaves_the_neuron_basis_reading_them() -> None:
    assert _score("neurons", "permute_rescale") == pytest.approx(1.0)


def test_backdoor_is_seen_by_the_data_free_bilinear_reading_only() -> None:
    stressed = STRESSORS["backdoor"](base_scenario(), 0, 0)
    sc = stressed.scenario
    assert (sc.fit_batch(20_000, 1)[:, -1] == 0).all()  # the trigger never appears in what lenses are fitted on
    assert stressed.output_change < 1e-5 and stressed.extra["triggered_change"] > 1.0  # dormant, then decisive
    scores = {lens: LENSES[lens](sc, FAST, 0).score(sc) for lens in ("bilinear", "sae_topk", "probe", "resid_axes")}
    assert scores["bilinear"] >= 0.99
    assert scores["sae_topk"] < 0.6 and scores["resid_axes"] < 0.9
    assert scores["probe"] < 0.6  # no positive example to fit: a constant reading, balanced accuracy 0.5


def test_bilinear_reading_has_nothing_to_read_without_a_bilinear_mechanism() -> None:
    assert _score("bilinear", "none") is None


def test_superposition_defeats_the_axes() -> None:
    stressed = STRESSORS["superposition"](base_scenario(), 0, 0)
    sc = stressed.scenario
    assert sc.truth.directions.shape == (8, 5)
    assert LENSES["resid_axes"](sc, FAST, 0).score(sc) < 0.9


def test_obfuscation_fools_the_fixed_probe_and_a_refit_finds_the_feature_again() -> None:
    stressed = STRESSORS["obfuscate"](base_scenario(), 0, 150)
    assert stressed.fitted_before
    e = stressed.extra
    assert e["probe_before"] > 0.9 and e["probe_after"] < 0.6 and e["probe_refit"] > 0.85
    assert stressed.output_change is not None and stressed.output_change < 0.3


def test_drift_is_scored_with_the_lens_fitted_before_it() -> None:
    base = base_scenario()
    stressed = STRESSORS["drift"](base, 0, 100)
    assert stressed.fitted_before and stressed.output_change is not None and stressed.output_change > 0.1
    old = LENSES["resid_axes"](base, FAST, 0)  # a reading fitted on the original model
    assert old.score(stressed.scenario) is not None


def test_stress_table_cells_and_markdown() -> None:
    lenses = ["resid_axes", "neurons", "bilinear", "probe", "polytope"]
    result = stress_table(lenses, ["none", "rotate_residual", "obfuscate"], FAST, train_steps=20)
    cells = result["cells"]
    assert cells["none"]["resid_axes"]["verdict"] == "found"
    assert cells["rotate_residual"]["resid_axes"]["verdict"] == "missed"
    assert cells["none"]["bilinear"]["verdict"] == "n/a"
    assert all("refit" in cells["obfuscate"][lens] for lens in lenses)
    # the fixed probe and code bit of the obfuscated feature are scored (the base's readings cover all 8 features)
    assert cells["obfuscate"]["probe"]["score"] is not None and cells["obfuscate"]["polytope"]["score"] is not None
    text = markdown(result)
    assert "| resid_axes (MMCS ≥ 0.9) |" in text and "n/a" in text and "output change" in text


def test_unknown_lens_is_refused() -> None:
    with pytest.raises(AnatomistError, match="unknown lens"):
        stress_table(["sae"], ["none"], FAST)


def test_sites_of_the_toy() -> None:
    sc = base_scenario()
    got = sites(sc.model, sc.fit_batch(10, 0))
    assert got["embed"].shape == (10, 9) and got["mlp.act"].shape == (10, 8)


def test_fitting_a_lens_leaves_the_model_as_it_was() -> None:
    sc = base_scenario()
    before = {k: v.clone() for k, v in sc.model.state_dict().items()}
    LENSES["e2e_sae"](sc, Budget(rows=512, e2e_steps=3), 0)
    assert all(p.requires_grad for p in sc.model.parameters()) and all(p.grad is None for p in sc.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in sc.model.state_dict().items())
