"""SPD's fused causal-importance kernel: the same numbers as the plain PyTorch MLP, and a few pinned steps.

The pins were recorded with the pure-PyTorch gates before the fused C kernel (`mechanisms.gate_kernel`)
existed; the kernel must keep every loss and weight within float tolerance of them.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from anatomist.mechanisms import gate_kernel, spd
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")
needs_kernel = pytest.mark.skipif(not gate_kernel.available(torch.zeros(1)), reason="no C compiler for the fused gates")

# (losses of steps 1-4, sums of each parameter tensor after step 4): pure-PyTorch gates, before any fusing
PINNED_PAPER = (
    [0.6558532, 0.6253637, 0.5353656, 0.5008665],
    [-2.49937, -1.373086, 19.836062, 0.052017, -1.456071, -0.255786],
)
PINNED_LM_OPTIONS = (
    [0.0639368, 0.070432, 0.0388558, 0.0291704],
    [-2.444302, -1.403154, 19.61275, -0.361767, -1.559304, -0.098759],
)
LM_OPTIONS = {
    "delta_component": True, "faithfulness_coeff": 0.0, "pgd_recon_coeff": 1.0, "pgd_steps": 2,
    "stochastic_recon_subset_coeff": 1.0, "importance_minimality_beta": 0.5, "pnorm": 2.0,
}


def _four_steps(**options: object) -> tuple[list[float], list[float]]:
    model, cfg = pentagon_tms()
    conf = spd.SPDConfig(C=6, steps=4, batch_size=64, lr=1e-2, log_every=1, **options)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    batches = (cfg.sample_batch(conf.batch_size, g)[0] for _ in range(conf.steps))
    dec = spd.decompose(model, batches, ["linear1", "linear2"], conf)
    return [r["loss"] for r in dec.history], [float(v.double().sum()) for v in dec.state_dict().values()]


@pytest.mark.parametrize(("options", "pinned"), [({}, PINNED_PAPER), (LM_OPTIONS, PINNED_LM_OPTIONS)])
def test_steps_match_the_pinned_pure_pytorch_run(options: dict[str, object], pinned: tuple[list[float], ...]) -> None:
    losses, sums = _four_steps(**options)
    assert losses == pytest.approx(pinned[0], rel=1e-4)
    assert sums == pytest.approx(pinned[1], abs=2e-3)


def _plain_gates(s: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """The paper's gate MLP written out in float64 autograd: the answer the kernel must give."""
    return (F.gelu(s[..., None] * w_in + b_in) * w_out).sum(-1) + b_out


@needs_kernel
def test_fused_gates_equal_the_plain_mlp_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    k, d = 37, 16  # gate counts that are not multiples of the vector width
    s = torch.randn(300, k, generator=g) * 3
    s[::7] = 0.0  # all-zero rows take the shared s = 0 path
    s[5, 3] = 0.0  # a zero inside a live row does not
    weights = [torch.randn(k, d, generator=g) * 2, torch.randn(k, d, generator=g), torch.randn(k, d, generator=g) / 4,
               torch.randn(k, generator=g)]
    grad_out = torch.randn(300, k, generator=g)
    fused = [t.clone().requires_grad_() for t in (s, *weights)]
    spd._GateMLP.apply(*fused).backward(grad_out)
    exact = [t.double().requires_grad_() for t in (s, *weights)]
    out = _plain_gates(*exact)
    out.backward(grad_out.double())
    assert torch.allclose(spd._GateMLP.apply(*fused).double(), out, rtol=1e-5, atol=2e-6)
    for name, a, b in zip(["s", "w_in", "b_in", "w_out", "b_out"], fused, exact, strict=True):
        assert a.grad is not None and b.grad is not None
        scale = float(b.grad.abs().max())
        assert torch.allclose(a.grad.double(), b.grad, atol=3e-6 * scale), name


@needs_kernel
def test_fused_gates_are_accurate_far_into_the_tails() -> None:
    # GELU's erf: the fused normal CDF must hold its relative accuracy where Φ is tiny (h ≈ -9) and ≈ 1
    h = torch.linspace(-9, 9, 2001)[:, None]
    one = torch.ones(1, 1)
    fused = spd._GateMLP.apply(h, one, torch.zeros(1, 1), one, torch.zeros(1))
    assert torch.allclose(fused.double(), F.gelu(h.double()), rtol=3e-6, atol=1e-7)


def test_pure_pytorch_gates_when_the_kernel_is_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANATOMIST_FUSED_GATES", "0")
    assert not gate_kernel.available(torch.zeros(1))
    losses, sums = _four_steps()
    assert losses == pytest.approx(PINNED_PAPER[0], rel=1e-4) and sums == pytest.approx(PINNED_PAPER[1], abs=2e-3)


@needs_kernel
def test_fused_gates_split_over_threads_give_the_one_thread_numbers() -> None:
    g = torch.Generator().manual_seed(1)
    rows = 3 * gate_kernel.MIN_ROWS + 5  # enough rows for three threads
    s, grad_out = torch.randn(rows, 9, generator=g), torch.randn(rows, 9, generator=g)
    weights = [torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g),
               torch.randn(9, generator=g)]

    def run() -> list[Tensor]:
        leaves = [t.clone().requires_grad_() for t in (s, *weights)]
        out = spd._GateMLP.apply(*leaves)
        out.backward(grad_out)
        return [out.detach(), *(t.grad for t in leaves if t.grad is not None)]

    one = run()
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert len(gate_kernel._row_chunks(s.shape[0])) == 3
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
