"""SPD's fused causal-importance kernel: the same numbers as the plain PyTorch MLP, and a few pinned steps.

The pins were recorded with the pure-PyTorch gates before the fused C kernel (`mechanisms.gate_kernel`)
existed; the kernel must keep every loss and weight within float tolerance of them.
"""

from __future__ import annotations

import pytest
import torch

from anatomist.mechanisms import spd
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")

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
