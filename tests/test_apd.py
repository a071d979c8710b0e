"""APD: attributions match their definition, exact components reproduce the model, TMS 5-2 is recovered."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anatomist import AnatomistError
from anatomist.evaluate.recovery import match
from anatomist.mechanisms import apd
from anatomist.nets.toys import load_toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _key(name: str) -> str:
    return name.replace(".", "-")


def test_attributions_match_the_definition_on_a_linear_net() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False))
    dec = apd.APDDecomposition(model, ["0", "1"], C=3, rank=2, generator=torch.Generator().manual_seed(1))
    x = torch.randn(7, 5)
    W1, W2 = model[0].weight.detach(), model[1].weight.detach()
    P1, P2 = dec.matrices("0").detach(), dec.matrices("1").detach()  # [3, 4, 5], [3, 3, 4]
    # y = W2 W1 x, so Σ_l ∂y/∂post_l · (x_l P_c,l) = W2 (P_c,1 x) + P_c,2 (W1 x)
    direct = torch.einsum("oh,chi,bi->bco", W2, P1, x) + torch.einsum("coh,hi,bi->bco", P2, W1, x)
    torch.testing.assert_close(dec.attributions(x), direct.square().sum(-1), rtol=1e-4, atol=1e-6)


def test_exact_components_reproduce_the_model_and_masks_remove_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 4, bias=False))
    dec = apd.APDDecomposition(model, ["0", "2"], C=4, rank=1)
    W1, W2 = model[0].weight.detach(), model[2].weight.detach()
    with torch.no_grad():  # component i: column i of W1 and row i of W2 (rank one in each layer)
        dec.V[_key("0")].copy_(torch.eye(4))
        dec.U[_key("0")].copy_(W1.T)
        dec.V[_key("2")].copy_(W2.T)
        dec.U[_key("2")].copy_(torch.eye(4))
    assert dec.faithfulness_loss() < 1e-12
    x = torch.randn(6, 4)
    torch.testing.assert_close(dec.run_with_components(x, torch.ones(6, 4)), model(x))
    # dropping component 0 is the same as zeroing feature 0 of the input and output
    keep = torch.tensor([0.0, 1, 1, 1])
    x0 = x * keep
    torch.testing.assert_close(dec.run_with_components(x, keep.expand(6, 4)), model(x0) * keep)
    # a rank-one piece's Schatten-1 norm is its Frobenius norm, summed over layers
    torch.testing.assert_close(dec.schatten(1.0), W1.norm(dim=0) + W2.norm(dim=1))


def test_top_k_mask() -> None:
    a = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.1, 0.0]])
    assert apd.top_k_mask(a, 1, batch=False).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert apd.top_k_mask(a, 1.5, batch=True).tolist() == [[0, 1, 1], [1, 0, 0]]


def _stream(toy, batch_size: int, seed: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    while True:
        yield toy.sample_batch(batch_size, g)[0]


@pytest.mark.slow  # 3,000 steps; the fast tests check APD's attributions and components against their definitions
def test_recovers_tms_5_2() -> None:
    toy = load_toy("tms-5-2")
    truth = toy.ground_truth.components["linear1"]
    cfg = apd.APDConfig(steps=3000, batch_size=1024, seed=2)
    init = apd.initial_decomposition(toy.model, ["linear1", "linear2"], cfg)
    dec = apd.decompose(toy.model, _stream(toy, cfg.batch_size, 0), ["linear1", "linear2"], cfg)
    found = match(truth, dec.matrices("linear1").detach())
    assert found.mmcs >= 0.98 and found.worst >= 0.95, found.summary()
    assert match(truth, init.matrices("linear1").detach()).mmcs < 0.9
    assert 0.8 < found.ml2r < 1.0  # APD's known shrinkage
    assert dec.history[-1]["faithfulness"] < 1e-3


def test_bad_input_errors() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 3))
    cfg = apd.APDConfig(steps=3, batch_size=4)
    with pytest.raises(AnatomistError, match="matches no module"):
        apd.decompose(model, [torch.rand(4, 3)], ["mlp.*"], cfg)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(AnatomistError, match="not finite at step 0"):
        apd.decompose(model, [torch.rand(4, 3)], ["0", "2"], cfg)
