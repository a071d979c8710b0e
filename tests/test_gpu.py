"""What only a GPU can show (`make test-gpu`; skipped without CUDA): the sparse TopK kernels, the bf16 step and a
whole sae-train run on CUDA give what they give on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anatomist.features import SAEConfig, make_sae
from anatomist.runs import parse_run_config, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _step_grads(device: str, bf16: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(arch="topk", d_in=64, d_sae=512, k=8, autocast_bf16=bf16)).to(device)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1)).to(device)
    dead = torch.zeros(512, dtype=torch.bool, device=device)
    dead[::4] = True
    out = sae.train_forward(x, dead_mask=dead)
    ((out.recon - x).pow(2).sum(-1).mean() + out.aux_loss).backward()
    return {n: p.grad.detach().cpu() for n, p in sae.named_parameters()}


def test_sparse_topk_gradients_on_cuda_equal_the_cpu_ones() -> None:
    cpu, cuda = _step_grads("cpu"), _step_grads("cuda")
    for name in cpu:
        torch.testing.assert_close(cuda[name], cpu[name], rtol=1e-3, atol=1e-5, msg=name)


def test_bf16_step_on_cuda_picks_nearly_the_fp32_latents() -> None:
    fp32, bf16 = _step_grads("cuda"), _step_grads("cuda", bf16=True)
    # the pairs' values are fp32 in both; only a few near-ties of the top-k may differ
    assert torch.nn.functional.cosine_similarity(fp32["W_dec"].flatten(), bf16["W_dec"].flatten(), dim=0) > 0.99


def test_sae_train_runs_on_cuda_like_on_the_cpu(tmp_path: Path, tiny_lm: Path) -> None:
    base = dict(kind="sae-train", model=str(tiny_lm), site="model.layers.1", steps=20, batch_size=256, seed=0,
                sae=dict(arch="topk", d_in=16, d_sae=64, k=4), data=dict(n_seqs=16, eval_seqs=4, cache=None))
    fvus = [run(parse_run_config({**base, "device": d}), tmp_path / d).metrics.numbers["fvu"] for d in ("cpu", "cuda")]
    assert fvus[1] == pytest.approx(fvus[0], rel=0.02)
