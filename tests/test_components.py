"""Rank-one subcomponents: target selection, ties, masked forwards that match the real layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.mechanisms.components import Decomposition, find_targets


class Transposed(nn.Module):
    """A layer whose weight is another layer's transpose (the TMS tie)."""

    def __init__(self, source: nn.Linear):
        super().__init__()
        object.__setattr__(self, "source", source)
        self.in_features, self.out_features = source.out_features, source.in_features
        self.bias = None

    @property
    def weight(self) -> Tensor:
        return self.source.weight.T

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.up = nn.Linear(6, 8)
        self.mid = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU())
        self.down = Transposed(self.up)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        return self.down(self.mid(self.up(h)))


def exact(dec: Decomposition) -> None:
    """Set every owner's factors to an exact rank-C split of its weight (C ≥ rank)."""
    with torch.no_grad():
        for t in dec.owners():
            W = dec.target_weight(t.name)  # [d_out, d_in]
            u, s, vh = torch.linalg.svd(W, full_matrices=False)
            k = s.shape[0]
            V, U = dec.V[t.name.replace(".", "-")], dec.U[t.name.replace(".", "-")]
            V.zero_()
            U.zero_()
            V[:, :k] = vh.T
            U[:k] = (u * s).T


def test_targets_patterns_and_ties() -> None:
    net = Net()
    targets = {t.name: t for t in find_targets(net, ["embed", "up", "mid.*", "down"])}
    assert list(targets) == ["embed", "up", "mid.0", "down"]
    assert targets["embed"].kind == "embedding" and (targets["embed"].d_in, targets["embed"].d_out) == (11, 6)
    assert targets["down"].owner == "up" and targets["down"].transposed
    assert targets["up"].owner == "up" and not targets["up"].transposed


def test_masked_forward_matches_model_and_restores() -> None:
    torch.manual_seed(0)
    net = Net()
    ids = torch.randint(0, 11, (4, 3))
    ref = net(ids)
    dec = Decomposition(net, ["embed", "up", "mid.0", "down"], C=12)
    assert set(dec.V.keys()) == {"embed", "up", "mid-0"}  # the tie is decomposed once
    exact(dec)
    for name in dec.targets:
        assert torch.allclose(dec.matrices(name).sum(0), dec.target_weight(name), atol=1e-5)
    ones = {n: torch.ones(4, 3, 12) for n in dec.targets}
    assert torch.allclose(dec.run_with_masks(ids, ones), ref, atol=1e-5)
    # zero masks leave only the biases: the embedding is then 0, so 'up' outputs its bias
    out, seen = dec.run_capturing_inputs(ids)
    assert torch.allclose(out, ref)
    zeros = {"embed": torch.zeros(4, 3, 12)}
    with dec.masked(zeros):
        h = net.up(net.embed(ids))
    assert torch.allclose(h, net.up.bias.expand(4, 3, 8))
    # forwards restored (also after an error inside the block)
    with pytest.raises(RuntimeError), dec.masked(ones):
        raise RuntimeError("boom")
    assert "forward" not in net.up.__dict__ and torch.allclose(net(ids), ref)
    assert torch.equal(seen["up"], net.embed(ids))


def test_tied_factors_share_parameters() -> None:
    net = Net()
    dec = Decomposition(net, ["up", "down"], C=5)
    assert torch.allclose(dec.matrices("down"), dec.matrices("up").transpose(1, 2))
    x = torch.randn(7, 8)
    mask = torch.rand(7, 5)
    dec.layer_forward("down", x, mask).pow(2).sum().backward()
    assert dec.U["up"].grad is not None and dec.V["up"].grad is not None


def test_conv1d_layout() -> None:
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(7, 4)  # nx=4 in, nf=7 out; weight stored [4, 7]
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    model = nn.Sequential(conv)
    dec = Decomposition(model, "0", C=4)
    exact(dec)
    assert dec.matrices("0").shape == (4, 7, 4)
    x = torch.randn(3, 4)
    assert torch.allclose(dec.run_with_masks(x, {"0": None}), conv(x), atol=1e-5)


def test_init_scale_tracks_target() -> None:
    # the random start already sums to something of W's scale, pointing partly along W
    net = nn.Sequential(nn.Linear(16, 16))
    dec = Decomposition(net, "0", C=64, generator=torch.Generator().manual_seed(0))
    W, Wc = dec.target_weight("0"), dec.weight("0").detach()
    cos = (W * Wc).sum() / (W.norm() * Wc.norm())
    assert cos > 0.3 and 0.1 < Wc.norm() / W.norm() < 10


def test_bad_targets() -> None:
    net = Net()
    with pytest.raises(AnatomistError, match=r"'upp' matches no module.*up"):
        find_targets(net, ["upp"])
    with pytest.raises(AnatomistError, match=r"'mid' .*Sequential.*mid\.0"):
        find_targets(net, ["mid"])
    with pytest.raises(AnatomistError, match="no decomposable layer"):
        find_targets(nn.Sequential(nn.ReLU(), nn.Conv2d(1, 1, 3)), ["*"])
    dec = Decomposition(net, ["up"], C=3)
    with pytest.raises(AnatomistError, match=r"mask for 'up'.*\[\.\.\., 3\]"):
        dec.run_with_masks(torch.randint(0, 11, (2,)), {"up": torch.ones(2, 4)})


def test_svd_init_is_exact_when_c_covers_the_rank() -> None:
    net = nn.Sequential(nn.Linear(6, 4))
    dec = Decomposition(net, "0", C=5, init="svd")
    assert torch.allclose(dec.weight("0"), dec.target_weight("0"), atol=1e-3)  # 4 exact pieces + 1 tiny
    assert dec.matrices("0").flatten(1).norm(dim=1).sort().values[0] < 1e-2
    with pytest.raises(AnatomistError, match="init must be"):
        Decomposition(net, "0", C=5, init="zeros")
