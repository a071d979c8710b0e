"""Every architecture recovers a planted dictionary; transcoders recover a planted map; the pieces each paper
prescribes (decoder-norm handling, BatchTopK threshold, JumpReLU straight-through gradients) do what they say."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from anatomist.core import AnatomistError
from anatomist.features import SAEConfig, SparseDictionary, make_sae
from anatomist.features.archs import _JumpReLU, _Step

N_ATOMS, D_IN, K_TRUE = 64, 32, 3


def planted(seed: int = 0) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
    """64 unit directions in R^32; each input is a positive combination of 3 of them."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(N_ATOMS, D_IN, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)

    def codes(batch: int) -> torch.Tensor:  # [batch, n_atoms], k-sparse, magnitudes in [0.5, 1.5]
        idx = torch.rand(batch, N_ATOMS, generator=g).topk(K_TRUE, dim=-1).indices
        return torch.zeros(batch, N_ATOMS).scatter_(1, idx, 0.5 + torch.rand(batch, K_TRUE, generator=g))

    return atoms, codes


def train(
    sae: SparseDictionary,
    batches: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
    steps: int,
    lr: float,
    dead_after: int = 50,
) -> SparseDictionary:
    """The smallest loop that honours the interface: loss contract, dead tracking for AuxK, norm handling."""
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(sae.cfg.d_sae)
    for _ in range(steps):
        x, target = batches()
        out = sae.train_forward(x, target, dead_mask=since_fired >= dead_after)
        tgt = x if target is None else target
        loss = (out.recon - tgt).pow(2).sum(-1).mean() + out.sparsity_loss + out.aux_loss
        opt.zero_grad()
        loss.backward()
        sae.before_step()
        opt.step()
        sae.after_step()
        since_fired = torch.where(out.fired, 0, since_fired + 1)
    return sae.eval()


def max_cos(atoms: torch.Tensor, sae: SparseDictionary) -> torch.Tensor:
    """For each planted atom, its best cosine with a decoder row."""
    rows = sae.W_dec.detach()
    rows = rows / rows.norm(dim=-1, keepdim=True)
    return (atoms / atoms.norm(dim=-1, keepdim=True) @ rows.t()).max(-1).values


