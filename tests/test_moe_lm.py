"""The tiny MoE language model: routing, load balancing, vocabulary, and that it learns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from anatomist import AnatomistError
from anatomist.nets.toys import TrainedToy, load_toy, moe_lm
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
    out = model(torch.zeros(3, 8, dtype=torch.long))
    assert out.logits.shape == (3, 8, 32) and len(out.router_logits) == 2 and out.router_logits[0].shape == (24, 4)
    assert out.balance.ndim == 0
    with pytest.raises(AnatomistError, match="no known ground truth"):
        cfg.ground_truth(model)
    with pytest.raises(AnatomistError, match=r"seq <= 8"):
        model(torch.zeros(3, 9, dtype=torch.long))
    with pytest.raises(AnatomistError, match="top_k"):
        MoEBlock(d_model=8, n_experts=2, top_k=3, d_expert=4)


TINY = MoELMConfig(
    vocab_size=12, d_model=16, n_layers=2, n_heads=2, n_experts=4, d_expert=16, seq_len=12,
    n_test_seqs=16, steps=60, batch_size=16, lr=1e-2, warmup=5,
)  # fmt: skip


@pytest.fixture
def planted_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[torch.Tensor]:
    """Rows where each token is the previous one + 1 (mod 10), from a random start: learnable, unigram-flat."""
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "cache"))
    start = torch.randint(0, 10, (200, 1), generator=torch.Generator().manual_seed(0))
    rows = (start + torch.arange(TINY.seq_len)) % 10 + 100  # SmolLM2-like ids 100..109
    monkeypatch.setattr(moe_lm, "wiki_rows", lambda seq_len: rows[:, :seq_len])
    moe_lm.lm_data.cache_clear()
    yield rows
    moe_lm.lm_data.cache_clear()


def test_training_learns_the_planted_rule_and_round_trips(planted_corpus: torch.Tensor) -> None:
    toy = load_toy(TINY)  # trains, then caches by config hash
    m = toy.metrics
    assert m["unigram_loss"] == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=0.1)
    assert toy.final_loss == m["test_loss"] < 0.5 * m["unigram_loss"]
    assert m["unk_rate"] == 0.0 and 0.9 < m["test_balance"] < 2.0
    assert set(toy.model.vocab[1:11].tolist()) == set(range(100, 110))
    again = load_toy(TINY)
    assert again.from_cache and not toy.from_cache
    torch.testing.assert_close(again.model.vocab, toy.model.vocab)
    x, _ = TINY.sample_batch(4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.model(x).logits, toy.model(x).logits)
    assert isinstance(TrainedToy.load(again.path), TrainedToy)


def test_held_out_rows_are_the_last_ones(planted_corpus: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moe_lm, "smollm2_tokenizer", lambda: "tokenizer")
    ids, label_ids, tok = moe_lm.held_out(TINY, 5)
    torch.testing.assert_close(label_ids, planted_corpus[-TINY.n_test_seqs :][:5])
    vocab = moe_lm.lm_data(TINY.seq_len, TINY.vocab_size, TINY.n_test_seqs).vocab
    assert tok == "tokenizer" and (vocab[ids] == label_ids).all()
    with pytest.raises(AnatomistError, match="between 1 and the 16 held-out rows"):
        moe_lm.held_out(TINY, 17)
