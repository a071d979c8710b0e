"""Evaluation metrics: known answers (perfect / mean / identity / zero dictionaries), streaming = one-shot."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from anatomist import AnatomistError
from anatomist.evaluate import (
    ReconstructionStats,
    cosine,
    dead_fraction,
    dense_fraction,
    density_histogram,
    evaluate_dictionary,
    explained_variance,
    fvu,
    kl_div,
    l0,
    loss_recovered,
    next_token_ce,
)
from conftest import tiny_llama


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama(3, 16, 32, 50)


IDS = torch.randint(1, 50, (6, 8), generator=torch.Generator().manual_seed(1))


class Linear(nn.Module):
    """A 'dictionary' whose latents are a linear map of the input and whose decoder is another."""

    def __init__(self, enc: torch.Tensor, dec: torch.Tensor):
        super().__init__()
        self.enc, self.dec = enc, dec
        self.cfg = SimpleNamespace(d_in=enc.shape[0], d_out=dec.shape[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.enc

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.dec


def test_fvu_known_answers() -> None:
    x = torch.randn(200, 7) * torch.arange(1, 8) + 3
    assert fvu(x, x) == 0
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)
    assert fvu(x, torch.zeros_like(x)) > 1  # worse than the mean: x has an offset
    assert cosine(x, 2 * x) == pytest.approx(1.0)
    assert cosine(x, -x) == pytest.approx(-1.0)


def test_sparsity_known_answers() -> None:
    acts = torch.zeros(100, 5)
    acts[:, 0] = 1.0  # always on: dense
    acts[:5, 1] = 2.0  # 5% of rows
    acts[:2, 2] = 1.0  # 2% of rows; latents 3, 4 dead
    assert l0(acts) == pytest.approx(1.07)
    rates = (acts != 0).double().mean(0)
    assert dead_fraction(rates) == pytest.approx(0.4)
    assert dense_fraction(rates) == pytest.approx(0.2)
    assert dense_fraction(rates, threshold=0.03) == pytest.approx(0.4)
    hist = density_histogram(rates, bins=8, low=-8)
    assert sum(hist["counts"]) == 3 and hist["dead"] == [2.0]
    # log10 rates: 0 in the last bin [-1, 0]; -1.3 and -1.7 in [-2, -1]
    assert hist["counts"][-1] == 1 and hist["counts"][-2] == 2


def test_streaming_stats_equal_one_shot() -> None:
    x = torch.randn(300, 6) + 1
    x_hat = x + 0.3 * torch.randn_like(x)
    acts = torch.relu(torch.randn(300, 10) - 1)
    stats = ReconstructionStats()
    for part in range(3):
        sl = slice(part * 100, (part + 1) * 100)
        stats.update(x[sl], x_hat[sl], acts[sl])
    res = stats.result()
    assert res["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-9)
    assert res["cosine"] == pytest.approx(cosine(x, x_hat), rel=1e-9)
    assert res["l0"] == pytest.approx(l0(acts), rel=1e-9)


def test_ce_and_kl_known_answers() -> None:
    vocab = 5
    ids = torch.tensor([[0, 1, 2, 3]])
    uniform = torch.zeros(1, 4, vocab)
    assert float(next_token_ce(uniform, ids).mean()) == pytest.approx(math.log(vocab))
    assert float(kl_div(uniform, uniform).max()) == 0
    peaked = uniform.clone()
    peaked[0, :, 0] = 10.0
    # KL(clean ‖ other) = Σ p (log p − log q) with p uniform, q = softmax(10, 0, 0, 0, 0): the clean side weighs
    log_q = torch.tensor([10.0, 0, 0, 0, 0]) - math.log(math.exp(10) + 4)
    want = float((0.2 * (math.log(0.2) - log_q)).sum())  # ≈ 6.4 nats; the other direction would be ≈ 1.6
    torch.testing.assert_close(kl_div(uniform, peaked), torch.full((1, 4), want), rtol=1e-5, atol=1e-5)
    assert loss_recovered(2.0, 2.0, 5.0) == 1.0
    assert loss_recovered(2.0, 5.0, 5.0) == 0.0
    assert loss_recovered(2.0, 3.5, 5.0) == pytest.approx(0.5)


def test_identity_dictionary_recovers_all_loss(llama: LlamaForCausalLM) -> None:
    eye = torch.eye(16)
    res = evaluate_dictionary(Linear(eye, eye), llama, IDS, "model.layers.1", batch_size=4)
    assert res["fvu"] == pytest.approx(0.0, abs=1e-12) and res["cosine"] == pytest.approx(1.0)
    assert res["l0"] == pytest.approx(16.0)
    assert res["ce_increase"] == pytest.approx(0.0, abs=1e-6)
    assert res["kl"] == pytest.approx(0.0, abs=1e-6)
    assert res["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert res["ce_zero"] != pytest.approx(res["ce_clean"], abs=1e-3)
    assert res["n_rows"] == 6 * 7 and res["n_predictions"] == 6 * 6  # BOS excluded; the last position predicts nothing


def test_zero_dictionary_recovers_no_loss(llama: LlamaForCausalLM) -> None:
    res = evaluate_dictionary(Linear(torch.eye(16), torch.zeros(16, 16)), llama, IDS, "model.layers.1")
    assert res["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert res["ce_spliced"] == pytest.approx(res["ce_zero"])
    assert res["kl"] > 0


def test_half_scaled_dictionary_sits_in_between(llama: LlamaForCausalLM) -> None:
    eye = torch.eye(16)
    res = evaluate_dictionary(Linear(eye, 0.5 * eye), llama, IDS, "model.layers.1", spliced_seqs=4, batch_size=4)
    assert res["ce_clean"] < res["ce_spliced"] and res["kl"] > 0
    assert res["n_predictions"] == 4 * 6 and res["n_rows"] == 6 * 7


@pytest.mark.parametrize("batch_size", [1, 2, 4, 8])
def test_spliced_seqs_counts_sequences_whatever_the_batch(llama: LlamaForCausalLM, batch_size: int) -> None:
    """3 spliced sequences are 3, also when a batch of 2, 4 or 8 straddles the third (it once spliced whole batches)."""
    half = Linear(torch.eye(16), 0.5 * torch.eye(16))
    res = evaluate_dictionary(half, llama, IDS, "model.layers.1", spliced_seqs=3, batch_size=batch_size)
    one = evaluate_dictionary(half, llama, IDS[:3], "model.layers.1", batch_size=1)
    assert res["n_predictions"] == 3 * 6 and res["n_rows"] == 6 * 7
    assert res["ce_spliced"] == pytest.approx(one["ce_spliced"], rel=1e-5)


def test_transcoder_that_computes_the_mlp_is_exact(llama: LlamaForCausalLM) -> None:
    mlp = llama.model.layers[1].mlp

    class MlpTranscoder(Linear):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return mlp(x)

    tc = MlpTranscoder(torch.eye(16), torch.eye(16))
    res = evaluate_dictionary(tc, llama, IDS, "model.layers.1.mlp:input", target_site="model.layers.1.mlp:output")
    assert res["fvu"] == pytest.approx(0.0, abs=1e-10)
    assert res["kl"] == pytest.approx(0.0, abs=1e-6) and res["loss_recovered"] == pytest.approx(1.0, abs=1e-5)


def test_width_mismatch_names_the_site(llama: LlamaForCausalLM) -> None:
    with pytest.raises(AnatomistError, match=r"d_in 12 but site 'model.layers.1:output' has width 16"):
        evaluate_dictionary(Linear(torch.eye(12), torch.eye(12)), llama, IDS, "model.layers.1")


def test_classifier_with_labels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    eye = torch.eye(8)
    res = evaluate_dictionary(Linear(eye, eye), net, x, "1", labels=y)
    assert res["loss_recovered"] == pytest.approx(1.0) and res["kl"] == pytest.approx(0.0, abs=1e-7)