# arch -> (its sparsity hyperparameters for inputs with E||x||^2 ~ 3.3, training steps)
CASES: dict[str, tuple[dict[str, Any], int]] = {
    "relu": ({"l1_coeff": 0.3}, 600),
    "relu-tied": ({"l1_coeff": 0.3}, 1000),  # tied weights fight superposition: slower to converge
    "topk": ({"k": 3}, 600),
    "batchtopk": ({"k": 3}, 600),
    "jumprelu": ({"l0_coeff": 0.03, "jumprelu_bandwidth": 0.05, "jumprelu_init_threshold": 0.1}, 1000),
}
STEPS, LR = 600, 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", list(CASES))
def test_recovers_planted_dictionary(arch: str) -> None:
    torch.manual_seed(100)  # not the data's seed: the initial decoder must not be the planted atoms
    atoms, codes = planted()
    extra, steps = CASES[arch]
    sae = make_sae(SAEConfig.parse({"arch": arch, "d_in": D_IN, "d_sae": 128, **extra}))
    before = max_cos(atoms, sae)
    train(sae, lambda: (codes(512) @ atoms, None), steps, LR)
    cos = max_cos(atoms, sae)
    assert (before >= 0.95).float().mean() < 0.1  # a random dictionary does not pass by chance
    assert (cos >= 0.95).float().mean() >= 0.9, f"{arch}: recovered {(cos >= 0.95).float().mean():.2f}"
    with torch.no_grad():
        x = codes(1024) @ atoms
        acts = sae.encode(x)
        fvu = (sae.decode(acts) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.2
    assert (acts > 0).sum(-1).float().mean() < 16  # sparse: a few latents per input, not a dense code


def test_transcoder_recovers_planted_map() -> None:
    """y = x @ A through a sparse bottleneck: decoder rows find the images of the atoms, A's output directions."""
    torch.manual_seed(101)
    atoms, codes = planted(seed=1)
    A = torch.randn(D_IN, 24) / D_IN**0.5
    out_atoms = atoms @ A  # [64, 24]

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        c = codes(512)
        return c @ atoms, c @ out_atoms

    sae = make_sae(SAEConfig(arch="topk", d_in=D_IN, d_sae=128, d_out=24, k=3))
    assert not sae.cfg.centers_input
    with pytest.raises(AnatomistError, match="needs the target"):
        sae.train_forward(torch.randn(4, D_IN))
    train(sae, batch, STEPS, LR)
    cos = max_cos(out_atoms, sae)
    assert (cos >= 0.95).float().mean() >= 0.9
    x, y = batch()
    with torch.no_grad():
        fvu = (sae(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert fvu < 0.15


def test_batchtopk_threshold_reproduces_training_sparsity() -> None:
    torch.manual_seed(102)
    atoms, codes = planted(seed=2)
    sae = make_sae(SAEConfig(arch="batchtopk", d_in=D_IN, d_sae=128, k=4))
    assert not sae.threshold_known  # type: ignore[attr-defined]
    train(sae, lambda: (codes(512) @ atoms, None), 300, LR)
    assert sae.threshold_known and float(sae.threshold[0]) > 0  # type: ignore[attr-defined]
    x = codes(2048) @ atoms
    with torch.no_grad():
        inference_l0 = (sae.encode(x) > 0).sum(-1).float().mean()
        sae.train()
        training_l0 = (sae.train_forward(x).acts > 0).sum(-1).float().mean()
    assert training_l0 == pytest.approx(4, abs=0.05)
    assert inference_l0 == pytest.approx(float(training_l0), rel=0.25)
    # inference uses the threshold, not a per-row top-k: the number of active latents varies from row to row
    assert (sae.eval().encode(x) > 0).sum(-1).float().std() > 0


def test_decoder_norm_handling() -> None:
    torch.manual_seed(3)
    sae = make_sae(SAEConfig(arch="topk", d_in=8, d_sae=32, k=2))
    x = torch.randn(64, 8)
    out = sae.train_forward(x)
    (out.recon - x).pow(2).sum(-1).mean().backward()
    sae.before_step()
    assert sae.W_dec.grad is not None
    parallel = (sae.W_dec.grad * sae.W_dec).sum(-1)
    torch.testing.assert_close(parallel, torch.zeros(32), atol=1e-6, rtol=0)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    # free decoder norms: relu's L1 weighs activations by the row norms (scale-invariant penalty)
    free = make_sae(SAEConfig(arch="relu", d_in=8, d_sae=32, normalize_decoder=False, l1_coeff=1.0))
    with torch.no_grad():
        free.W_dec.mul_(2.0)
    out = free.train_forward(x)
    torch.testing.assert_close(out.sparsity_loss, 2.0 * out.acts.sum(-1).mean())


def test_jumprelu_straight_through_gradients() -> None:
    """d/dtheta of pre*H(pre-theta) is -(theta/eps)*rect; of H is -(1/eps)*rect; H passes no gradient to pre."""
    eps = 0.1
    theta = torch.tensor([0.5, 0.5], requires_grad=True)
    pre = torch.tensor([[0.52, 0.70], [0.47, 0.30]], requires_grad=True)  # first column: within eps/2 of theta
    _JumpReLU.apply(pre, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-2 * 0.5 / eps, 0.0]))
    torch.testing.assert_close(pre.grad, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    theta.grad = pre.grad = None
    _Step.apply(pre, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-2 / eps, 0.0]))
    assert pre.grad is None


def test_interface_errors_and_shapes() -> None:
    with pytest.raises(AnatomistError, match="key 'k': Field required"):
        SAEConfig.parse({"arch": "topk", "d_in": 4, "d_sae": 8})
    with pytest.raises(AnatomistError, match="unknown key 'l1_coef'"):
        SAEConfig.parse({"arch": "relu", "d_in": 4, "d_sae": 8, "l1_coef": 1.0})
    with pytest.raises(AnatomistError, match="tied"):
        SAEConfig.parse({"arch": "relu-tied", "d_in": 4, "d_sae": 8, "d_out": 3})
    sae = make_sae(SAEConfig(arch="jumprelu", d_in=4, d_sae=8))
    with pytest.raises(AnatomistError, match=r"last dimension must be 4"):
        sae.encode(torch.randn(2, 5))
    x = torch.randn(2, 3, 4)  # any leading dims
    assert sae.encode(x).shape == (2, 3, 8) and sae(x).shape == (2, 3, 4)
    tied = make_sae(SAEConfig(arch="relu-tied", d_in=4, d_sae=8))
    assert {n for n, _ in tied.named_parameters()} == {"W_dec", "b_enc", "b_dec"}
    assert torch.equal(tied.W_enc, tied.W_dec.t())
