"""The L3D paper's other toys: data, labels, ground truth; L3D's zero reference; scoring of grouped circuits."""

from __future__ import annotations

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.mechanisms import l3d
from anatomist.mechanisms.components import find_targets
from anatomist.nets.toys import toy_config
from anatomist.nets.toys.circuits import CircuitMLPConfig, span_projection
from anatomist.nets.toys.train import TrainedToy
from anatomist.runs.mechanisms import gradient_ceiling, mechanism_inputs, purity, used_alone
from anatomist.runs.toy_scoring import toy_report


def test_circuit_superposition_data_and_labels() -> None:
    cfg = toy_config("circuit-10-5-10")
    x, y = cfg.sample_batch(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 10) and y.shape == (2000, 10)
    assert (x.abs().sum(1) > 0).all()  # all-zero inputs are redrawn, as the paper's data drops them
    assert ((x == 0) | ((x > 0) & (x < 1))).all()
    coefs = cfg.coefficients()
    assert coefs.shape == (10, 10) and coefs.min() >= 0 and coefs.max() <= 3.0 and coefs.max() > 2.5
    assert torch.equal(coefs, cfg.coefficients())  # fixed by the toy's seed
    for row in range(5):  # y = coefsᵀ x, feature by feature
        expected = sum(float(x[row, i]) * coefs[i] for i in range(10))
        assert torch.allclose(y[row], expected, atol=1e-5)
    # given that something is active, about 1.25 features are (p = 0.05 of 10, conditioned on ≥ 1)
    assert 1.15 < float((x > 0).sum(1).float().mean()) < 1.35


def test_high_rank_groups_are_active_together() -> None:
    cfg = toy_config("high-rank-30-10-30")
    assert isinstance(cfg, CircuitMLPConfig) and cfg.n_groups == 6
    x, _ = cfg.sample_batch(3000, torch.Generator().manual_seed(1))
    on = (x > 0).view(3000, 6, 5)
    assert (on.all(-1) | ~on.any(-1)).all()  # each group of five: all on or all off
    assert on.any(-1).any(-1).all()
    with pytest.raises(AnatomistError, match="group_size: 4 does not divide n_features 30"):
        CircuitMLPConfig(name="bad", n_features=30, group_size=4)


def test_circuit_ground_truth_known_answer() -> None:
    cfg = toy_config("high-rank-30-10-30")
    model = cfg.build()
    gt = cfg.ground_truth(model)
    W1, W2 = model.linear1.weight.detach(), model.linear2.weight.detach()
    p1, p2 = gt.components["linear1"], gt.components["linear2"]
    assert p1.shape == (6, 10, 30) and p2.shape == (6, 30, 10)
    assert torch.allclose(p1.sum(0), W1)  # the column blocks partition W1
    for g in range(6):
        cols = torch.zeros(30, dtype=torch.bool)
        cols[5 * g : 5 * g + 5] = True
        assert torch.equal(p1[g][:, ~cols], torch.zeros(10, 25))
        H = W1[:, cols]  # what group g writes into the hidden space
        assert torch.allclose(p2[g] @ H, W2 @ H, atol=1e-4)  # W2 on group g's span ...
        other = torch.linalg.svd(H.T).Vh[5:]  # ... and nothing on its orthogonal complement
        assert torch.allclose(p2[g] @ other.T, torch.zeros(30, 5), atol=1e-4)
    assert gt.per_feature == []  # groups, not single features


def test_span_projection() -> None:
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(span_projection(v), torch.diag(torch.tensor([1.0, 1.0, 0.0])), atol=1e-6)
    twice = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # two parallel vectors span one line
    assert torch.allclose(span_projection(twice), torch.full((2, 2), 0.5), atol=1e-6)


def test_squared_mlp_data_and_layout() -> None:
    cfg = toy_config("squared-mlp")
    x, y = cfg.sample_batch(4000, torch.Generator().manual_seed(2))
    assert torch.equal(y, x.square())
    assert (x.abs().sum(1) > 0).all() and (x < 0).any() and (x > 0).any() and x.abs().max() <= 1
    model = cfg.build()
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(10, 5), (10, 10), (10, 10), (10, 10), (5, 10)]
    assert torch.equal(model.layers[0].weight, cfg.build().layers[0].weight)  # deterministic given the seed
    gt = cfg.ground_truth(model)
    assert gt.components == {} and gt.targets == [f"layers.{i}" for i in range(5)]


