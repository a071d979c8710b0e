"""SPD on an LM's MLP: the truncated model it trains through is the real model from that MLP on."""

from __future__ import annotations

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.mechanisms import spd
from anatomist.runs.lm_mlp import TARGETS, MLPToLogits, cache_resid_mid, resolve_layer


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
