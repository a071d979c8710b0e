"""Steering with a dictionary latent: exact logit shifts, alpha 0 and self-clamping are no-ops, the run and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anatomist.cli import app
from anatomist.core.errors import AnatomistError
from anatomist.features import SAEConfig, SparseDictionary, make_sae, save_sae
from anatomist.interpret.steer import (
    Sampling,
    Steering,
    clearest_latents,
    generate,
    next_token_logprobs,
    promoted_tokens,
    steered,
    unit_direction,
)
from anatomist.nets.sites import Site, capture
from anatomist.report.sources import unembedding
from anatomist.runs import load_run_config, run
from conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [0, 5, 17, 3, 42, 8]


def hand_made_sae(width: int = 16, d_sae: int = 4, seed: int = 1) -> tuple[SparseDictionary, torch.Tensor]:
    """A ReLU dictionary with random weights whose latent 2 decodes to a known unit direction (returned)."""
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(arch="relu", d_in=width, d_sae=d_sae)).eval()
    direction = torch.randn(width)
    direction /= direction.norm()
    with torch.no_grad():
        sae.W_dec[2] = 3.0 * direction  # not unit: steering must normalise it
    return sae, direction


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama(layers=2, hidden=16, intermediate=32, vocab=64)


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_adding_after_the_final_norm_shifts_every_logit_by_the_unembedding_of_the_direction(model) -> None:
    """Known answer: after model.norm only lm_head is left, so logits move by exactly alpha * W_U @ d."""
    sae, direction = hand_made_sae()
    plain = logits(model, PROMPT)
    with steered(model, sae, Site("model.norm"), Steering(2, "add", 2.5)):
        pushed = logits(model, PROMPT)
    expected = 2.5 * model.lm_head.weight.detach() @ direction
    torch.testing.assert_close(pushed - plain, expected.expand_as(plain), atol=1e-5, rtol=1e-4)


def test_a_large_push_before_the_final_norm_makes_the_top_promoted_token_the_prediction(model) -> None:
    """RMSNorm of v + a·d tends to √width·d as a grows: the logits become √16 · (W_U·gain) @ d, the promoted
    tokens' logit effects."""
    sae, direction = hand_made_sae()
    unembed = unembedding(model)
    top, _ = promoted_tokens(unembed, direction, 5)
    plain = next_token_logprobs(model, PROMPT)
    with steered(model, sae, Site("model.layers.1"), Steering(2, "add", 1e5)):
        pushed = next_token_logprobs(model, PROMPT)
    torch.testing.assert_close(pushed, torch.log_softmax(4.0 * unembed @ direction, -1), atol=1e-3, rtol=0)
    assert int(pushed.argmax()) == int(top[0]) != int(plain.argmax())
    assert (pushed[top] > plain[top]).all()


def test_alpha_zero_and_no_steering_generate_the_same_tokens_greedy_and_sampled(model) -> None:
    sae, _ = hand_made_sae()
    for sampling in (Sampling(max_new_tokens=8), Sampling(max_new_tokens=8, sample=True, temperature=0.05, seed=3)):
        plain = generate(model, PROMPT, sampling)
        with steered(model, sae, Site("model.layers.0"), Steering(2, "add", 0.0)):
            zero = generate(model, PROMPT, sampling)
        with steered(model, sae, Site("model.layers.1"), Steering(2, "add", 1e3)):
            pushed = generate(model, PROMPT, sampling)
        assert zero == plain and len(plain) == 8
        assert pushed != plain


def test_generation_with_the_kv_cache_matches_recomputing_the_whole_prefix(model) -> None:
    """The cache holds steered keys: steered greedy tokens equal argmax of a full steered forward each step."""
    sae, _ = hand_made_sae()
    with steered(model, sae, Site("model.layers.0"), Steering(2, "add", 5.0)):
        cached = generate(model, PROMPT, Sampling(max_new_tokens=6))
        ids = list(PROMPT)
        for _ in range(6):
            ids.append(int(logits(model, ids)[-1].argmax()))
    assert cached == ids[len(PROMPT):]


def test_sampling_is_reproducible_from_its_seed(model) -> None:
    runs = [generate(model, PROMPT, Sampling(max_new_tokens=10, sample=True, temperature=2.0, seed=s))
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]