def test_zero_reference_gradient_of_a_linear_map() -> None:
    """With reference 0 and D = ½‖Wx‖², the per-sample gradient is (Wx) xᵀ."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2, bias=False)
    x = torch.randn(4, 3)
    assert torch.equal(l3d.references(lin(x), "zero"), torch.zeros(4, 2))
    seq = torch.nn.Sequential(lin)
    grads = l3d.per_sample_gradients(seq, x, find_targets(seq, ["0"]), reference_kind="zero")
    expected = torch.einsum("bo,bi->boi", x @ lin.weight.detach().T, x)
    assert torch.allclose(grads["0"], expected, atol=1e-6)


def test_grouped_circuits_are_scored_against_their_pieces() -> None:
    """The scorer matches the high-rank toy's 6 group pieces (not one per feature): the pieces themselves
    score MMCS 1, and a decomposition that merges two groups does not."""
    cfg = toy_config("high-rank-30-10-30")
    model = cfg.build()
    toy = TrainedToy(model, cfg, final_loss=0.0)
    gt = toy.ground_truth
    pieces = {n: torch.cat([gt.components[n], torch.zeros_like(gt.components[n][:2])]) for n in gt.targets}

    def none(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: torch.zeros(len(x), 8) for n in gt.targets}

    exact = toy_report(toy, gt.targets, lambda n: pieces[n], none)
    assert exact["linear1"]["mmcs"] == pytest.approx(1.0, abs=1e-5)
    assert exact["linear2"]["mmcs"] == pytest.approx(1.0, abs=1e-5)
    merged = {n: p.clone() for n, p in pieces.items()}
    for n in merged:
        merged[n][0] = merged[n][0] + merged[n][1]
        merged[n][1] = 0
    worse = toy_report(toy, gt.targets, lambda n: merged[n], none)
    assert worse["linear1"]["min_cosine"] < 0.8


def test_gradient_ceiling_known_answers() -> None:
    """With W1 = W2 = I (and b = 0) the one-hot gradients of ½‖f‖² are the true pieces: ceiling 1 in both layers.
    A shear in W2 turns the W1 gradients (W2ᵀW2 e_i, not e_i) of the two sheared features, by hand below."""
    cfg = CircuitMLPConfig(name="eye", n_features=4, d_hidden=4, n_outputs=4)
    model = cfg.build()
    with torch.no_grad():
        model.linear1.weight.copy_(torch.eye(4))
        model.linear2.weight.copy_(torch.eye(4))
    toy = TrainedToy(model, cfg, final_loss=0.0)
    lcfg = l3d.L3DConfig(reference="zero")
    exact = gradient_ceiling(toy, lcfg, n_samples=2000)
    assert exact["linear1"]["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert exact["linear2"]["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        model.linear2.weight.copy_(torch.eye(4) + torch.tensor([[0.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0],
                                                                [0, 0, 0, 0]]))
    toy = TrainedToy(model, cfg, final_loss=0.0)
    sheared = gradient_ceiling(toy, lcfg, n_samples=2000)
    # feature 0: W2ᵀW2 e_0 = e_0 + e_1, cos 1/√2; feature 1: W2ᵀW2 e_1 = W2ᵀ(e_0 + e_1) = e_0 + 2 e_1, cos 2/√5
    assert sheared["linear1"]["min_cosine"] == pytest.approx(1 / 2**0.5, abs=1e-5)
    assert sheared["linear1"]["mmcs"] == pytest.approx((1 / 2**0.5 + 2 / 5**0.5 + 2) / 4, abs=1e-5)


def test_purity_counts_which_subnetwork_each_circuit_picks() -> None:
    reads = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)  # two circuits of two inputs
    x = torch.tensor([[0.5, 0.2, 0, 0], [0, 0.3, 0, 0], [0, 0, 0.9, 0], [0, 0, 0.1, 0.4], [0.5, 0, 0.5, 0]])
    alone = used_alone(x, reads)
    assert alone.tolist() == [[True, False], [True, False], [False, True], [False, True], [False, False]]
    coeffs = torch.tensor([[0.1, -2.0, 0.0], [0.0, 1.0, 0.5], [3.0, 0.0, 0.0], [0.0, 0.1, -0.2], [9.0, 9.0, 9.0]])
    found = purity(coeffs, alone)  # circuit 0 → subnetwork 1 twice; circuit 1 → 0 once, 2 once; the mixed row skipped
    assert found["table"] == [[0, 2, 0], [1, 0, 1]]
    assert found["purity"] == pytest.approx(3 / 4) and found["n_distinct"] == 2
    assert mechanism_inputs(toy_config("squared-mlp").ground_truth(toy_config("squared-mlp").build())).equal(
        torch.eye(5, dtype=torch.bool))
