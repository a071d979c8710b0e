"""SPD on an LM's MLP: the truncated model it trains through is the real model from that MLP on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.mechanisms import spd
from anatomist.runs.base import run
from anatomist.runs.lm_mlp import (
    TARGETS,
    LMMLPConfig,
    MLPToLogits,
    cache_resid_mid,
    resolve_layer,
    score_lm_mlp_checkpoint,
)


def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_last_layer_head_is_the_model_from_its_mlp_on() -> None:
    torch.set_num_threads(1)
    lm = tiny_llama()
    tokens = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    resid = cache_resid_mid(lm, 1, tokens)  # [16, 16]
    head = MLPToLogits(lm, 1)
    with torch.no_grad():
        full = lm(tokens).logits.flatten(0, 1)
        assert torch.allclose(head(resid), full, atol=1e-5)
        # an SVD-started decomposition of the three projections is the MLP itself: zero KL
        dec = spd.initial_decomposition(head, TARGETS, spd.SPDConfig(C=24, init="svd"))
        out = dec.run_with_masks(resid, dict.fromkeys(TARGETS))
        assert float(spd.output_loss(out, full, "kl")) < 1e-6


def test_layer_out_of_range_is_an_error() -> None:
    assert resolve_layer(-1, 30) == 29 and resolve_layer(6, 30) == 6
    with pytest.raises(AnatomistError, match="layer: 30 is out of range.*30 decoder layers"):
        resolve_layer(30, 30)
    with pytest.raises(AnatomistError, match="layer: -31"):
        resolve_layer(-31, 30)


def test_checkpoint_scores_are_the_run_report(tmp_path: Path, tiny_lm: Path, one_thread: None) -> None:
    """`spd score` on an `spd lm-mlp` checkpoint recomputes the held-out tokens and the decomposition from the
    folder alone, and gives the numbers the run reported for that step. With delta components the unmasked model
    is exact, and the ablation (no deltas) is far worse than any masked run."""
    config = LMMLPConfig.parse({
        "model": str(tiny_lm), "n_tokens": 96, "n_eval_tokens": 40, "seq_len": 16,
        "spd": {"C": 8, "steps": 4, "batch_size": 8, "delta_component": True, "faithfulness_coeff": 0.0,
                "stochastic_recon_subset_coeff": 1.0, "pgd_recon_coeff": 1.0, "checkpoint_every": 2,
                "lr": 1e-2, "output_loss": "kl", "init": "random"},
    })  # fmt: skip
    result = run(config, tmp_path / "run")
    reported = load_json(tmp_path / "run" / "metrics.json")["numbers"]
    scored = score_lm_mlp_checkpoint(tmp_path / "run")
    assert scored["step"] == 4 and scored["eval_tokens"] == 40
    for key in ("kl_ci_masked", "kl_stochastic", "kl_mlp_ablated", "kl_ci_masked_no_delta", "kl_all_on_no_delta"):
        assert scored[key] == pytest.approx(reported[key], rel=1e-4, abs=1e-7)
    assert scored["alive"] == {n: reported[f"alive.{n}"] for n in TARGETS}
    assert abs(scored["kl_unmasked"]) < 1e-5  # the deltas make the unmasked model the target
    assert scored["delta_norm"]["mlp.up_proj"] > 0.5  # C = 8 < rank: the factors alone cannot be the weights
    assert result.metrics is not None
    earlier = score_lm_mlp_checkpoint(tmp_path / "run", step=2)
    assert earlier["step"] == 2
    with pytest.raises(AnatomistError, match="no checkpoint of step 3"):
        score_lm_mlp_checkpoint(tmp_path / "run", step=3)


def test_delta_forward_is_the_same_for_few_and_many_inputs() -> None:
    """Few inputs through a large matrix take the factored path x Wᵀ − (x V) U; many take x (W − UVᵀ)ᵀ. Both
    are the layer's input through W − ΣUVᵀ, written out by hand here, and so are their factor gradients."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(40, 30, bias=False))
    dec = spd.initial_decomposition(head, ["0"], spd.SPDConfig(C=6))
    V, U = dec.factors("0")
    W = head[0].weight.detach()
    for rows in (2, 200):  # 2·70 < 1200 entries: factored; 200·70 > 1200: dense
        x = torch.randn(rows, 40)
        by_hand = x @ (W - U.T @ V.T).T
        out = dec.delta_forward("0", x)
        assert torch.allclose(out, by_hand, atol=1e-5)
        grad_v, grad_u = torch.autograd.grad(out.square().sum(), [V, U])
        hand_v, hand_u = torch.autograd.grad(by_hand.square().sum(), [V, U])
        assert torch.allclose(grad_v, hand_v, atol=1e-4) and torch.allclose(grad_u, hand_u, atol=1e-4)
