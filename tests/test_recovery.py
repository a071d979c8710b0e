"""Recovery metrics on hand-made answers: exact matches, scaled/permuted pieces, sign flips, CI patterns."""

from __future__ import annotations

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.recovery import alive, ci_l0, cosine_matrix, identity_pattern_error, match, ml2r, mmcs
from anatomist.runs.toy_scoring import per_feature_components


def test_match_permuted_scaled_with_extras() -> None:
    torch.manual_seed(0)
    truth = torch.randn(5, 3, 4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    found = torch.cat([truth[perm] * 0.5, torch.zeros(2, 3, 4)])  # shrunk by half, plus two dead pieces
    m = match(truth, found)
    assert torch.allclose(m.cosine, torch.ones(5), atol=1e-6)
    assert torch.equal(perm[m.index], torch.arange(5))
    assert m.mmcs == pytest.approx(1.0, abs=1e-6) and m.ml2r == pytest.approx(0.5, abs=1e-6)


def test_sign_flip_and_partial_overlap() -> None:
    truth = torch.eye(2).reshape(2, 1, 2)  # pieces e0, e1
    found = torch.tensor([[[-1.0, 0.0]], [[1.0, 1.0]]])  # -e0 (wrong sign), e0+e1
    c = cosine_matrix(truth, found)
    assert torch.allclose(c.float(), torch.tensor([[-1.0, 2**-0.5], [0.0, 2**-0.5]]), atol=1e-6)
    assert mmcs(truth, found) == pytest.approx(2**-0.5, abs=1e-6)
    assert ml2r(truth, found) == pytest.approx(2**0.5, abs=1e-6)
    with pytest.raises(AnatomistError, match="shape"):
        match(truth, torch.zeros(3, 2, 2))


def test_l0_alive_identity_pattern() -> None:
    ci = torch.zeros(4, 6)
    ci[0, 2] = ci[1, 0] = ci[2, 5] = ci[3, 3] = 1.0
    assert ci_l0(ci) == 1.0
    assert alive(ci).tolist() == [True, False, True, True, False, True]
    perfect = identity_pattern_error(ci)
    assert perfect["clean"] == 1.0 and perfect["max_error"] == 0.0 and perfect["n_distinct"] == 4
    assert perfect["on_min"] == perfect["on_max"] == 1.0 and perfect["max_off"] == 0.0
    assert per_feature_components(ci) == 4
    blurred = ci.clone()
    blurred[1, 2] = 1.0  # feature 1 also switches on feature 0's subcomponent
    worse = identity_pattern_error(blurred)
    assert worse["clean"] == 0.0 and worse["on_max"] == 2.0 and worse["max_off"] == 1.0 and worse["max_error"] == 1.0
    assert per_feature_components(blurred) == 2  # features 2 and 3 still own one each
    merged = ci.clone()
    merged[1] = merged[0]  # features 0 and 1 share one subcomponent
    assert identity_pattern_error(merged)["n_distinct"] == 2


def test_identity_pattern_fails_an_extra_subcomponent_on_for_every_feature() -> None:
    # 5 features, C = 20: a clean permuted identity, then the same with one extra subcomponent fully on per
    # feature. A mean |ci − ideal| over the 100 entries is 0.05 for the second (≤ 2/C): it would pass as clean.
    perm = torch.tensor([7, 2, 15, 0, 11])
    clean = torch.zeros(5, 20)
    clean[torch.arange(5), perm] = 1.0
    extra = clean.clone()
    extra[torch.arange(5), torch.tensor([3, 4, 5, 6, 8])] = 1.0
    good, bad = identity_pattern_error(clean), identity_pattern_error(extra)
    assert good["clean"] == 1.0 and good["on_max"] == 1.0 and good["max_off"] == 0.0
    assert bad["clean"] == 0.0 and bad["on_min"] == bad["on_max"] == 2.0 and bad["max_off"] == 1.0
    assert bad["n_distinct"] == 5  # the argmax alone would not see it either
    half_on = clean.clone()
    half_on[0, 9] = 0.6  # one feature with a second subcomponent just over the threshold
    one_more = identity_pattern_error(half_on)
    assert one_more["clean"] == 0.0 and one_more["max_off"] == pytest.approx(0.6)
    weak = clean * 0.4  # every feature's own subcomponent below 0.5: no subcomponent is on
    assert identity_pattern_error(weak)["clean"] == 0.0 and identity_pattern_error(weak)["on_max"] == 0.0


def test_relative_importances_fit_thresholds_to_unbounded_scores() -> None:
    from anatomist.runs.mechanisms import relative

    scores = torch.tensor([[200.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.003, 0.0, 0.006]])
    assert torch.allclose(relative(scores), torch.tensor([[1.0, 0.01, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 1.0]]))
    assert identity_pattern_error(relative(torch.diag(torch.tensor([50.0, 0.2, 7.0]))))["clean"] == 1.0


def test_toy_report_counts_the_identity_pieces_of_tms_id() -> None:
    from anatomist.nets.toys import TrainedToy, toy_config
    from anatomist.runs.toy_scoring import toy_report

    cfg = toy_config("tms-5-2-id")
    toy = TrainedToy(cfg.build(), cfg, final_loss=0.0)
    gt = toy.ground_truth.components  # linear1/linear2: one piece per feature; hidden: e_i e_iᵀ, i < 2
    tiny = 1e-3 * torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0))
    mats = {"linear1": gt["linear1"], "linear2": gt["linear2"], "hidden": torch.cat([gt["hidden"], tiny])}

    def importances(x: torch.Tensor) -> dict[str, torch.Tensor]:  # every subcomponent on for every input
        return {n: torch.full((x.shape[0], m.shape[0]), 0.5) for n, m in mats.items()}

    report = toy_report(toy, list(mats), mats.__getitem__, importances)
    hidden = report["hidden"]
    assert (hidden["n_components"], hidden["n_large"], hidden["expected"]) == (5, 2, 2)
    assert hidden["sum_error_large"] < 1e-6 < hidden["sum_error"] < 1e-2  # the tiny leftovers barely move the sum
    assert report["mmcs"] == pytest.approx(1.0) and report["mmcs_rows"] == pytest.approx(1.0)
