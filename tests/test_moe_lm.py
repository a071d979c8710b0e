"""The tiny MoE language model: routing, load balancing, vocabulary, and that it learns."""

from __future__ import annotations

import pytest
import torch

from anatomist import AnatomistError
from anatomist.nets.toys.moe_lm import MoEBlock, MoELM, MoELMConfig, balance_loss, build_vocab, remap


@pytest.mark.parametrize("top_k", [1, 2])
def test_block_matches_a_per_token_loop(top_k: int) -> None:
    torch.manual_seed(0)
    block = MoEBlock(d_model=8, n_experts=4, top_k=top_k, d_expert=6)
    torch.nn.init.normal_(block.gate.weight, std=1.0)
    x = torch.randn(2, 5, 8)
    y, logits = block(x)
    flat = x.reshape(-1, 8)
    for n in range(flat.shape[0]):
        probs = (block.gate.weight @ flat[n]).softmax(-1)
        w, chosen = probs.topk(top_k)
        if top_k > 1:
            w = w / w.sum()
        want = sum(wi * block.experts[int(e)](flat[n]) for wi, e in zip(w, chosen, strict=True))
        torch.testing.assert_close(y.reshape(-1, 8)[n], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, flat @ block.gate.weight.T)


def test_balance_loss_known_answers() -> None:
    uniform = torch.zeros(64, 4)
    uniform[torch.arange(64), torch.arange(64) % 4] = 1e-3  # ties broken evenly, probabilities ~uniform
    assert balance_loss(uniform, top_k=1).item() == pytest.approx(1.0, abs=1e-3)
    collapsed = torch.full((64, 4), -30.0)
    collapsed[:, 0] = 30.0
    assert balance_loss(collapsed, top_k=1).item() == pytest.approx(4.0, abs=1e-3)


def test_vocab_and_remap() -> None:
    smol = torch.tensor([[5, 5, 5, 9, 9, 2], [7, 5, 9, 9, 2, 100]])
    vocab = build_vocab(smol, vocab_size=4)  # UNK + the 3 most frequent: 5 (4x), 9 (4x), 2 (2x)
    assert vocab[0] == -1 and set(vocab[1:].tolist()) == {5, 9, 2}
    ours = remap(smol, vocab)
    assert (vocab[ours[ours > 0]] == smol[ours > 0]).all()
    assert ours[1, 0] == 0 and ours[1, 5] == 0  # 7 and 100 are UNK


def test_model_shapes_and_bad_input() -> None:
    cfg = MoELMConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_experts=4, d_expert=8, seq_len=8)
    model = MoELM(cfg)
    logits, routers = model.forward_with_router(torch.zeros(3, 8, dtype=torch.long))
    assert logits.shape == (3, 8, 32) and len(routers) == 2 and routers[0].shape == (24, 4)
    with pytest.raises(AnatomistError, match=r"seq <= 8"):
        model(torch.zeros(3, 9, dtype=torch.long))
    with pytest.raises(AnatomistError, match="top_k"):
        MoEBlock(d_model=8, n_experts=2, top_k=3, d_expert=4)