def test_clamping_a_latent_is_decode_with_the_latent_set_plus_the_error_term(model) -> None:
    sae, _ = hand_made_sae()
    site = Site("model.layers.0")
    v = capture(model, torch.tensor([PROMPT]), [site])[site]
    acts = sae.encode(v)
    acts_set = acts.clone()
    acts_set[..., 1] = 4.0
    expected = sae.decode(acts_set) + (v - sae.decode(acts))  # the definition, term by term
    with torch.no_grad():
        got = Steering(1, "clamp", 4.0).site_fn(sae)(v)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_clamping_a_latent_to_the_value_it_has_changes_nothing(model) -> None:
    """A latent silent on every position (its bias far below zero) clamped to 0: logits identical, bit for bit."""
    sae, _ = hand_made_sae()
    with torch.no_grad():
        sae.b_enc[1] = -1e4
    site = Site("model.layers.0")
    assert (sae.encode(capture(model, torch.tensor([PROMPT]), [site])[site])[..., 1] == 0).all()
    with steered(model, sae, site, Steering(1, "clamp", 0.0)):
        clamped = logits(model, PROMPT)
        tokens = generate(model, PROMPT, Sampling(max_new_tokens=6))
    assert torch.equal(clamped, logits(model, PROMPT))
    assert tokens == generate(model, PROMPT, Sampling(max_new_tokens=6))


def test_unit_direction_and_a_bad_latent() -> None:
    sae, direction = hand_made_sae()
    torch.testing.assert_close(unit_direction(sae, 2), direction)
    with pytest.raises(AnatomistError, match="latent 9 is out of range: the dictionary has 4 latents"):
        unit_direction(sae, 9)


def test_clearest_latents_finds_the_latent_that_writes_one_token() -> None:
    torch.manual_seed(0)
    unembed = torch.randn(100, 16)
    sae, _ = hand_made_sae()
    with torch.no_grad():
        sae.W_dec[3] = unembed[37]  # its direct logit effect peaks sharply at token 37
    assert clearest_latents(sae, unembed, 1) == [3]
    assert int(promoted_tokens(unembed, unit_direction(sae, 3), 1)[0][0]) == 37


@pytest.fixture
def saved_sae(tmp_path: Path) -> Path:
    sae, _ = hand_made_sae()
    save_sae(sae, tmp_path / "sae", metadata={"site": "model.layers.1"})
    return tmp_path / "sae"


def test_steer_run_reports_continuations_and_promoted_tokens(tiny_lm: Path, saved_sae: Path, tmp_path: Path) -> None:
    config = load_run_config("steer", [f"path={saved_sae}", f"model={tiny_lm}", "latents=[2]", "alpha=20",
                                       "prompts=[\"The cat\", \"One two\"]", "max_new_tokens=4", "norm_seqs=2",
                                       "seq_len=16", "top_tokens=3"])
    result = run(config, tmp_path / "run", threads=1)
    rows = result.metrics.tables["continuations"]
    assert [r["prompt"] for r in rows.values()] == ["The cat", "One two"]
    assert all(r["steered"] != r["unsteered"] for r in rows.values())
    promoted = result.metrics.tables["promoted"]
    assert len(promoted) == 3 and all(r["delta_logprob"] > 0 for r in promoted.values())
    assert result.metrics["site"] == "model.layers.1:output" and result.metrics["typical_norm"] > 0


def test_steer_cli_prints_both_continuations(tiny_lm: Path, saved_sae: Path, tmp_path: Path) -> None:
    args = ["steer", str(saved_sae), "--model", str(tiny_lm), "--latent", "2", "--alpha", "20", "--prompt", "Hi",
            "--max-new-tokens", "3", "--out", str(tmp_path / "run")]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "steered:" in shown.output and "unsteered:" in shown.output and "promotes" in shown.output
    as_json = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "run2"), "--json"])
    assert json.loads(as_json.stdout)["tables"]["continuations"]


def test_a_basis_needs_a_site(tiny_lm: Path, tmp_path: Path) -> None:
    config = load_run_config("steer", ["path=basis:pca", f"model={tiny_lm}", "norm_seqs=1", "seq_len=16"])
    with pytest.raises(AnatomistError, match="basis:pca.*names no site"):
        run(config, tmp_path / "run", threads=1)
