"""L3D: per-sample gradients are exact, and a short run recovers TMS 5-2's five rank-one subnetworks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist import AnatomistError
from anatomist.evaluate.recovery import match
from anatomist.mechanisms import l3d
from anatomist.mechanisms.components import find_targets
from anatomist.nets.toys import load_toy

pytestmark = pytest.mark.usefixtures("one_thread")


class Tied(nn.Module):
    """x ↦ ReLU(Wᵀ ReLU(W x) + b): the second layer's weight is the first's transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 3, bias=False)
        self.b = nn.Parameter(torch.randn(4))

    @property
    def weight(self) -> Tensor:
        return self.first.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(F.relu(self.first(x)) @ self.first.weight + self.b)


def _half_squared_error(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((output - reference) ** 2).sum()


def _kl_from_reference(output_logits: torch.Tensor, reference_probs: torch.Tensor) -> torch.Tensor:
    """KL(reference ‖ softmax(output)), written out from the definition."""
    log_q = output_logits - output_logits.exp().sum().log()
    return (reference_probs * (reference_probs.log() - log_q)).sum()


def test_per_sample_gradients_match_a_loop_of_backward_passes() -> None:
    """Against divergences and batch-mean references written here, not `l3d.divergence`/`l3d.references`: for KL
    the reference is the batch's mean output distribution (mean of the probabilities, not of the logits)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    targets = find_targets(model, ["0", "2"])
    with torch.no_grad():
        outputs = model(x)
    by_hand = {"mse": (_half_squared_error, outputs.mean(0)),
               "kl": (_kl_from_reference, outputs.softmax(-1).mean(0))}
    for kind, (divergence, reference) in by_hand.items():
        grads = l3d.per_sample_gradients(model, x, targets, divergence_kind=kind)
        for b in range(5):
            model.zero_grad()
            divergence(model(x[b : b + 1])[0], reference).backward()
            for name in ["0", "2"]:
                w = model.get_submodule(name).weight
                assert w.grad is not None
                torch.testing.assert_close(grads[name][b], w.grad, rtol=1e-5, atol=1e-6)


def test_top_k_masks() -> None:
    c = torch.tensor([[0.1, -3.0, 0.2], [0.0, 0.5, -0.4], [2.0, 0.0, 0.0]])
    per = l3d.top_k_mask(c, 1, batch=False)
    assert per.tolist() == [[False, True, False], [False, True, False], [True, False, False]]
    batch = l3d.top_k_mask(c, 1, batch=True)  # 3 largest |c| over the batch
    assert batch.sum() == 3 and batch[0, 1] and batch[2, 0] and batch[1, 1]


@pytest.fixture(scope="module")
def tms() -> nn.Module:
    return load_toy("tms-5-2")


def _stream(toy, batch_size: int, seed: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    while True:
        yield toy.sample_batch(batch_size, g)[0]


def test_recovers_tms_5_2_rank_one_subnetworks(tms) -> None:  # type: ignore[no-untyped-def]
    truth = tms.ground_truth.components["linear1"]  # [5, 2, 5]: W[:, i] e_iᵀ
    cfg = l3d.L3DConfig(n_subnetworks=5, rank=1, top_k=0.25, batch_size=4096, lr=3e-2, steps=250)
    dec = l3d.decompose(tms.model, _stream(tms, cfg.batch_size, 1), ["linear1", "linear2"], cfg)
    found = match(truth, dec.matrices("linear1"))
    assert found.mmcs >= 0.95 and found.worst >= 0.9, found.summary()
    assert sorted(found.index.tolist()) == list(range(5))  # one subnetwork per feature
    # linear2 is the tie: its subnetworks are the transposes
    torch.testing.assert_close(dec.matrices("linear2"), dec.matrices("linear1").transpose(1, 2))
    # a random start does not recover them
    cold = l3d.initial_decomposition(tms.model, ["linear1", "linear2"], cfg)
    assert match(truth, cold.matrices("linear1")).mmcs < 0.9
    # coefficients: each one-hot input loads mostly on its own subnetwork
    c = dec.coefficients(torch.eye(5) * 0.75).abs()
    assert (c.argmax(1) == found.index).all()


def test_bad_input_errors(tms) -> None:  # type: ignore[no-untyped-def]
    cfg = l3d.L3DConfig(steps=2, batch_size=8)
    with pytest.raises(AnatomistError, match="matches no module"):
        l3d.decompose(tms.model, _stream(tms, 8, 0), ["nope"], cfg)
    broken = Tied()
    with torch.no_grad():
        broken.first.weight.fill_(float("nan"))
    with pytest.raises(AnatomistError, match="not finite at step 0"):
        l3d.decompose(broken, iter([torch.rand(8, 4)] * 3), ["first"], cfg)
    with pytest.raises(AnatomistError, match="ran out"):
        l3d.decompose(Tied(), iter([torch.rand(8, 4)]), ["first"], cfg)


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 4))
    cfg = l3d.L3DConfig(n_subnetworks=3, steps=6, batch_size=16, reference="shuffled", log_every=1, checkpoint_every=3)

    def run(run_dir: Path, resume: bool, stop_at: int | None = None) -> l3d.L3DDecomposition:
        g = torch.Generator().manual_seed(5)
        data = (torch.rand(16, 4, generator=g) for _ in range(1000))

        def stop(step: int, *_: object) -> None:
            if step == stop_at:
                raise KeyboardInterrupt  # the session ends abruptly

        return l3d.decompose(
            model, data, ["0", "2"], cfg, run_dir=run_dir, resume=resume, generators={"data": g}, callback=stop
        )

    straight = run(tmp_path / "a", False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", False, stop_at=5)  # the checkpoint at step 3 is on disk
    resumed = run(tmp_path / "b", True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for name in ["0", "2"]:
        assert torch.equal(straight.matrices(name), resumed.matrices(name))
